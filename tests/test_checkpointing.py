"""A damaged latest checkpoint falls back to the previous one, an interrupted save is never restored,
and a checkpoint evaluates on another split or from another directory."""

import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import pytest
from orbax.checkpoint._src.path import atomicity

from configs import synthetic
from mlb_jax import build, checkpointing, loop
from tests.tree_asserts import assert_trees_all_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(num_steps):
  c = synthetic.get_config('smoke')
  c.train.num_steps = num_steps
  c.train.checkpoint_every_steps = 1
  c.train.eval_every = 3
  return c


def saved_state(workdir, step=None):
  """The state in `checkpoints/last` (default: its latest step) as host arrays, the rng key as its data."""
  exp = build.build(synthetic.get_config('smoke'))
  mngr = checkpointing.manager(workdir, checkpointing.LAST)
  state, _ = checkpointing.restore(mngr, loop.initial_state([exp]), step=step)
  mngr.close()
  return jax.device_get(state.replace(rng=jax.random.key_data(state.rng)))


def results_without_config(workdir):
  out = json.load(open(os.path.join(workdir, loop.RESULTS)))
  del out['config']
  out.pop('trained_with', None)  # an extended run's best checkpoint may predate the extension
  return out


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """An uninterrupted 6-step run."""
  workdir = str(tmp_path_factory.mktemp('straight') / 'w')
  loop.train_and_evaluate(smoke_config(6), workdir)
  return workdir


@pytest.fixture(scope='module')
def four_steps(tmp_path_factory):
  """A 4-step run of the same config (checkpoints/last holds steps 3 and 4); tests copy it."""
  workdir = str(tmp_path_factory.mktemp('four') / 'w')
  loop.train_and_evaluate(smoke_config(4), workdir)
  return workdir


def test_last_keeps_two_steps_and_best_one(straight):
  assert checkpointing.manager(straight, checkpointing.LAST).all_steps() == [5, 6]
  assert len(checkpointing.manager(straight, checkpointing.BEST).all_steps()) == 1


# Orbax leaves the failed reads' asyncio tasks to be collected after their event loop closed.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_corrupted_latest_checkpoint_falls_back_with_a_warning(tmp_path, four_steps, straight, caplog):
  workdir = shutil.copytree(four_steps, str(tmp_path / 'w'))
  damaged = os.path.join(workdir, 'checkpoints', 'last', '4')
  files = [f for f in glob.glob(os.path.join(damaged, 'state', '**', 'd', '*'), recursive=True)
           if os.path.isfile(f)]
  assert files
  for f in files:
    with open(f, 'wb') as out:
      out.write(b'truncated')
  with caplog.at_level(logging.INFO):  # the 4-step run extended to 6 steps
    loop.train_and_evaluate(smoke_config(6), workdir, allow_changed=('train.num_steps',))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and damaged in r.getMessage()]
  assert warnings and 'falling back to step 3' in warnings[0]
  assert any('resumed from step 3' in r.getMessage() for r in caplog.records)
  assert_trees_all_equal(saved_state(workdir), saved_state(straight))
  assert results_without_config(workdir) == results_without_config(straight)


def test_interrupted_save_is_never_restored(tmp_path, four_steps, monkeypatch):
  workdir = shutil.copytree(four_steps, str(tmp_path / 'w'))
  exp = build.build(smoke_config(4))
  mngr = checkpointing.manager(workdir, checkpointing.LAST)
  state, meta, step = checkpointing.restore_latest(mngr, loop.initial_state([exp]))
  assert step == 4

  async def killed_before_rename(self):
    raise OSError('killed while writing')

  with monkeypatch.context() as m:  # Orbax writes the step into a temporary directory, then renames it
    m.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', killed_before_rename)
    with pytest.raises(Exception, match='killed while writing'):
      checkpointing.save(mngr, 5, state.replace(step=state.step + 1), meta)
  mngr.close()
  assert glob.glob(os.path.join(workdir, 'checkpoints', 'last', '5.orbax-checkpoint-tmp*'))
  mngr = checkpointing.manager(workdir, checkpointing.LAST)  # a writing manager also removes the leftover
  assert mngr.all_steps() == [3, 4]
  assert checkpointing.restore_latest(mngr, loop.initial_state([exp]))[2] == 4
  assert not glob.glob(os.path.join(workdir, 'checkpoints', 'last', '5.orbax-checkpoint-tmp*'))


def test_resolve_accepts_a_workdir_or_a_step_directory(straight, tmp_path):
  best = os.path.join(straight, 'checkpoints', 'best')
  assert checkpointing.resolve(straight) == best
  assert checkpointing.resolve(best) == best
  with pytest.raises(FileNotFoundError, match='no checkpoint under'):
    checkpointing.resolve(str(tmp_path))


def test_evaluate_another_split(straight, tmp_path):
  config = smoke_config(6)
  [results] = loop.evaluate(config, str(tmp_path / 'e'), split='train', checkpoint_dir=straight)
  on_disk = json.load(open(tmp_path / 'e' / 'results_train.json'))
  assert set(on_disk['train']) == {'fused', 'audio', 'video'} and on_disk['train'] == results['train']
  assert os.path.exists(tmp_path / 'e' / 'train_predictions.npz')
  trained = json.load(open(os.path.join(straight, loop.RESULTS)))
  assert results['best_step'] == trained['best_step'] and results['val'] == trained['val']
  # one built experiment evaluates directly, without building again
  exp = build.build(config)
  again = loop.evaluate_checkpoint(exp, str(tmp_path / 'e2'), split='train', checkpoint_dir=straight)
  assert again['train'] == results['train']
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    loop.evaluate(config, str(tmp_path / 'e'), split='dev', checkpoint_dir=straight)
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    loop.evaluate_checkpoint(exp, str(tmp_path / 'e'), split='dev', checkpoint_dir=straight)


def test_run_py_evaluates_a_copied_checkpoint_directory(straight, tmp_path):
  copied = shutil.copytree(os.path.join(straight, 'checkpoints', 'best'), str(tmp_path / 'from_elsewhere'))
  command = [sys.executable, 'run.py', '--config=configs/synthetic.py:smoke', f'--workdir={tmp_path / "e"}',
             '--mode=eval', '--eval_split=val', f'--checkpoint_dir={copied}']
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'val accuracy fused' in proc.stdout and 'results_val.json' in proc.stdout
  evaluated = json.load(open(tmp_path / 'e' / 'results_val.json'))
  trained = json.load(open(os.path.join(straight, loop.RESULTS)))
  assert evaluated['val'] == trained['val'] and evaluated['best_step'] == trained['best_step']
  assert sorted(os.listdir(copied)) == sorted(os.listdir(os.path.join(straight, 'checkpoints', 'best')))
