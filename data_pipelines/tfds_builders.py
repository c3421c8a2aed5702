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

`AVBuilder.survey(raw_dir)` scans the raw folder once and judges the listing
(files that cannot be used, without `skip_bad`; a split without clips; a class
count other than the one expected) before TFDS writes anything;
`download_and_prepare` surveys first. After decoding, a split whose every clip
was left out stops the build (TFDS would refuse it with a traceback), as does
a dataset's own `check_built`. Nothing is downloaded: TFDS's download folder is
a temporary directory removed afterwards, and no `/tmp/tmp*tfds` folder is
left behind.
"""

import abc
import multiprocessing
import os
import tempfile
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tqdm import tqdm

from data_pipelines.media import BadInput, Excluded

SKIPPED_FILE = 'skipped.tsv'
EXCLUDED_FILE = 'excluded.tsv'
SKIP_HINT = 'rerun with --skip_bad to skip such files and list them in ' + SKIPPED_FILE


class Layout(NamedTuple):
  """The published layout of a raw dataset folder, checked before any work starts."""
  title: str                  # the dataset's name in messages, e.g. 'AVE'
  required: tuple[str, ...]   # paths relative to the raw folder; a trailing '/' marks a folder
  description: str            # the layout in words, e.g. 'AVE/<VideoID>.mp4, trainSet.txt, ...'

  def missing(self, raw_dir: str) -> list[str]:
    """The required paths absent from `raw_dir`; a missing folder is named once, not its files."""
    out = []
    for path in self.required:
      if any(path.startswith(m) for m in out if m.endswith('/')):
        continue
      parts = path.rstrip('/').split('/')
      for k in range(1, len(parts)):  # the first missing parent folder stands for its files
        if not os.path.isdir(os.path.join(raw_dir, *parts[:k])):
          folder = '/'.join(parts[:k]) + '/'
          if folder not in out:
            out.append(folder)
          break
      else:
        full = os.path.join(raw_dir, *parts)
        if not (os.path.isdir(full) if path.endswith('/') else os.path.isfile(full)):
          out.append(path)
    return out

  def check(self, raw_dir: str) -> None:
    """Raises FileNotFoundError, one line naming `raw_dir` and what it lacks."""
    if not os.path.isdir(raw_dir):
      raise FileNotFoundError(f'{raw_dir}: no such raw dataset folder (--raw_dir); the {self.title} '
                              f'layout is {self.description}')
    missing = self.missing(raw_dir)
    if missing:
      raise FileNotFoundError(f"{raw_dir}: not a complete {self.title} folder: missing {', '.join(missing)} "
                              f'(the published layout: {self.description})')


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


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """DatasetInfo of a dataset built from local files only."""

  def initialize_from_bucket(self) -> None:
    # TFDS's version looks the dataset up on its GCS bucket and leaves a /tmp/tmp*tfds folder
    # behind on every builder construction; these datasets are never there.
    pass


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

  def __init__(self, *, skip_bad: bool = False, num_workers: int = 0, progress: bool = True,
               num_classes: int | None = None, **kwargs):
    """Creates the builder.

    Args:
      skip_bad: leave unusable files out (listed in skipped.tsv) instead of failing.
      num_workers: decoding processes; 0 decodes in this process.
      progress: show a progress bar per split, in clips.
      num_classes: the number of classes the build must find (`check_classes`);
        None accepts any.
      **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (data_dir, file_format).
    """
    self._skip_bad = skip_bad
    self._num_workers = num_workers
    self._progress = progress
    self._num_classes = num_classes
    self._survey = None
    super().__init__(**kwargs)

  @abc.abstractmethod
  def features(self) -> dict:
    """The record features (see `record_features`)."""

  @abc.abstractmethod
  def scan(self, raw_dir: str) -> Scan:
    """Lists the clips of `raw_dir` per split; raises FileNotFoundError for a missing folder."""

  def check_classes(self, raw_dir: str, found: Scan) -> None:
    """Raises ValueError when the scan's classes are not the `num_classes` expected."""
    classes = found.metadata['classes']
    if self._num_classes is not None and len(classes) != self._num_classes:
      raise ValueError(f'{raw_dir}: {self.name} has {len(classes)} classes, expected {self._num_classes} '
                       '(--num_classes)')

  def check_built(self, raw_dir: str, labels: set[int]) -> None:
    """Called with the labels of the records written, before the build moves into
    place; raising leaves nothing behind. By default accepts any."""

  def survey(self, raw_dir) -> Scan:
    """Scans `raw_dir` once and judges the listing before anything is written.

    Raises:
      FileNotFoundError: a folder or list of the layout is missing.
      media.BadInput: a file listed as unusable (without `skip_bad`; the first
        one, named), or a split without clips.
      ValueError: `check_classes` (and the datasets' list parsing).
    """
    raw_dir = os.fspath(raw_dir)
    if self._survey is not None and self._survey[0] == raw_dir:
      return self._survey[1]
    found = self.scan(raw_dir)
    if found.bad and not self._skip_bad:
      path, problem = found.bad[0]
      raise BadInput(path, f'{problem}; {SKIP_HINT}')
    for split, clips in found.splits.items():
      if not clips:
        left = f' ({len(found.bad)} unusable files were skipped)' if found.bad else ''
        raise BadInput(raw_dir, f'no {self.name} clips to build in the {split} split{left}')
    self.check_classes(raw_dir, found)
    self._survey = (raw_dir, found)
    return found

  def download_and_prepare(self, *, download_dir=None, **kwargs):
    """Surveys the raw folder (`download_config.manual_dir`), then builds.

    TFDS's download folder (by default `<data_dir>/downloads`) is a temporary
    directory here, removed afterwards: nothing is downloaded.
    """
    config = kwargs.get('download_config')
    if config is not None and config.manual_dir:
      built = os.path.isfile(os.path.join(os.fspath(self.data_path), 'dataset_info.json'))
      if not built or tfds.download.GenerateMode(config.download_mode).overwrite_dataset:
        self.survey(config.manual_dir)
    if download_dir is not None:
      return super().download_and_prepare(download_dir=download_dir, **kwargs)
    with tempfile.TemporaryDirectory(prefix=f'{self.name}_prepare_') as tmp:
      return super().download_and_prepare(download_dir=tmp, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` needs package metadata files; a plain module has none.
    return _LocalDatasetInfo(builder=self, features=tfds.features.FeaturesDict(self.features()),
                             metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def _log_download_bytes(self) -> None:  # TFDS prints "Downloading and preparing ..."; nothing downloads
    logging.info('Building %s in %s', self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info('Built %s in %s', self.name, self.data_dir)

  def _left_out(self, error: BadInput) -> None:
    if isinstance(error, Excluded):
      self._excluded.append((error.path, error.problem))
    elif self._skip_bad:
      self._skipped.append((error.path, error.problem))
    else:
      raise BadInput(error.path, f'{error.problem}; {SKIP_HINT}') from error

  def _split_generators(self, dl_manager):
    self._raw_dir = os.fspath(dl_manager.manual_dir)
    found = self.survey(self._raw_dir)
    self._skipped, self._excluded, self._labels = [], list(found.excluded), set()
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
    ids, left_out = [], []
    for key, (clip, result) in enumerate(self._encoded(split, clips)):
      if isinstance(result, BadInput):
        self._left_out(result)
        left_out.append(result)
        continue
      ids.append(clip.id)
      self._labels.add(int(result['label']))
      yield key, result
    if not ids:  # (TFDS refuses an empty split with a traceback)
      raise BadInput(self._raw_dir, f'no usable clip in the {split} split: all {len(clips)} were left out '
                                    f'(e.g. {left_out[0]})')
    self.info.metadata['splits'][split] = ids

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    self.check_built(self._raw_dir, self._labels)
    # Still inside TFDS's temporary directory: the lists move into place with the data.
    self.info.metadata['skipped'] = [list(x) for x in self._skipped]
    self.info.metadata['excluded'] = [list(x) for x in self._excluded]
    for filename, rows in ((SKIPPED_FILE, self._skipped), (EXCLUDED_FILE, self._excluded)):
      with open(os.path.join(self.data_dir, filename), 'w') as f:
        f.write('file\treason\n')
        f.writelines(f'{path}\t{reason}\n' for path, reason in rows)
