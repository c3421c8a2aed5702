"""UCF101 restricted to the classes whose videos carry audio (docs/methods.md#ucf101).

Raw folder (the `--raw_dir` of prepare):
  UCF-101/<Class>/v_<Class>_gXX_cYY.avi        the videos (UCF101.rar)
  ucfTrainTestlist/classInd.txt                 '<1-based id> <Class>' per line
  ucfTrainTestlist/trainlist0{1,2,3}.txt        '<Class>/<file>.avi <id>' per line
  ucfTrainTestlist/testlist0{1,2,3}.txt         '<Class>/<file>.avi' per line

Class rule. The reference keeps the clips that have an audio track (and at
least 4 frames at 1 fps) and the classes left afterwards: 51 in its copy, but
its class list (`class_change.pkl`) is not released. Here the rule is applied
to your copy at prepare time: every video is opened, a class is in when at
least one of its videos has an audio stream, and the classes keep the
classInd.txt order, numbered 0.. among themselves. Videos without an audio
track, with no audio samples, or with fewer than 4 frames at 1 fps (shorter
than about 3 s) are left out and listed with the reason in `excluded.tsv`;
`python -m data_pipelines.prepare` prints the resulting class list, and it is
stored in the dataset's metadata (`classes`).

A partial copy is fine (e.g. only the class folders with audio): classInd.txt
classes without a folder are left out, listed in `excluded.tsv` and the
metadata (`missing_classes`). The build expects `NUM_CLASSES` (51) classes,
or prepare's `--num_classes`: a copy where another number of classes has
videos with an audio track (checked before anything is built), or keeps a
usable clip (checked after decoding), stops with an error giving both
numbers. `config.data.num_classes` (51) is checked against the stored classes
at load time, so give both the same number.

Preprocessing (once, at prepare time):
  audio  16 kHz, first channel, the first 3 s (48,000 samples; zero-padded if the
         track is shorter), clipped to [-1, 1], log(|STFT| + 1e-7) with n_fft 512,
         hop 353: [257, 136]; no normalisation
  video  the first frame of each of the first 4 seconds, stored as JPEG
At read time: [4, S, S, 3] RGB scaled to [0, 1] and ImageNet-normalised, with
one RandomResizedCrop + flip for the whole clip on train. This departs from
the reference, which feeds BGR values in 0-255 to the ImageNet normalisation
(docs/methods.md#known-pitfalls-of-the-reference-implementations, item 4).

Splits: official split `config.data.fold` (1-3): trainlist0k / testlist0k,
restricted to the prepared clips. Validation holds out round(val_fraction *
groups) of every class's `<Class>_gXX` groups of the training list (at least
one), drawn by default_rng(split_seed); groups are matched exactly, so
"Diving_g05" does not also take "CliffDiving_g05" (the reference's substring
match does).

Run:
  python -m data_pipelines.prepare --dataset=ucf101 --raw_dir=UCF101 --out_dir=data
"""

import os
import re
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tqdm import tqdm

from data_pipelines import media, spectrogram, splits, tfds_builders
from data_pipelines.common import Dataset
from data_pipelines.prepared import check_config, make_source, open_prepared, select

NAME = 'ucf101'
VERSION = '1.0.0'
FOLDS = (1, 2, 3)
SAMPLE_RATE = 16000
NUM_FRAMES = 4
AUDIO_SAMPLES = (NUM_FRAMES - 1) * SAMPLE_RATE  # the reference's (num_frame - 1) * 16000
N_FFT, HOP = 512, 353
AUDIO_SHAPE = (1 + N_FFT // 2, 1 + AUDIO_SAMPLES // HOP)  # (257, 136)
MIN_AUDIO_SAMPLES = 2  # the reference drops tracks shorter than 2 samples (its "no audio" marker)
NUM_CLASSES = 51  # the classes with audio in the reference's copy (config.data.num_classes)
LIST_FILES = ('classInd.txt',) + tuple(f'{s}list0{k}.txt' for s in ('train', 'test') for k in FOLDS)
LAYOUT = tfds_builders.Layout(
    'UCF101', ('UCF-101/',) + tuple(f'ucfTrainTestlist/{f}' for f in LIST_FILES),
    'UCF-101/<Class>/*.avi, ucfTrainTestlist/classInd.txt, ucfTrainTestlist/{train,test}list0{1,2,3}.txt')
_FILE_RE = re.compile(r'^v_(.+)_g(\d+)_c(\d+)\.avi$')


class Clip(NamedTuple):
  id: str      # '<Class>/<file>.avi', as in the official lists
  path: str
  label: int


def group_of(clip_id: str) -> str:
  """'ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi' -> 'ApplyEyeMakeup_g08' (the recording group)."""
  folder, filename = clip_id.split('/')
  m = _FILE_RE.match(filename)
  if not m:
    raise ValueError(f"'{clip_id}' is not a UCF101 clip name <Class>/v_<Class>_gXX_cYY.avi")
  return f'{folder}_g{m.group(2)}'


def class_of(clip_id: str) -> str:
  return clip_id.split('/')[0]


def read_class_index(path: str) -> list[str]:
  """classInd.txt -> class names in id order (ids must run 1..N)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: missing UCF101 class list')
  names = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2 or parts[0] != str(len(names) + 1):
        raise ValueError(f"{path}:{n}: expected '{len(names) + 1} <Class>', got '{line.strip()}'")
      names.append(parts[1])
  return names


def read_split_list(path: str) -> list[str]:
  """trainlist0k.txt / testlist0k.txt -> clip ids '<Class>/<file>.avi' in file order."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: missing UCF101 split list')
  ids = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      clip_id = line.split()[0]
      if clip_id.count('/') != 1 or not _FILE_RE.match(clip_id.split('/')[1]):
        raise ValueError(f"{path}:{n}: expected '<Class>/v_<Class>_gXX_cYY.avi', got '{line.strip()}'")
      ids.append(clip_id)
  return ids


def scan(raw_dir: str, progress: bool = False) -> tfds_builders.Scan:
  """Opens every video of the classInd classes to find the classes with audio.

  A classInd.txt class without a folder is left out and listed (`excluded`,
  metadata `missing_classes`).

  Raises:
    FileNotFoundError: `raw_dir`, `UCF-101/` or a list file is missing (`LAYOUT`).
  """
  LAYOUT.check(raw_dir)
  video_dir, list_dir = os.path.join(raw_dir, 'UCF-101'), os.path.join(raw_dir, 'ucfTrainTestlist')
  names = read_class_index(os.path.join(list_dir, 'classInd.txt'))
  official = {k: {'train': read_split_list(os.path.join(list_dir, f'trainlist0{k}.txt')),
                  'test': read_split_list(os.path.join(list_dir, f'testlist0{k}.txt'))} for k in FOLDS}
  videos, missing, excluded = [], [], []
  for name in names:
    folder = os.path.join(video_dir, name)
    if not os.path.isdir(folder):
      missing.append(name)
      excluded.append((folder, f'no class folder in this copy (classInd.txt lists {name})'))
      continue
    videos += [f'{name}/{f}' for f in sorted(os.listdir(folder)) if f.endswith('.avi')]
  if missing:
    logging.warning('%s: %d of the %d classInd.txt classes have no folder and are left out (%s)',
                    video_dir, len(missing), len(names), ', '.join(missing))
  with_audio, bad = {}, []
  for clip_id in tqdm(videos, desc='ucf101 audio tracks', unit='video', disable=not progress):
    try:
      with_audio[clip_id] = media.has_audio_track(os.path.join(video_dir, clip_id))
    except media.BadInput as e:
      bad.append((e.path, e.problem))
  classes = [c for c in names if any(v for k, v in with_audio.items() if class_of(k) == c)]
  clips = []
  for clip_id, has_audio in with_audio.items():
    path = os.path.join(video_dir, clip_id)
    if has_audio:
      clips.append(Clip(clip_id, path, classes.index(class_of(clip_id))))
    else:
      excluded.append((path, 'no audio track'))
  scanned = {c.id for c in clips}
  metadata = {'dataset': NAME, 'classes': classes, 'missing_classes': missing, 'num_frames': NUM_FRAMES,
              'official_splits': {str(k): {s: [i for i in ids if i in scanned] for s, ids in v.items()}
                                  for k, v in official.items()},
              'preprocessing': {'sample_rate': SAMPLE_RATE, 'audio_samples': AUDIO_SAMPLES,
                                'n_fft': N_FFT, 'hop': HOP, 'frames_per_second': 1, 'rgb_scale': '[0, 1]'}}
  return tfds_builders.Scan({'clips': clips}, bad, excluded, metadata)


def encode(clip: Clip) -> dict:
  """One record: float16 log-STFT [257, 136] and 4 JPEG frames. Raises media.BadInput / Excluded."""
  wave = media.read_audio_track(clip.path, SAMPLE_RATE, channel='first')
  if len(wave) < MIN_AUDIO_SAMPLES:
    raise media.Excluded(clip.path, f'{len(wave)} audio samples')
  audio = spectrogram.log_stft(spectrogram.pad_or_cut(wave, AUDIO_SAMPLES), N_FFT, HOP)
  if not np.all(np.isfinite(audio)):
    raise media.BadInput(clip.path, 'audio decodes to NaN or Inf values')
  try:
    rgb = media.frames_at_1fps(clip.path, NUM_FRAMES, fill_seed=None)
  except media.TooShort as e:
    raise media.Excluded(e.path, e.problem) from e
  return {'id': clip.id, 'label': clip.label, 'audio': audio.astype(np.float16),
          'frames': [media.encode_jpeg(f) for f in rgb]}


class Builder(tfds_builders.AVBuilder, skip_registration=True):
  """UCF101 (classes with audio) -> one ArrayRecord split 'clips'; folds are chosen at load time."""
  name = NAME
  VERSION = tfds.core.Version(VERSION)
  encode = encode

  def __init__(self, *, num_classes: int | None = NUM_CLASSES, **kwargs):
    """`num_classes`: the classes the copy must give (None: any); see `AVBuilder`."""
    super().__init__(num_classes=num_classes, **kwargs)

  def features(self) -> dict:
    # The class count is known only after the scan, so the label is a plain integer.
    return tfds_builders.record_features(AUDIO_SHAPE, tfds.features.Tensor(shape=(), dtype=np.int64))

  def scan(self, raw_dir: str) -> tfds_builders.Scan:
    return scan(raw_dir, progress=self._progress)

  def _wrong_count(self, raw_dir: str, classes: list[str], what: str, note: str) -> ValueError:
    return ValueError(f"{raw_dir}: {len(classes)} UCF101 classes {what} ({', '.join(classes)}), expected "
                      f'{self._num_classes} (--num_classes, config.data.num_classes){note}')

  def check_classes(self, raw_dir: str, found: tfds_builders.Scan) -> None:
    classes, missing = found.metadata['classes'], found.metadata['missing_classes']
    if self._num_classes is not None and len(classes) != self._num_classes:
      note = f'; {len(missing)} classInd.txt classes have no folder in this copy' if missing else ''
      raise self._wrong_count(raw_dir, classes, 'have videos with an audio track', note)

  def check_built(self, raw_dir: str, labels: set[int]) -> None:
    """A class whose every clip was skipped or excluded at decoding leaves the count short."""
    classes = self.info.metadata['classes']
    if self._num_classes is not None and len(labels) != self._num_classes:
      lost = [c for k, c in enumerate(classes) if k not in labels]
      raise self._wrong_count(raw_dir, [c for k, c in enumerate(classes) if k in labels], 'keep a usable clip',
                              f"; every clip of {', '.join(lost)} was unusable or too short")


def assign_splits(cfg, official: dict) -> dict[str, list[str]]:
  """{'train', 'val', 'test'} -> clip ids for official split `cfg.fold` plus the group hold-out."""
  if cfg.fold not in FOLDS:
    raise ValueError(f'config.data.fold must be one of {list(FOLDS)} (the official UCF101 splits), got {cfg.fold}')
  lists = official[str(cfg.fold)]
  train, val = splits.stratified_group_holdout(lists['train'], group_of, class_of, cfg.val_fraction,
                                               cfg.split_seed)
  return {'train': train, 'val': val, 'test': lists['test']}


def load(cfg) -> Dataset:
  """The prepared UCF101 under `cfg.dir`, official split `cfg.fold`."""
  prepared = open_prepared(cfg.dir, NAME, VERSION)
  check_config(cfg, prepared)
  ids = prepared.metadata['splits']['clips']
  index_of = {clip_id: k for k, clip_id in enumerate(ids)}
  records = prepared.builder.as_data_source('clips')
  assignment = assign_splits(cfg, prepared.metadata['official_splits'])
  sources = {}
  for split in splits.SPLITS:
    indices = select(assignment[split], index_of, f'UCF101 split {cfg.fold} {split}')
    if not indices:
      raise ValueError(f'{prepared.path}: UCF101 split {cfg.fold} leaves no {split} clips in this dataset')
    sources[split] = make_source(records, indices, cfg, per_frame=False, train=split == 'train')
  return Dataset(modalities=('audio', 'video'), num_classes=len(prepared.metadata['classes']),
                 sample_shapes={'audio': AUDIO_SHAPE, 'video': tuple(cfg.video_shape)}, splits=sources)
