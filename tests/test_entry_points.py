"""Every method through every entry point, as a user runs it (slow: one process per run).

    python run.py --config=configs/synthetic.py:method=<m>,smoke
    python run.py --config=configs/arrays.py:method=<m>,smoke --config.data.path=<2- or 3-modality .npz>
    python run.py --config=configs/cremad_mlb.py:method=<m>,smoke

A method defined for two modalities only refuses the 3-modality file with one `error:` line and exit
status 1, before anything is written.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlb_jax import balancing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = sorted(balancing.METHODS)
pytestmark = pytest.mark.slow


def run(*args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2'}
  return subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def npz(path, modalities):
  rng = np.random.default_rng(0)
  n = 48
  label = (np.arange(n) % 3).astype(np.int64)
  arrays = {m: (rng.normal(size=(n, 6 + i)) + (i == 0) * label[:, None]).astype(np.float32)
            for i, m in enumerate(modalities)}
  np.savez(path, label=label, split=np.array([0] * 32 + [1] * 8 + [2] * 8), **arrays)
  return str(path)


def check_trained(proc, workdir, method):
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  assert results['method'] == method
  assert all(np.isfinite(d['loss']) for d in results['test'].values()), results['test']
  return results


@pytest.mark.parametrize('method', METHODS)
def test_synthetic_and_cremad_configs(method, tmp_path):
  for config in ('synthetic', 'cremad_mlb'):
    workdir = str(tmp_path / config)
    proc = run(f'--config=configs/{config}.py:method={method},smoke', f'--workdir={workdir}')
    check_trained(proc, workdir, method)


@pytest.mark.parametrize('method', METHODS)
def test_arrays_with_two_and_three_modalities(method, tmp_path):
  two = npz(tmp_path / 'two.npz', ('audio', 'video'))
  three = npz(tmp_path / 'three.npz', ('audio', 'video', 'text'))
  workdir = str(tmp_path / 'two')
  proc = run(f'--config=configs/arrays.py:method={method},smoke', f'--config.data.path={two}',
             f'--workdir={workdir}')
  check_trained(proc, workdir, method)
  workdir = str(tmp_path / 'three')
  proc = run(f'--config=configs/arrays.py:method={method},smoke', f'--config.data.path={three}',
             f'--workdir={workdir}')
  if not defined_for_three(method):
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'modalities' in errors[0], proc.stderr[-2000:]
    assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  else:
    results = check_trained(proc, workdir, method)
    assert set(results['test']) >= {'fused', 'audio', 'video', 'text'}


def defined_for_three(method):
  try:
    made = balancing.METHODS[method](('audio', 'video', 'text'), _balancing_config(), _context())
  except ValueError:
    return False
  return made.max_modalities is None or made.max_modalities >= 3


def _balancing_config():
  from configs import arrays
  return arrays.get_config('smoke').balancing


def _context():
  return balancing.MethodContext(('audio', 'video', 'text'), 4, 3, {'audio': 16, 'video': 16, 'text': 16})
