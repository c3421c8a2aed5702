"""Data-parallel sharding rules: the batch is split on a `data` mesh axis, everything else is replicated.

One `jax.jit` step serves 1..N devices (and several hosts): the step's inputs
carry these shardings and XLA (GSPMD) inserts the cross-device reductions, so
BatchNorm batch statistics, the balancing scores s_i, the losses and the metrics
are means over the global batch, exactly as on one device.
"""

from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = 'data'  # the mesh axis the batch is split on


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process), axis `data`.

  Built with `Mesh` (axis type Auto, classic GSPMD) rather than `jax.make_mesh`,
  whose default Explicit axes would put shardings into the types.
  """
  return Mesh(np.array(jax.devices() if devices is None else list(devices)), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`; the other axes whole."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (parameters, optimizer and balancing state, metrics)."""
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, field: str) -> None:
  """Raises ValueError unless the global `batch_size` splits evenly over the devices and processes."""
  devices, processes = mesh.devices.size, jax.process_count()
  if batch_size % devices or batch_size % processes:
    raise ValueError(f'{field}={batch_size} must be a multiple of the device count {devices} '
                     f'(and of the process count {processes}); the batch is split evenly over devices')


def shard_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's rows of the batch (all rows when there is one process).

  Args:
    local: {key: [B / process_count, ...]}, this process's share, in process order.
    mesh: the data mesh.

  Returns:
    {key: [B, ...]} sharded over `data`.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def shard_global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from a batch every process holds whole (evaluation reads the full split everywhere)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_callback(np.shape(v), sharding, lambda index, v=v: np.asarray(v)[index])
          for k, v in batch.items()}
