"""Orbax checkpoints of the train state, the data iterator and a small metadata record.

Two managers live under `<workdir>/checkpoints/`:
  * `last/`  the latest state, with the Grain iterator state (for resuming);
  * `best/`  the state with the best validation accuracy of the fused head.
Orbax writes each step to a temporary directory and renames it when complete,
so a checkpoint interrupted mid-write is never restored.
"""

import os
from typing import Any

import grain
import orbax.checkpoint as ocp

LAST = 'last'
BEST = 'best'


def manager(workdir: str, kind: str, max_to_keep: int = 1) -> ocp.CheckpointManager:
  path = os.path.join(os.path.abspath(workdir), 'checkpoints', kind)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(path, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict, data_iter=None) -> None:
  """Saves `state`, `meta` (JSON) and, when given, the Grain iterator state."""
  items = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(meta)}
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, template_state, data_iter=None,
            step: int | None = None) -> tuple[Any, dict]:
  """Restores (state, meta) of `step` (default: latest); fills `data_iter` in place.

  Raises:
    FileNotFoundError: when the manager holds no checkpoint.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {mngr.directory}')
  items = {'state': ocp.args.StandardRestore(template_state), 'meta': ocp.args.JsonRestore()}
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
  out = mngr.restore(step, args=ocp.args.Composite(**items))
  return out.state, out.meta
