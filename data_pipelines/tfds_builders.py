"""TFDS builders that decode a raw audio-video dataset once into ArrayRecord.

Each dataset module (`cremad`, `ave`, `ucf101`) subclasses `AVBuilder` with
its features, a `scan` of the raw folder (the TFDS `manual_dir`) and a
module-level `encode(clip)`. Every record holds

  id      the clip's name in the raw layout
  label   class index
  audio   float16 [F, T] log spectrogram (half the bytes of float32; the
          log values lie in about [-16, 6], where float16 steps are <= 0.008)
  frames  the sampled RGB frames as JPEG bytes, decoded at read time

Records are written in scan order (`disable_shuffling`), and the metadata
(`metadata.json`) lists the ids of every split in record order, the class
names, the preprocessing constants, and the files that were skipped
(`--skip_bad`) or excluded by the dataset's rule, with reasons; the same lists
are written as `skipped.tsv` and `excluded.tsv`. TFDS builds in a temporary
directory and renames it into place, so a failed build leaves nothing behind.
"""

import abc
import multiprocessing
import os
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from data_pipelines.media import BadInput, Excluded

SKIPPED_FILE = 'skipped.tsv'
EXCLUDED_FILE = 'excluded.tsv'
SKIP_HINT = 'rerun with --skip_bad to skip such files and list them in ' + SKIPPED_FILE


class Scan(NamedTuple):
  """What a dataset's `scan(raw_dir)` found."""
  splits: dict[str, list]               # TFDS split -> clips (NamedTuples with `.id`), record order
  bad: list[tuple[str, str]]            # (file, problem) found while listing
  excluded: list[tuple[str, str]]       # (file, reason) left out by the dataset's rule
  metadata: dict[str, Any]              # JSON-able facts: classes, preprocessing constants


def record_features(audio_shape: tuple[int, int], label) -> dict:
  """The TFDS features shared by every dataset; `label` is a ClassLabel or an int Tensor."""
  return {
      'id': tfds.features.Text(),
      'label': label,
      'audio': tfds.features.Tensor(shape=tuple(audio_shape), dtype=np.float16,
                                    encoding=tfds.features.Encoding.BYTES),
      'frames': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
  }


def _encode_or_error(job):
  encode, clip = job
  try:
    return encode(clip)
  except BadInput as e:
    return e


class AVBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: scan the raw folder, encode every clip, record what was left out.

  Subclasses set `name`, `VERSION`, `encode` (a module-level function, so
  worker processes can import it) and implement `features()` and `scan()`.
  """

  MANUAL_DOWNLOAD_INSTRUCTIONS = ('The raw dataset folder in its published layout: '
                                  'python -m data_pipelines.prepare --dataset=... --raw_dir=...')
  encode: Callable[[Any], dict]

  def __init__(self, *, skip_bad: bool = False, num_workers: int = 0, progress: bool = True, **kwargs):
    """Creates the builder.

    Args:
      skip_bad: leave unusable files out (listed in skipped.tsv) instead of failing.
      num_workers: decoding processes; 0 decodes in this process.
      progress: show a progress bar per split, in clips.
      **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (data_dir, file_format).
    """
    self._skip_bad = skip_bad
    self._num_workers = num_workers
    self._progress = progress
    super().__init__(**kwargs)

  @abc.abstractmethod
  def features(self) -> dict:
    """The record features (see `record_features`)."""

  @abc.abstractmethod
  def scan(self, raw_dir: str) -> Scan:
    """Lists the clips of `raw_dir` per split; raises FileNotFoundError for a missing folder."""

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` needs package metadata files; a plain module has none.
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(self.features()),
                                 metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def _left_out(self, error: BadInput) -> None:
    if isinstance(error, Excluded):
      self._excluded.append((error.path, error.problem))
    elif self._skip_bad:
      self._skipped.append((error.path, error.problem))
    else:
      raise BadInput(error.path, f'{error.problem}; {SKIP_HINT}') from error

  def _split_generators(self, dl_manager):
    raw_dir = os.fspath(dl_manager.manual_dir)
    found = self.scan(raw_dir)
    self._skipped, self._excluded = [], list(found.excluded)
    for path, problem in found.bad:
      self._left_out(BadInput(path, problem))
    self.info.metadata.update(found.metadata)
    self.info.metadata['splits'] = {}
    return {split: self._generate_examples(split, clips) for split, clips in found.splits.items()}

  def _encoded(self, split: str, clips: Sequence):
    """(clip, example or BadInput) in clip order, decoded in worker processes if asked."""
    jobs = [(type(self).encode, clip) for clip in clips]
    bar = tqdm(total=len(jobs), desc=f'{self.name} {split}', unit='clip', disable=not self._progress)
    if self._num_workers > 0:
      # spawn: forking a process that already runs TFDS/absl threads can deadlock
      with multiprocessing.get_context('spawn').Pool(self._num_workers) as pool:
        for clip, result in zip(clips, pool.imap(_encode_or_error, jobs, chunksize=4)):
          bar.update()
          yield clip, result
    else:
      for job, clip in zip(jobs, clips):
        result = _encode_or_error(job)
        bar.update()
        yield clip, result
    bar.close()

  def _generate_examples(self, split: str, clips: Sequence):
    ids = []
    for key, (clip, result) in enumerate(self._encoded(split, clips)):
      if isinstance(result, BadInput):
        self._left_out(result)
        continue
      ids.append(clip.id)
      yield key, result
    self.info.metadata['splits'][split] = ids

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    # Still inside TFDS's temporary directory: the lists move into place with the data.
    self.info.metadata['skipped'] = [list(x) for x in self._skipped]
    self.info.metadata['excluded'] = [list(x) for x in self._excluded]
    for filename, rows in ((SKIPPED_FILE, self._skipped), (EXCLUDED_FILE, self._excluded)):
      with open(os.path.join(self.data_dir, filename), 'w') as f:
        f.write('file\treason\n')
        f.writelines(f'{path}\t{reason}\n' for path, reason in rows)
