"""Data parallel: 8 devices match 1 (params, BatchNorm statistics, metrics); checkpoints move between counts.

The 8 devices are XLA's host-platform devices, which exist only if the flag is
set before JAX starts: the 8-device halves run in a child process
(`equivalence_report`, `checkpoint_report`), the 1-device halves in the test process.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from configs import synthetic
from data_pipelines import common
from mlb_jax import build, loop, sharding
from mlb_jax.build import Experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8
STEPS = 3
TOLERANCE = 1e-5


def smoke_config(method='mlb'):
  return synthetic.get_config(f'method={method},smoke')  # batch 16, BatchNorm in the video frames encoder


def max_abs_diff(a, b) -> float:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(leaves_a, leaves_b))


def run_steps(exp, mesh, batches):
  """The loop's own pieces: the build's state (created replicated on `mesh`), batches split on `data`,
  one jitted step."""
  training = build.build_training(exp.config, exp.training.spec, mesh=mesh)
  assert training.mesh is mesh
  state = loop.initial_state([Experiment(exp.config, exp.dataset, training)])
  for x in jax.tree.leaves(state):  # placed by the build's init: no replicate() needed
    assert x.sharding.is_fully_replicated and x.sharding.num_devices == mesh.devices.size
  history = []
  for batch in batches:
    placed = training.place_batch([batch])
    assert placed['label'].sharding.num_devices == mesh.devices.size
    state, metrics = training.train_step(state, placed)
    history.append(metrics)
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))
  eval_batch = next(common.eval_batches(exp.dataset.splits['val'], batch_size=exp.config.data.eval_batch_size))
  eval_batch.pop(common.MASK)
  logits = training.eval_step(state, eval_batch)  # a host batch; the build shards it
  return jax.device_get((state.params, state.batch_stats, state.opt_state, history, logits))


def equivalence_report() -> dict:
  """In the 8-device child: max |8 devices - 1 device| after STEPS steps, per method."""
  assert len(jax.devices()) == DEVICES, jax.devices()
  report = {}
  try:
    sharding.check_batch_size(12, sharding.make_mesh(), 'data.batch_size')
  except ValueError as e:
    report['batch_error'] = str(e)
  mesh_all, mesh_one = sharding.make_mesh(), sharding.make_mesh(jax.devices()[:1])
  for method in ('joint', 'mlb'):
    exp = build.build(smoke_config(method))
    it = common.train_batches(exp.dataset.splits['train'], batch_size=exp.config.data.batch_size, seed=0)
    batches = [next(it) for _ in range(STEPS)]
    many, one = run_steps(exp, mesh_all, batches), run_steps(exp, mesh_one, batches)
    names = ('params', 'batch_stats', 'opt_state', 'metrics', 'eval_logits')
    report[method] = {name: max_abs_diff(a, b) for name, a, b in zip(names, many, one)}
    report[method]['batch_stats_leaves'] = len(jax.tree.leaves(many[1]))
    report[method]['metric_names'] = sorted(many[3][0])
  return report


def checkpoint_report(one_device_workdir: str, out_dir: str) -> dict:
  """In the 8-device child: evaluates the 1-device checkpoint, then trains and evaluates on 8 devices."""
  assert len(jax.devices()) == DEVICES, jax.devices()
  config = smoke_config()
  os.makedirs(out_dir, exist_ok=True)
  [restored] = loop.evaluate(config, os.path.join(out_dir, 'eval_of_one'), checkpoint_dir=one_device_workdir)
  [trained] = loop.train_and_evaluate(config, os.path.join(out_dir, 'eight'))
  return {'restored_from_one': restored['test'], 'trained_on_eight': trained['test']}


def child_env(devices: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  if jax.config.jax_compilation_cache_dir:  # the tests' shared compilation cache (conftest.py)
    env.update(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


def in_eight_device_child(function: str, *args: str) -> dict:
  """`tests.test_sharding.<function>(*args)` run in a child process with 8 devices; its JSON result."""
  code = f'import json, sys; from tests import test_sharding as t; print(json.dumps(t.{function}(*sys.argv[1:])))'
  proc = subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT, env=child_env(DEVICES),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_metrics_close(a, b):
  for head in a:
    for key in ('accuracy', 'ece', 'loss'):
      np.testing.assert_allclose(a[head][key], b[head][key], atol=TOLERANCE, err_msg=f'{head}/{key}')


def test_eight_devices_match_one_device_for_joint_and_mlb():
  report = in_eight_device_child('equivalence_report')
  for method in ('joint', 'mlb'):
    diffs = report[method]
    assert diffs['batch_stats_leaves'] > 0  # the video encoder's BatchNorm: its statistics are global
    assert 'score_audio' in diffs['metric_names'] and 'acc_fused' in diffs['metric_names']
    for name in ('params', 'batch_stats', 'opt_state', 'metrics', 'eval_logits'):
      assert diffs[name] < TOLERANCE, (method, name, diffs[name])
  assert 'data.batch_size=12' in report['batch_error'] and 'device count 8' in report['batch_error']


def test_checkpoints_restore_from_eight_devices_on_one_and_back(tmp_path):
  [one] = loop.train_and_evaluate(smoke_config(), str(tmp_path / 'one'))
  one = one['test']
  report = in_eight_device_child('checkpoint_report', str(tmp_path / 'one'), str(tmp_path / 'child'))
  assert_metrics_close(report['restored_from_one'], one)
  [results] = loop.evaluate(smoke_config(), str(tmp_path / 'eval_of_eight'),
                            checkpoint_dir=str(tmp_path / 'child' / 'eight'))
  assert_metrics_close(results['test'], report['trained_on_eight'])
  assert results['checkpoint'].endswith(os.path.join('checkpoints', 'best', str(results['best_step'])))


def test_one_device_mesh():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == (sharding.DATA,)
  sharding.check_batch_size(16, mesh, 'data.batch_size')
