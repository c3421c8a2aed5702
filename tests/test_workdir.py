"""A workdir holds one run: another config is refused, one training at a time, each step once.

* Resuming (or evaluating) a workdir under another config is refused, listing the
  differences, and changes nothing; `allow_changed` / `--allow_changed` extends a run.
* A second training of a busy workdir fails at once naming the holder's pid; a
  killed one (kill -9) leaves no lock that blocks the resume.
* After a resume, metrics.jsonl and the TensorBoard scalars hold every step once.
* Ctrl-C saves at the next step boundary and exits 130; a second Ctrl-C stops at once.
* A bad batch size is one line and leaves no run behind.

The in-process tests use `loop.train_and_evaluate`; the others run `run.py` on the
smoke config in a child process.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import synthetic
from mlb_jax import loop, workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = '--config=configs/synthetic.py:smoke'
INTERRUPTED = 130  # main.INTERRUPTED


def child_env():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  if jax.config.jax_compilation_cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


def command(workdir, *args, config=SMOKE):
  return [sys.executable, 'run.py', config, *args, f'--workdir={workdir}']


def run(workdir, *args, config=SMOKE, timeout=600):
  return subprocess.run(command(workdir, *args, config=config), cwd=ROOT, env=child_env(), capture_output=True,
                        text=True, timeout=timeout)


def start(workdir, *args):
  return subprocess.Popen(command(workdir, *args), cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, what, timeout=400):
  deadline = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f'the run ended (status {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}')
    assert time.time() < deadline, f'no {what} in {timeout} s'
    time.sleep(0.01)


def one_error_line(proc, *fragments, status=1):
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith('error: '), lines[0]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  return lines[0]


def saved_steps(workdir, kind='last'):
  path = os.path.join(workdir, 'checkpoints', kind)
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def rows(workdir):
  with open(os.path.join(workdir, loop.HISTORY)) as f:
    return [json.loads(line) for line in f if line.strip()]


def row_keys(workdir):
  return [(r['step'], r['split']) for r in rows(workdir)]


def assert_each_row_once(workdir, train_steps, val_steps):
  keys = row_keys(workdir)
  assert len(keys) == len(set(keys)), sorted(keys)
  assert sorted(s for s, split in keys if split == 'train') == list(train_steps)
  assert sorted(s for s, split in keys if split == 'val') == list(val_steps)


def event_files(workdir):
  return sorted(n for n in os.listdir(workdir) if n.startswith('events.out.tfevents'))


def snapshot(workdir, skip=()):
  """{relative path: bytes} of every file under `workdir` except the names in `skip`."""
  out = {}
  for folder, _, files in os.walk(workdir):
    for name in files:
      if name in skip:
        continue
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def smoke(**train):
  c = synthetic.get_config('smoke')
  c.train.update(train)
  return c


# ----------------------------------------------------------------------------------------------
# 1. Another config is refused; allow_changed extends a run.


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished smoke MLB run (2 steps, validation at 2)."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'w')
  loop.train_and_evaluate(smoke(), workdir)
  return workdir


def test_resume_under_another_config_is_refused_and_changes_nothing(trained):
  before = snapshot(trained)
  joint = smoke()
  joint.method = 'joint'
  with pytest.raises(ValueError) as e:
    loop.train_and_evaluate(joint, trained)
  message = str(e.value)
  assert "method: 'mlb' (stored) vs 'joint' (now)" in message
  assert '--allow_changed' in message and trained in message
  with pytest.raises(ValueError, match=r"method: 'mlb' \(stored\) vs 'joint' \(now\)"):
    loop.evaluate(joint, trained)
  assert snapshot(trained) == before  # results.json, checkpoints, metrics.jsonl, events: byte for byte
  assert saved_steps(trained) == [2] and saved_steps(trained, 'best') == [2]


def test_command_refuses_training_and_evaluating_under_another_config(trained):
  before = snapshot(trained, skip=('train.log', workdir_lib.LOCK))
  joint = f'{SMOKE},method=joint'
  proc = run(trained, config=joint)
  one_error_line(proc, "method: 'mlb' (stored) vs 'joint' (now)")
  proc = run(trained, '--mode=eval', config=joint)
  one_error_line(proc, "method: 'mlb' (stored) vs 'joint' (now)")
  assert snapshot(trained, skip=('train.log', workdir_lib.LOCK)) == before
  assert saved_steps(trained) == [2]


def test_allow_changed_extends_a_finished_run(trained, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(trained, workdir)
  longer = smoke(num_steps=4)
  with pytest.raises(ValueError, match=r'train\.num_steps: 2 \(stored\) vs 4 \(now\)'):
    loop.train_and_evaluate(longer, workdir)
  assert saved_steps(workdir) == [2]
  [results] = loop.train_and_evaluate(longer, workdir, allow_changed=['train.num_steps'])
  assert saved_steps(workdir)[-1] == 4
  assert_each_row_once(workdir, [1, 2, 3, 4], [2, 4])
  val = {r['step']: r['accuracy_fused'] for r in rows(workdir) if r['split'] == 'val'}
  assert results['best_step'] == max(val, key=lambda s: (val[s], -s))  # the first best validation, 2 or 4
  assert results['config']['train']['num_steps'] == 4

  # The command: --allow_changed=train.num_steps extends it again, from 4 to 6.
  proc = run(workdir, '--config.train.num_steps=6', '--allow_changed=train.num_steps')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'resumed from step 4' in proc.stdout
  assert saved_steps(workdir)[-1] == 6
  assert_each_row_once(workdir, [1, 2, 3, 4, 5, 6], [2, 4, 6])
  with open(os.path.join(workdir, loop.RESULTS)) as f:
    assert json.load(f)['config']['train']['num_steps'] == 6


# ----------------------------------------------------------------------------------------------
# 2. One training per workdir; a killed one leaves no lock behind.


def test_second_training_fails_at_once_and_a_killed_one_resumes(tmp_path):
  workdir = str(tmp_path / 'no' / 'such' / 'parent' / 'w')  # created with its parents
  args = ('--config.train.num_steps=60', '--config.train.eval_every=30', '--config.train.checkpoint_every_steps=5',
          '--config.train.log_every=5')
  lock = os.path.join(workdir, workdir_lib.LOCK)

  def holder():
    try:
      with open(lock) as f:
        return f.read().strip()
    except FileNotFoundError:
      return None

  first = start(workdir, *args)
  try:
    wait_for(lambda: holder() == str(first.pid), first, 'the lock')
    os.kill(first.pid, signal.SIGSTOP)  # it holds the lock for as long as the second one takes
    try:
      with pytest.raises(workdir_lib.WorkdirBusy, match=f'pid {first.pid}'):
        with workdir_lib.locked(workdir):
          pass
      second = run(workdir, *args, timeout=240)  # waiting for the lock would never end
      one_error_line(second, f'pid {first.pid}', workdir)
      assert holder() == str(first.pid)
    finally:
      os.kill(first.pid, signal.SIGCONT)
    wait_for(lambda: saved_steps(workdir) and saved_steps(workdir)[-1] >= 5, first, 'a checkpoint')
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
  finally:
    if first.poll() is None:
      first.kill()
      first.communicate()
  assert first.returncode == -signal.SIGKILL
  killed_at = saved_steps(workdir)[-1]
  assert killed_at < 60 and not os.path.exists(os.path.join(workdir, loop.RESULTS))
  assert holder() == str(first.pid)  # a stale lock file: the kernel dropped the lock itself

  proc = run(workdir, *args)  # the same command
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'resumed from step {killed_at}' in proc.stdout
  assert saved_steps(workdir)[-1] == 60 and os.path.exists(os.path.join(workdir, loop.RESULTS))
  assert_each_row_once(workdir, range(5, 61, 5), [30, 60])
  assert len(event_files(workdir)) == 2  # the killed run's and the resumed one's; none of the refused one


# ----------------------------------------------------------------------------------------------
# 3. Each step once after a resume.


class Stop(Exception):
  pass


def test_resume_keeps_every_step_once_in_metrics_and_tensorboard(tmp_path):
  workdir = str(tmp_path / 'w')
  config = smoke(num_steps=6, checkpoint_every_steps=2, eval_every=6, log_every=1)

  def stop_after_step_3(event):
    if event['event'] == 'train' and event['step'] == 3:
      raise Stop

  with pytest.raises(Stop):
    loop.train_and_evaluate(config, workdir, progress=stop_after_step_3)
  assert saved_steps(workdir) == [2]
  assert sorted(row_keys(workdir)) == [(1, 'train'), (2, 'train'), (3, 'train')]  # step 3 is trained again

  events = []
  loop.train_and_evaluate(config, workdir, progress=events.append)
  assert [e['step'] for e in events if e['event'] == 'resumed'] == [2]
  assert [e['step'] for e in events if e['event'] == 'train'] == [3, 4, 5, 6]
  assert_each_row_once(workdir, [1, 2, 3, 4, 5, 6], [6])
  assert len(event_files(workdir)) == 2

  acc = EventAccumulator(workdir)
  acc.Reload()
  loss = {r['step']: r['loss'] for r in rows(workdir) if r['split'] == 'train'}
  scalars = acc.Scalars('train/loss')
  assert [s.step for s in scalars] == [1, 2, 3, 4, 5, 6]
  for s in scalars:
    assert s.value == pytest.approx(loss[s.step], rel=1e-6)
  assert [s.step for s in acc.Scalars('val/accuracy_fused')] == [6]


# ----------------------------------------------------------------------------------------------
# 4. Ctrl-C.


CTRL_C = ('--config.train.num_steps=12', '--config.train.eval_every=4', '--config.train.checkpoint_every_steps=1',
          '--config.train.log_every=4')


def test_ctrl_c_saves_at_the_next_step_then_the_same_command_resumes(tmp_path):
  workdir = str(tmp_path / 'w')
  proc = start(workdir, *CTRL_C)
  try:
    wait_for(lambda: saved_steps(workdir) and saved_steps(workdir)[-1] >= 2, proc, 'a checkpoint')
    seen = saved_steps(workdir)[-1]
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=240)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == INTERRUPTED, err[-3000:]
  stopped = saved_steps(workdir)[-1]
  assert seen < stopped < 12, (seen, stopped)
  assert f'stopped by Ctrl-C (SIGINT) at step {stopped}' in err
  assert 'run the same command again' in err
  assert 'Traceback' not in err
  assert not os.path.exists(os.path.join(workdir, loop.RESULTS))

  again = run(workdir, *CTRL_C)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resumed from step {stopped}' in again.stdout
  assert saved_steps(workdir)[-1] == 12 and os.path.exists(os.path.join(workdir, loop.RESULTS))
  assert_each_row_once(workdir, [4, 8, 12], [4, 8, 12])


def test_second_ctrl_c_stops_at_once(tmp_path):
  """Validation over 750 batches makes each step last seconds: the second Ctrl-C, sent as soon as
  the first is acknowledged, lands well before the next step boundary."""
  workdir = str(tmp_path / 'w')
  proc = start(workdir, '--config.train.num_steps=20', '--config.train.eval_every=1',
               '--config.train.checkpoint_every_steps=1', '--config.data.num_val=3000',
               '--config.data.eval_batch_size=4')
  err = []

  def read():
    for line in proc.stderr:
      err.append(line)

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  try:
    wait_for(lambda: saved_steps(workdir), proc, 'a checkpoint')
    seen = saved_steps(workdir)
    os.kill(proc.pid, signal.SIGINT)
    deadline = time.time() + 60
    while not any('Ctrl-C again' in line for line in err):
      assert proc.poll() is None and time.time() < deadline, ''.join(err)[-3000:]
      time.sleep(0.005)
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait()
  reader.join(timeout=30)
  text = ''.join(err)
  assert proc.returncode == INTERRUPTED, (proc.returncode, text[-3000:])
  assert 'stopped at once by a second Ctrl-C' in text and 'stopped by' not in text
  assert 'Traceback' not in text
  assert saved_steps(workdir) == seen  # no checkpoint at the next step boundary
  assert not os.path.exists(os.path.join(workdir, loop.RESULTS))


# ----------------------------------------------------------------------------------------------
# 5. Bad input.


@pytest.mark.parametrize('batch_size', ['0', '-1'])
def test_bad_batch_size_is_one_line_at_once_and_leaves_no_run(tmp_path, batch_size):
  workdir = str(tmp_path / 'w')
  t0 = time.time()
  proc = run(workdir, f'--config.data.batch_size={batch_size}', timeout=120)
  elapsed = time.time() - t0
  assert proc.returncode in (1, 2), proc.stderr[-3000:]
  one_error_line(proc, 'data.batch_size', batch_size, status=proc.returncode)
  assert elapsed < 20, elapsed  # before any data is drawn or step compiled
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  leftovers = set(os.listdir(workdir)) if os.path.isdir(workdir) else set()
  assert not leftovers & {loop.HISTORY, loop.RESULTS, loop.PREDICTIONS}
  assert not [n for n in leftovers if n.startswith('events.out.tfevents')]
