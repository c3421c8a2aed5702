"""Bring-your-own arrays: a `.npz` file with one array per modality.

File layout (`numpy.savez(path, audio=..., video=..., text=..., label=..., split=...)`):
  <modality>  [N, ...] any shape, any float or integer dtype; every array key other
              than `label` and `split` is a modality, in the file's order
  label       [N] integer class ids in [0, num_classes)
  split       [N] integers: 0 train, 1 val, 2 test

`num_classes` is `config.data.num_classes`, or max(label) + 1 when that is 0.
Encoders are chosen per modality by rank (`config.model.encoder = 'auto'`): a
feature vector gets an MLP, [H, W] or [H, W, C] a conv stack, [T, H, W, C]
per-frame convs.

Run:
  python run.py --config=configs/arrays.py:method=mlb --config.data.path=my.npz --workdir=w
"""

import os

import numpy as np

from data_pipelines.common import ArraySource, Dataset

LABEL, SPLIT = 'label', 'split'
SPLITS = {'train': 0, 'val': 1, 'test': 2}


def _fail(path: str, message: str):
  raise ValueError(f'{path}: {message}')


def load(cfg) -> Dataset:
  """Reads and validates `cfg.path`; every problem raises ValueError naming the file and key."""
  path = cfg.path
  if not path:
    raise ValueError('config.data.path is empty: give the .npz file with --config.data.path=...')
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (config.data.path)")
  try:
    with np.load(path, allow_pickle=False) as f:
      data = {k: f[k] for k in f.files}
  except (ValueError, OSError) as e:
    raise ValueError(f'{path}: not a readable .npz file ({e})') from e

  for key in (LABEL, SPLIT):
    if key not in data:
      _fail(path, f"missing key '{key}'; keys present: {sorted(data)}")
  modalities = tuple(k for k in data if k not in (LABEL, SPLIT))
  if len(modalities) < 2:
    _fail(path, f'needs at least 2 modality arrays besides label/split, found {list(modalities)}')

  label, split = data[LABEL], data[SPLIT]
  if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
    _fail(path, f"'label' must be a 1-D integer array, got shape {label.shape} dtype {label.dtype}")
  n = len(label)
  for key in (SPLIT, *modalities):
    if len(data[key]) != n:
      _fail(path, f"'{key}' has {len(data[key])} rows but 'label' has {n}")
  for m in modalities:
    arr = data[m]
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
      _fail(path, f"modality '{m}' must be numeric, got dtype {arr.dtype}")
    if arr.ndim < 2:
      _fail(path, f"modality '{m}' must be [N, ...] with at least one feature axis, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
      _fail(path, f"modality '{m}' contains NaN or Inf values")

  num_classes = int(cfg.num_classes) or int(label.max()) + 1
  bad = (label < 0) | (label >= num_classes)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    _fail(path, f"'label' must be in [0, {num_classes}); row {i} has {int(label[i])} "
                f'({int(bad.sum())} rows out of range)')
  unknown = sorted(set(np.unique(split).tolist()) - set(SPLITS.values()))
  if unknown:
    _fail(path, f"'split' must hold 0 (train), 1 (val) or 2 (test); found {unknown}")

  splits = {}
  for name, code in SPLITS.items():
    rows = np.flatnonzero(split == code)
    if len(rows) == 0:
      _fail(path, f"split '{name}' (split == {code}) is empty")
    arrays = {m: np.asarray(data[m][rows], np.float32) for m in modalities}
    arrays[LABEL] = label[rows].astype(np.int32)
    splits[name] = ArraySource(arrays)
  return Dataset(modalities=modalities, num_classes=num_classes,
                 sample_shapes={m: tuple(data[m].shape[1:]) for m in modalities}, splits=splits)
