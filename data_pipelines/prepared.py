"""Reading a dataset written by `python -m data_pipelines.prepare`.

`open_prepared` finds the TFDS directory and its metadata; `make_splits`
turns lists of clip ids into `TransformedSource` splits over the ArrayRecord
data source, decoded at read time: the float16 spectrogram becomes float32
'audio' [F, T], the JPEG frames become ImageNet-normalised float32 'video'
[T, S, S, 3] (random crop and flip on the training split only), 'label' int32.

Only `open_prepared` needs TensorFlow Datasets (imported there): the decoding
and augmentation (`decode_record`, `augment_record`, `make_source`) work on any
random-access records of that layout, e.g. `benchmarks/input_pipeline.py`'s
ArrayRecord files, on machines without TensorFlow.
"""

import functools
import os
from typing import Any, NamedTuple, Sequence

import numpy as np
from absl import logging

from data_pipelines import frames
from data_pipelines.common import LABEL, Subset, TransformedSource


class Prepared(NamedTuple):
  path: str                 # <data_dir>/<name>/<version>
  builder: Any              # tfds read-only builder
  metadata: dict[str, Any]  # classes, splits (ids in record order), skipped, excluded, preprocessing


def open_prepared(data_dir: str, name: str, version: str) -> Prepared:
  """The prepared dataset `name` under `data_dir` (the `--out_dir` of prepare).

  Raises:
    ValueError: `data_dir` is empty.
    FileNotFoundError: no prepared dataset there (the message gives the prepare command).
  """
  if not data_dir:
    raise ValueError(f'config.data.dir is empty: give the prepared {name} directory with '
                     f'--config.data.dir=... (python -m data_pipelines.prepare --dataset={name} '
                     f'--raw_dir=... --out_dir=DIR)')
  path = os.path.join(data_dir, name, version)
  if not os.path.isfile(os.path.join(path, 'dataset_info.json')):
    raise FileNotFoundError(f'{path}: no prepared {name} dataset (version {version}); build it with '
                            f'python -m data_pipelines.prepare --dataset={name} --raw_dir=... '
                            f'--out_dir={data_dir}')
  import tensorflow_datasets as tfds  # only to open a prepared dataset: decoding and augmenting need none
  builder = tfds.builder_from_directory(path)
  return Prepared(path, builder, dict(builder.info.metadata))


def check_config(cfg, prepared: Prepared) -> None:
  """`cfg.num_classes`, `cfg.audio_shape` and `cfg.video_shape` against what was prepared."""
  meta = prepared.metadata
  if cfg.num_classes != len(meta['classes']):
    raise ValueError(f"{prepared.path}: holds {len(meta['classes'])} classes but config.data.num_classes "
                     f'is {cfg.num_classes}')
  stored = tuple(prepared.builder.info.features['audio'].shape)
  if tuple(cfg.audio_shape) != stored:
    raise ValueError(f'{prepared.path}: audio spectrograms are {list(stored)} but config.data.audio_shape '
                     f'is {list(cfg.audio_shape)}')
  t, h, w, c = cfg.video_shape
  if t != meta['num_frames'] or h != w or c != 3:
    raise ValueError(f"{prepared.path}: video is {meta['num_frames']} RGB frames resized to a square, so "
                     f"config.data.video_shape must be ({meta['num_frames']}, S, S, 3); got "
                     f'{tuple(cfg.video_shape)}')


def decode_record(record: dict, *, size: int) -> dict[str, np.ndarray]:
  """Evaluation decoding: Resize((size, size)) frames."""
  return {'audio': np.asarray(record['audio'], np.float32),
          'video': frames.eval_frames(record['frames'], size),
          LABEL: np.int32(record['label'])}


def augment_record(record: dict, rng: np.random.Generator, *, size: int, per_frame: bool) -> dict[str, np.ndarray]:
  """Training decoding: RandomResizedCrop(size) + flip, per frame or per clip."""
  return {'audio': np.asarray(record['audio'], np.float32),
          'video': frames.train_frames(record['frames'], size, rng, per_frame=per_frame),
          LABEL: np.int32(record['label'])}


def select(listed: Sequence[str], index_of: dict[str, int], what: str) -> list[int]:
  """Record indices of the `listed` ids; ids the dataset lacks are dropped with a warning
  (skipped at build time, or absent from the raw folder)."""
  missing = [i for i in listed if i not in index_of]
  if missing:
    logging.warning('%s lists %d clips; %d are not in the prepared dataset and are left out '
                    '(e.g. %s)', what, len(listed), len(missing), ', '.join(missing[:3]))
  return [index_of[i] for i in listed if i in index_of]


def make_source(records, indices: Sequence[int] | None, cfg, *, per_frame: bool,
                train: bool) -> TransformedSource:
  """A split over `records` (all of them when `indices` is None), decoded to
  `cfg.video_shape[1]`-pixel frames; `train` adds the random augmentation."""
  size = cfg.video_shape[1]
  records = records if indices is None else Subset(records, indices)
  augment = functools.partial(augment_record, size=size, per_frame=per_frame) if train else None
  return TransformedSource(records, functools.partial(decode_record, size=size),
                           train_transform=augment, num_workers=cfg.num_workers)
