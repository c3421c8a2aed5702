"""CREMA-D from its published layout (docs/methods.md#crema-d).

Raw folder (the `--raw_dir` of prepare):
  AudioWAV/<Actor>_<Sentence>_<Emotion>_<Level>.wav   16 kHz mono, e.g. 1026_IEO_ANG_HI.wav
  VideoFlash/<same name>.flv                           30 fps video
7,442 clips of 91 actors (1001-1091), 12 sentences, levels LO/MD/HI/XX. The
label is the emotion field of the file name, classes in the reference order
NEU 0, HAP 1, SAD 2, FEA 3, DIS 4, ANG 5.

Preprocessing (once, at prepare time), as the reference ResNet path:
  audio  16 kHz -> 22,050 Hz (soxr HQ, as librosa.load), looped to 3 s (66,150 samples),
         clipped to [-1, 1], log(|STFT| + 1e-7) with n_fft 512, hop 353,
         Hann, centred: [257, 188]; no Mel, no normalisation
  video  the first frame of each second, the first 3 (t ~ 0, 1, 2 s); a clip
         shorter than that gets random extra frames of the clip (seeded by
         its name), kept in time order; stored as JPEG
At read time frames become [3, S, S, 3] (S = config.data.video_shape[1], 224):
RandomResizedCrop + flip drawn per frame on the training split, Resize on the others.

Splits (`config.data.split`):
  vavl   the VAVL actor-disjoint folds the reference reads (fold k = JSON key "k";
         the reference's --fold f is fold f + 1): 5,820 clips, 63/14/14 actors
  ogm    the OGM-GE train/test lists (6,698 / 744), with round(val_fraction * 6,698)
         training clips held out for validation by default_rng(split_seed)
  kfold  actor-disjoint folds generated from the actor ids (splits.group_kfold):
         test = fold `fold`, validation = the next fold
  json   a user file (`split_file`) in the VAVL layout, or {"train", "val", "test"}
The VAVL and OGM lists ship in data_pipelines/lists/.

Run:
  python -m data_pipelines.prepare --dataset=cremad --raw_dir=CREMA-D --out_dir=data
  python run.py --config=configs/cremad_mlb.py --config.data.dir=data
"""

import os
import re
import zlib
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import media, spectrogram, splits, tfds_builders
from data_pipelines.common import Dataset
from data_pipelines.prepared import check_config, make_source, open_prepared, select

NAME = 'cremad'
VERSION = '1.0.0'
CLASSES = ('NEU', 'HAP', 'SAD', 'FEA', 'DIS', 'ANG')
SENTENCES = ('DFA', 'IEO', 'IOM', 'ITH', 'ITS', 'IWL', 'IWW', 'MTI', 'TAI', 'TIE', 'TSI', 'WSI')
LEVELS = ('LO', 'MD', 'HI', 'XX')
SAMPLE_RATE = 22050
CLIP_SECONDS = 3
N_FFT, HOP = 512, 353
NUM_FRAMES = 3
AUDIO_SHAPE = (1 + N_FFT // 2, 1 + SAMPLE_RATE * CLIP_SECONDS // HOP)  # (257, 188)
LISTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lists')
OGM_TRAIN = os.path.join(LISTS, 'cremad_ogm_train.csv')
OGM_TEST = os.path.join(LISTS, 'cremad_ogm_test.csv')
VAVL_FOLDS = os.path.join(LISTS, 'cremad_vavl_folds.json')
_NAME_RE = re.compile(r'^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$')


class ClipName(NamedTuple):
  actor: str      # '1001'..'1091'
  sentence: str   # one of SENTENCES
  emotion: str    # one of CLASSES
  level: str      # one of LEVELS

  @property
  def label(self) -> int:
    return CLASSES.index(self.emotion)


def parse_clip_id(clip_id: str) -> ClipName:
  """'1026_IEO_ANG_HI' -> ClipName; raises ValueError saying what is wrong with the name."""
  m = _NAME_RE.match(clip_id)
  if not m:
    raise ValueError(f"'{clip_id}' is not a CREMA-D clip name <Actor>_<Sentence>_<Emotion>_<Level> "
                     '(e.g. 1001_DFA_ANG_XX)')
  name = ClipName(*m.groups())
  for value, allowed, what in ((name.emotion, CLASSES, 'emotion'), (name.sentence, SENTENCES, 'sentence'),
                               (name.level, LEVELS, 'level')):
    if value not in allowed:
      raise ValueError(f"unknown {what} code '{value}' in '{clip_id}'; expected one of {', '.join(allowed)}")
  return name


def actor_of(clip_id: str) -> str:
  return clip_id.split('_', 1)[0]


def read_clip_list(path: str) -> dict[str, int]:
  """A `<clip id>,<EMOTION>` list (clips.csv, OGM train/test) -> {clip id: label}.

  Raises:
    ValueError: naming the file and line of a bad name, an unknown code, a
      label that disagrees with the name, or a repeated id.
  """
  out = {}
  for n, (clip_id, emotion) in enumerate(splits.read_labelled_list(path), 1):
    try:
      name = parse_clip_id(clip_id)
    except ValueError as e:
      raise ValueError(f'{path}:{n}: {e}') from e
    if emotion != name.emotion:
      raise ValueError(f"{path}:{n}: label '{emotion}' disagrees with the name '{clip_id}'")
    if clip_id in out:
      raise ValueError(f"{path}:{n}: '{clip_id}' is listed twice")
    out[clip_id] = name.label
  return out


class Clip(NamedTuple):
  id: str
  wav: str
  flv: str
  label: int


def scan(raw_dir: str) -> tfds_builders.Scan:
  """The clips of a raw CREMA-D folder, in name order.

  Raises:
    FileNotFoundError: `raw_dir`, `AudioWAV/` or `VideoFlash/` is missing.
  """
  audio_dir, video_dir = os.path.join(raw_dir, 'AudioWAV'), os.path.join(raw_dir, 'VideoFlash')
  for d in (raw_dir, audio_dir, video_dir):
    if not os.path.isdir(d):
      raise FileNotFoundError(f'{d}: missing folder; the CREMA-D layout is <raw_dir>/AudioWAV/*.wav '
                              'and <raw_dir>/VideoFlash/*.flv')
  wavs = {f[:-len('.wav')] for f in os.listdir(audio_dir) if f.endswith('.wav')}
  flvs = {f[:-len('.flv')] for f in os.listdir(video_dir) if f.endswith('.flv')}
  clips, bad = [], []
  for clip_id in sorted(wavs | flvs):
    wav, flv = os.path.join(audio_dir, clip_id + '.wav'), os.path.join(video_dir, clip_id + '.flv')
    try:
      name = parse_clip_id(clip_id)
    except ValueError as e:
      bad.append((wav if clip_id in wavs else flv, str(e)))
      continue
    if clip_id not in wavs:
      bad.append((wav, f'missing audio file (VideoFlash has {clip_id}.flv)'))
    elif clip_id not in flvs:
      bad.append((flv, f'missing video file (AudioWAV has {clip_id}.wav)'))
    else:
      clips.append(Clip(clip_id, wav, flv, name.label))
  metadata = {'dataset': NAME, 'classes': list(CLASSES), 'num_frames': NUM_FRAMES,
              'preprocessing': {'sample_rate': SAMPLE_RATE, 'clip_seconds': CLIP_SECONDS,
                                'n_fft': N_FFT, 'hop': HOP, 'frames_per_second': 1}}
  return tfds_builders.Scan({'clips': clips}, bad, [], metadata)


def encode(clip: Clip) -> dict:
  """One record: float16 log-STFT [257, 188] and 3 JPEG frames. Raises media.BadInput."""
  wave = media.read_wav(clip.wav, SAMPLE_RATE)
  audio = spectrogram.log_stft(spectrogram.loop_to_length(wave, SAMPLE_RATE * CLIP_SECONDS), N_FFT, HOP)
  if not np.all(np.isfinite(audio)):
    raise media.BadInput(clip.wav, 'audio decodes to NaN or Inf values')
  rgb = media.frames_at_1fps(clip.flv, NUM_FRAMES, fill_seed=zlib.crc32(clip.id.encode()))
  return {'id': clip.id, 'label': clip.label, 'audio': audio.astype(np.float16),
          'frames': [media.encode_jpeg(f) for f in rgb]}


class Builder(tfds_builders.AVBuilder, skip_registration=True):
  """CREMA-D -> one ArrayRecord split 'clips'; train/val/test are chosen at load time."""
  name = NAME
  VERSION = tfds.core.Version(VERSION)
  encode = encode

  def features(self) -> dict:
    return tfds_builders.record_features(AUDIO_SHAPE, tfds.features.ClassLabel(names=CLASSES))

  def scan(self, raw_dir: str) -> tfds_builders.Scan:
    return scan(raw_dir)


def assign_splits(cfg, ids: list[str]) -> dict[str, list[str]]:
  """{'train', 'val', 'test'} -> clip ids under `cfg.split` (see the module docstring)."""
  if cfg.split == 'ogm':
    train, test = list(read_clip_list(OGM_TRAIN)), list(read_clip_list(OGM_TEST))
    train, val = splits.holdout(train, cfg.val_fraction, cfg.split_seed)
    return {'train': train, 'val': val, 'test': test}
  if cfg.split == 'vavl':
    return splits.read_split_json(VAVL_FOLDS, cfg.fold)
  if cfg.split == 'json':
    if not cfg.split_file:
      raise ValueError("config.data.split is 'json' but config.data.split_file is empty")
    return splits.read_split_json(cfg.split_file, cfg.fold)
  if cfg.split == 'kfold':
    return splits.group_kfold(ids, actor_of, cfg.num_folds, cfg.fold, cfg.split_seed)
  raise ValueError(f"unknown config.data.split '{cfg.split}'; expected one of ['json', 'kfold', 'ogm', 'vavl']")


def load(cfg) -> Dataset:
  """The prepared CREMA-D under `cfg.dir`, split by `cfg.split`; see `configs/lib/datasets.py`."""
  prepared = open_prepared(cfg.dir, NAME, VERSION)
  check_config(cfg, prepared)
  ids = prepared.metadata['splits']['clips']
  index_of = {clip_id: k for k, clip_id in enumerate(ids)}
  records = prepared.builder.as_data_source('clips')
  assignment = assign_splits(cfg, ids)
  sources = {}
  for split in splits.SPLITS:
    indices = select(assignment[split], index_of, f"CREMA-D split '{cfg.split}' {split}")
    if not indices:
      raise ValueError(f"{prepared.path}: CREMA-D split '{cfg.split}' (fold {cfg.fold}) leaves no "
                       f'{split} clips in this dataset')
    sources[split] = make_source(records, indices, cfg, per_frame=True, train=split == 'train')
  return Dataset(modalities=('audio', 'video'), num_classes=len(CLASSES),
                 sample_shapes={'audio': AUDIO_SHAPE, 'video': tuple(cfg.video_shape)}, splits=sources)
