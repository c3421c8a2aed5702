"""Multi-process settings, the SIGTERM watch, and (slow) two processes training together on localhost."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from mlb_jax import distributed, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_settings_from_flags_then_environment():
  env = {'JAX_COORDINATOR_ADDRESS': 'host0:1234', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'}
  assert distributed.settings(environ=env) == distributed.Settings('host0:1234', 2, 1)
  assert distributed.settings('host1:99', 4, 3, environ=env) == distributed.Settings('host1:99', 4, 3)
  assert distributed.settings(environ={}) is None
  assert distributed.settings(num_processes=1, process_id=0, environ={}) is None


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_processes=2, process_id=0), r"missing \['coordinator_address'\]"),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2),
     r'process_id 2 is not in \[0, num_processes=2\)'),
])
def test_settings_errors_name_the_problem(kwargs, message):
  with pytest.raises(ValueError, match=message):
    distributed.settings(**kwargs, environ={})


def test_preemption_watch_flags_sigterm_and_restores_the_previous_handler():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda *_: seen.append('previous'))
  try:
    with distributed.PreemptionWatch() as watch:
      assert not watch.requested(1)
      os.kill(os.getpid(), signal.SIGTERM)
      assert watch.requested(2)
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == ['previous']
  finally:
    signal.signal(signal.SIGTERM, previous)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_two_processes(workdir, num_steps, *extra):
  """Both processes' output (stdout and stderr together)."""
  port = free_port()
  command = [sys.executable, 'run.py', '--config=configs/synthetic.py:smoke', f'--workdir={workdir}',
             f'--config.train.num_steps={num_steps}', '--config.train.eval_every=4',
             '--config.train.log_every=2', f'--coordinator_address=localhost:{port}', '--num_processes=2', *extra]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen(command + [f'--process_id={i}'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out + err for out, err in outputs]


@pytest.mark.slow
def test_two_processes_train_resume_and_write_once(tmp_path):
  """jax.distributed on localhost (gloo CPU collectives): one device per process, one global batch."""
  workdir = str(tmp_path / 'w')
  run_two_processes(workdir, 4)
  state_dir = os.path.join(workdir, 'checkpoints', 'last', '4')
  assert sorted(os.listdir(os.path.join(state_dir, 'data_iter'))) == [
      'commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']
  logs = run_two_processes(workdir, 8, '--allow_changed=train.num_steps')  # the 4-step run extended
  assert all('resumed from step 4' in log for log in logs)
  history = [json.loads(line) for line in open(os.path.join(workdir, loop.HISTORY))]
  train_steps = [r['step'] for r in history if r['split'] == 'train']
  assert train_steps == [2, 4, 6, 8]  # process 0 alone writes the history
  results = json.load(open(os.path.join(workdir, loop.RESULTS)))
  assert set(results['test']) == {'fused', 'audio', 'video'}
