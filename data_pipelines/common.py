"""What every pipeline returns, and the Grain readers shared by all of them.

A pipeline's `load(config.data) -> Dataset` gives random-access splits; the
training loop reads them with `train_batches` (per-epoch shuffle from a seed,
fixed-size batches, the last incomplete batch of each epoch dropped) and
`eval_batches` (one pass in order, the last batch padded to full size with a
`mask` of which rows are real). Pipelines never import the model or training code.
"""

from typing import Iterator, Mapping, NamedTuple

import grain
import numpy as np

LABEL = 'label'
MASK = 'mask'


class ArraySource:
  """Random access over equally long arrays: item i is {key: array[i]}."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f'arrays must have the same length, got {lengths}')
    self.arrays = dict(arrays)
    self._len = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in self.arrays.items()}


class Dataset(NamedTuple):
  modalities: tuple[str, ...]              # names, in the file/config order
  num_classes: int
  sample_shapes: dict[str, tuple[int, ...]]  # per-sample shape of each modality
  splits: dict[str, ArraySource]           # 'train', 'val', 'test'


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return num_examples // batch_size


def train_dataset(source, *, batch_size: int, seed: int) -> grain.MapDataset:
  """Infinite epochs of shuffled batches; every epoch is a new permutation.

  Raises:
    ValueError: when the split holds fewer examples than one batch.
  """
  if len(source) < batch_size:
    raise ValueError(f'the training split has {len(source)} examples, fewer than one batch '
                     f'of {batch_size}; lower data.batch_size')
  return (grain.MapDataset.source(source).seed(seed).shuffle()
          .batch(batch_size, drop_remainder=True).repeat())


def train_batches(source, *, batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
  """An iterator (with Grain `get_state`/`set_state`) over `train_dataset`."""
  return iter(train_dataset(source, batch_size=batch_size, seed=seed).to_iter_dataset())


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  n = len(batch[LABEL])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
  out[MASK] = np.arange(size) < n
  return out


def eval_batches(source, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass; every batch has `batch_size` rows and a boolean `mask`."""
  ds = grain.MapDataset.source(source).batch(batch_size, drop_remainder=False)
  for batch in ds:
    yield _pad(batch, batch_size)
