"""Orbax checkpoints of the train state, the data iterator and a small metadata record.

Two managers live under `<workdir>/checkpoints/`:
  * `last/`  the latest two states, each with the Grain iterator state of this
    process (for resuming; the rng and the balancing state are in the train state);
  * `best/`  the state with the best validation accuracy of `train.select_head`.
Orbax writes each step to a temporary directory (`<step>.orbax-checkpoint-tmp*`)
and renames it when complete, so a checkpoint interrupted mid-write (a kill, a
preemption) is never listed, hence never restored. A complete but unreadable
latest step (a damaged disk, a truncated copy) falls back to the previous one.

Every process calls `save` and `restore` (Orbax coordinates the writes: the
primary process writes the metadata, each process its Grain iterator state).
"""

import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from absl import logging

LAST = 'last'
BEST = 'best'
KEEP = {LAST: 2, BEST: 1}  # `last` keeps a previous step to fall back to


def directory(workdir: str, kind: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints', kind)


def manager(workdir: str, kind: str) -> ocp.CheckpointManager:
  """The `kind` (LAST or BEST) manager of `workdir`."""
  return manager_at(directory(workdir, kind), max_to_keep=KEEP[kind])


def manager_at(path: str, max_to_keep: int = 1, read_only: bool = False) -> ocp.CheckpointManager:
  """A manager over `path`, a directory of `<step>/` checkpoints.

  A writing manager removes the temporary directories of interrupted saves; a
  `read_only` one (to evaluate someone else's checkpoints; never call `save`)
  neither creates nor cleans anything.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         cleanup_tmp_directories=not read_only,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(path), options=options)


def resolve(path: str, kind: str = BEST) -> str:
  """The checkpoint directory `path` names: a workdir (its `checkpoints/<kind>`) or a directory of steps.

  Raises:
    FileNotFoundError: when neither holds a step.
  """
  for candidate in (directory(path, kind), os.path.abspath(path)):
    if os.path.isdir(candidate) and any(name.isdigit() for name in os.listdir(candidate)):
      return candidate
  raise FileNotFoundError(f"no checkpoint under '{path}' (looked for '{directory(path, kind)}' "
                          'and for numbered step directories in it)')


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict, data_iter=None) -> None:
  """Saves `state`, `meta` (JSON) and, when given, the Grain iterator state.

  A step that already exists (written before a kill, then trained again after
  resuming from an earlier step) is replaced.
  """
  items = {'state': ocp.args.StandardSave(state), 'meta': ocp.args.JsonSave(meta)}
  if data_iter is not None:
    items['data_iter'] = grain.checkpoint.CheckpointSave(data_iter)
  if step in mngr.all_steps():
    mngr.delete(step)
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


def restore_meta(mngr: ocp.CheckpointManager, step: int | None = None) -> dict:
  """The metadata record of `step` (default: latest) alone, without the state: what it was trained with."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {mngr.directory}')
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def restore_latest(mngr: ocp.CheckpointManager, template_state, data_iter=None) -> tuple[Any, dict, int]:
  """(state, meta, step) of the newest step that restores, warning about each newer one that does not.

  The state comes back with the shardings of `template_state`, whatever the
  device count it was saved from.

  Raises:
    FileNotFoundError: when the manager holds no checkpoint; the oldest
      step's own error when no step restores.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {mngr.directory}')
  for step, previous in zip(steps, steps[1:]):
    try:
      return (*restore(mngr, template_state, data_iter, step=step), step)
    except Exception as e:  # noqa: BLE001 -- any unreadable step falls back to the previous one
      logging.warning("checkpoint '%s' could not be restored (%s: %.300s); falling back to step %d",
                      os.path.join(str(mngr.directory), str(step)), type(e).__name__, e, previous)
  return (*restore(mngr, template_state, data_iter, step=steps[-1]), steps[-1])
