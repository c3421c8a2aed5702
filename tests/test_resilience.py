"""Killed, preempted or poisoned training: `run.py` resumes exactly, SIGTERM saves and exits, NaN stops or skips.

The kill and SIGTERM tests run `run.py` in a child process on the smoke config,
checkpointing every step, interrupt it, run the same command again and compare
with an uninterrupted run of the same config (in this process, to save a
start-up): results.json and the final state are identical (bitwise on CPU).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import synthetic
from data_pipelines import common
from mlb_jax import checkpointing, loop
from tests.test_checkpointing import results_without_config, saved_state
from tests.tree_asserts import assert_trees_all_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 12
OVERRIDES = {'num_steps': NUM_STEPS, 'eval_every': 4, 'checkpoint_every_steps': 1, 'log_every': 4}
COMMAND = [sys.executable, 'run.py', '--config=configs/synthetic.py:smoke',
           *(f'--config.train.{k}={v}' for k, v in OVERRIDES.items())]
PREEMPTED = 143  # run.PREEMPTED


def child_env():
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if jax.config.jax_compilation_cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


def start(workdir):
  return subprocess.Popen(COMMAND + [f'--workdir={workdir}'], cwd=ROOT, env=child_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_to_end(workdir):
  proc = start(workdir)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  return out


def saved_steps(workdir):
  path = os.path.join(workdir, 'checkpoints', 'last')
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def interrupt_after_checkpoint(workdir, sig, step=4):
  """Starts the command and sends `sig` once `checkpoints/last/<step or later>` exists; returns (rc, stderr)."""
  proc = start(workdir)
  deadline = time.time() + 240
  while not saved_steps(workdir) or saved_steps(workdir)[-1] < step:
    assert proc.poll() is None, f'the run ended before step {step}: {proc.stderr.read()[-3000:]}'
    assert time.time() < deadline, 'no checkpoint in time'
    time.sleep(0.01)
  os.kill(proc.pid, sig)
  _, err = proc.communicate(timeout=120)
  return proc.returncode, err


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run of COMMAND's config."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'w')
  config = synthetic.get_config('smoke')
  config.train.update(OVERRIDES)
  loop.train_and_evaluate(config, workdir)
  return workdir


def assert_same_run(workdir, reference):
  assert results_without_config(workdir) == results_without_config(reference)
  assert_trees_all_equal(saved_state(workdir), saved_state(reference))


def test_sigkill_then_same_command_resumes_exactly(tmp_path, reference):
  workdir = str(tmp_path / 'w')
  rc, _ = interrupt_after_checkpoint(workdir, signal.SIGKILL)
  assert rc == -signal.SIGKILL
  killed_at = saved_steps(workdir)[-1]
  assert killed_at < NUM_STEPS and not os.path.exists(os.path.join(workdir, loop.RESULTS))
  out = run_to_end(workdir)
  assert 'best step' in out
  assert_same_run(workdir, reference)


def test_sigterm_saves_at_the_next_step_and_exits(tmp_path, reference):
  workdir = str(tmp_path / 'w')
  rc, err = interrupt_after_checkpoint(workdir, signal.SIGTERM)
  assert rc == PREEMPTED, err[-3000:]
  stopped = saved_steps(workdir)[-1]
  assert f'stopped by SIGTERM at step {stopped}' in err
  assert stopped < NUM_STEPS and not os.path.exists(os.path.join(workdir, loop.RESULTS))
  run_to_end(workdir)
  assert_same_run(workdir, reference)


def nan_config(skip):
  c = synthetic.get_config('smoke')
  c.train.num_steps = 5
  c.train.eval_every = 5
  c.train.log_every = 5
  c.train.checkpoint_every_steps = 1
  c.train.skip_nonfinite = skip
  return c


def poison(monkeypatch, step, modality):
  """Training batch number `step` (1-based) gets NaN `modality` inputs."""
  def train_batches(source, *, batch_size, seed, shard=(0, 1)):
    def maybe_poison(index, batch):
      if index != step - 1:
        return batch
      return {**batch, modality: np.full_like(batch[modality], np.nan)}
    ds = common.train_dataset(source, batch_size=batch_size, seed=seed, shard=shard)
    return iter(ds.map_with_index(maybe_poison).to_iter_dataset())
  monkeypatch.setattr(common, 'train_batches', train_batches)


def test_nan_stops_naming_step_and_modality_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  poison(monkeypatch, step=3, modality='video')
  workdir = str(tmp_path / 'w')
  with pytest.raises(FloatingPointError) as e:
    loop.train_and_evaluate(nan_config(skip=False), workdir)
  message = str(e.value)
  # NaN video frames: on CPU the ReLU after BatchNorm maps NaN to 0, so only the video gradient is non-finite
  assert "gradient of ['video'] at step 3" in message
  assert 'last checkpoint (step 2)' in message
  assert saved_steps(workdir) == [1, 2]
  state = saved_state(workdir)
  assert int(state.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_skip_nonfinite_keeps_the_previous_state_and_counts_it(tmp_path, monkeypatch):
  poison(monkeypatch, step=3, modality='audio')
  workdir = str(tmp_path / 'w')
  config = nan_config(skip=True)
  config.train.num_steps = 3
  [results] = loop.train_and_evaluate(config, workdir)
  assert np.isfinite(results['test']['fused']['loss'])
  train = [json.loads(line) for line in open(os.path.join(workdir, loop.HISTORY)) if '"train"' in line]
  assert train[-1]['step'] == 3 and train[-1]['skipped'] == 1.0 and np.isfinite(train[-1]['loss'])
  assert checkpointing.manager(workdir, checkpointing.LAST).all_steps() == [2, 3]
  before, after = saved_state(workdir, step=2), saved_state(workdir, step=3)
  assert int(after.step) == 3
  assert_trees_all_equal((after.params, after.opt_state, after.batch_stats, after.method_state),
                         (before.params, before.opt_state, before.batch_stats, before.method_state))


def test_nonfinite_description_and_window_means():
  values = {'loss': float('nan'), 'loss_fused': float('nan'), 'loss_audio': 1.0, 'grad_norm_video': float('inf'),
            'grad_norm_fusion': 2.0, 'score_video': float('nan')}
  assert loop.nonfinite_description(values) == (
      "loss of head ['fused']; gradient of ['video']; metrics ['loss', 'score_video']")
  assert loop.nonfinite_description({'loss': 1.0}) is None
  history = [{'loss': 1.0, 'skipped': 0.0}, {'loss': float('nan'), 'skipped': 1.0}, {'loss': 3.0, 'skipped': 0.0}]
  assert loop.window_means(history) == {'loss': 2.0, 'skipped': 1.0}
