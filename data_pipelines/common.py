"""What every pipeline returns, and the Grain readers shared by all of them.

A pipeline's `load(config.data) -> Dataset` gives random-access splits; the
training loop reads them with `train_batches` (per-epoch shuffle from a seed,
fixed-size batches, the last incomplete batch of each epoch dropped) and
`eval_batches` (one pass in order, the last batch padded to full size with a
`mask` of which rows are real). Pipelines never import the model or training code.

Pipelines over stored records (the prepared CREMA-D, AVE and UCF101 datasets)
return `TransformedSource` splits: records are decoded at read time, the
training split through its random augmentation (Grain `random_map`, a fresh
draw per example and epoch from the seed), optionally in worker processes.
"""

from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import grain
import numpy as np
from absl import flags

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


class Subset:
  """Random access to `records[indices[i]]`: a split chosen out of a larger store."""

  def __init__(self, records, indices: Sequence[int]):
    self.records = records
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.records[int(self.indices[index])]


class TransformedSource:
  """Stored records read through a transform: item i is `transform(records[i])`.

  Attributes:
    records: random-access records (e.g. a `tfds` ArrayRecord data source).
    transform: record -> model inputs, deterministic (evaluation, and
      training when `train_transform` is None).
    train_transform: (record, numpy Generator) -> model inputs; `train_dataset`
      applies it instead of `transform`, so augmentation touches training only.
    num_workers: Grain worker processes for `train_batches`/`eval_batches`
      (0 reads in the calling process).
  """

  def __init__(self, records, transform: Callable[[Any], dict],
               train_transform: Callable[[Any, np.random.Generator], dict] | None = None,
               num_workers: int = 0):
    self.records = records
    self.transform = transform
    self.train_transform = train_transform
    self.num_workers = num_workers

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self.transform(self.records[index])


class Dataset(NamedTuple):
  modalities: tuple[str, ...]              # names, in the file/config order
  num_classes: int
  sample_shapes: dict[str, tuple[int, ...]]  # per-sample shape of each modality
  splits: dict[str, Any]                   # 'train', 'val', 'test': ArraySource or TransformedSource


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return num_examples // batch_size


def train_dataset(source, *, batch_size: int, seed: int,
                  shard: tuple[int, int] = (0, 1)) -> grain.MapDataset:
  """Infinite epochs of shuffled batches; every epoch is a new permutation.

  Args:
    source: random-access split; a `TransformedSource` is decoded through its
      `train_transform` (or `transform`) after the shuffle.
    batch_size: examples per batch (per process when sharded).
    seed: shuffle and augmentation seed.
    shard: (index, count): this process reads every count-th example of the
      split, cut first to a multiple of count so every process runs the same
      number of steps (e.g. (jax.process_index(), jax.process_count())).

  Raises:
    ValueError: when the (sharded) split holds fewer examples than one batch.
  """
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f'shard index {index} is not in [0, {count})')
  if len(source) // count < batch_size:
    raise ValueError(f'the training split has {len(source) // count} examples per process, fewer '
                     f'than one batch of {batch_size}; lower data.batch_size')
  transformed = isinstance(source, TransformedSource)
  ds = grain.MapDataset.source(source.records if transformed else source)
  if count > 1:
    ds = ds[:count * (len(ds) // count)][index::count]
  ds = ds.seed(seed).shuffle()
  if transformed:
    ds = ds.random_map(source.train_transform) if source.train_transform else ds.map(source.transform)
  return ds.batch(batch_size, drop_remainder=True).repeat()


def _prefetch(ds: grain.IterDataset, num_workers: int) -> grain.IterDataset:
  if num_workers == 0:
    return ds
  # Grain's workers read absl flags, which raise until parsed (run.py parses them; a
  # library caller or a test may not have).
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))


# Batches of in-memory arrays are cheap to gather but Grain's per-record work is
# Python: read ahead by threads (Grain's default: 16 threads, 500 batches) it
# competes for the GIL with the training loop (several seeds' iterators at once:
# 2.5x slower per step). They are read when asked for instead, while the
# previous step runs on the device.
IN_MEMORY_READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def train_batches(source, *, batch_size: int, seed: int,
                  shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, np.ndarray]]:
  """An iterator (with Grain `get_state`/`set_state`) over `train_dataset`.

  A `TransformedSource` with `num_workers` > 0 is read by that many worker
  processes; the batches are the same as with 0 workers. Call `close()` on
  the iterator when done with it early.
  """
  in_memory = isinstance(source, ArraySource)
  ds = train_dataset(source, batch_size=batch_size, seed=seed, shard=shard).to_iter_dataset(
      IN_MEMORY_READ if in_memory else None)
  workers = source.num_workers if isinstance(source, TransformedSource) else 0
  return iter(_prefetch(ds, workers))


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  n = len(batch[LABEL])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
  out[MASK] = np.arange(size) < n
  return out


def eval_batches(source, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass; every batch has `batch_size` rows and a boolean `mask`."""
  if not isinstance(source, TransformedSource):
    for batch in grain.MapDataset.source(source).batch(batch_size, drop_remainder=False):
      yield _pad(batch, batch_size)
    return
  ds = grain.MapDataset.source(source.records).map(source.transform)
  it = iter(_prefetch(ds.batch(batch_size, drop_remainder=False).to_iter_dataset(), source.num_workers))
  try:
    for batch in it:
      yield _pad(batch, batch_size)
  finally:
    it.close()
