"""UMT (mlb_jax/balancing/umt.py): the distillation term by hand, the teacher configs, and the
prerequisite runs the loop trains, reuses and hands to the method (per seed)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from mlb_jax import balancing, build, checkpointing, loop
from mlb_jax.balancing import umt
from mlb_jax.balancing.method import LossInputs

PAIR = ('audio', 'video')


def smoke(**umt_fields):
  config = synthetic_config.get_config('method=umt,smoke')
  config.balancing.umt.teacher_epochs = 1
  for k, v in umt_fields.items():
    config.balancing.umt[k] = v
  return config


def test_feature_mse_worked_example():
  mse = umt.feature_mse(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]]))
  np.testing.assert_allclose(float(mse), 2.5)
  np.testing.assert_allclose(10.0 * float(mse), 25.0)


def test_feature_mse_has_no_gradient_into_the_teacher():
  t, h = jnp.array([[1.0, -1.0], [0.5, 2.0]]), jnp.array([[0.0, 1.0], [1.5, 0.0]])
  g_t, g_h = jax.grad(umt.feature_mse, argnums=(0, 1))(t, h)
  np.testing.assert_array_equal(np.asarray(g_t), 0.0)
  np.testing.assert_allclose(np.asarray(g_h), 2 * (np.asarray(h) - np.asarray(t)) / 4, rtol=1e-6)


def test_teacher_config_trains_one_head_and_selects_on_it():
  config = smoke()
  c = umt.teacher_config(config, 'video', 12)
  assert (c.method, c.loss.fused, c.loss.unimodal, dict(c.loss.per_modality)) == ('multiloss', 0.0, 0.0,
                                                                                  {'video': 1.0})
  assert (c.train.select_head, c.train.num_steps) == ('video', 12)
  assert config.method == 'umt' and config.train.select_head == 'fused'  # the run's own config is untouched


def test_settings_are_checked():
  ctx = balancing.MethodContext(PAIR, 4, 8, {'audio': 16, 'video': 16})
  for key, value in (('lam', -1.0), ('teacher_epochs', 0), ('end_epoch', -1)):
    config = smoke(**{key: value})
    with pytest.raises(ValueError, match=f'balancing.umt.{key}'):
      umt.make_umt(PAIR, config.balancing, ctx)


def test_loss_adds_lam_times_the_feature_mse_to_the_teacher():
  config = smoke(lam=3.0)
  exp = build.build(config)
  training = exp.training
  sample = exp.dataset.splits['train'][0]
  student = training.initial_state(sample, [0])
  teacher = training.initial_state(sample, [1])
  state = training.method.adopt(student, {f'teacher_{m}': teacher for m in PAIR})
  batch = {k: jnp.asarray(v) for k, v in next(iter(
      loop.common.eval_batches(exp.dataset.splits['train'], batch_size=8))).items() if k != 'mask'}
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  out, _ = training.model.apply(variables, batch, train=True, detach_unimodal=True, mutable=['batch_stats'],
                                rngs={'dropout': jax.random.key(0)})
  inputs = LossInputs(training.model, variables, batch, out, batch['label'], jnp.int32(0), jax.random.key(0),
                      training.loss_weights)
  objectives, _, metrics = training.method.loss(inputs, state.method_state)
  h_t = training.model.apply({'params': teacher.params, 'batch_stats': teacher.batch_stats}, batch, train=False,
                             method='encode')
  expected = {m: np.mean((np.asarray(h_t[m]) - np.asarray(out.features[m])) ** 2) for m in PAIR}
  for m in PAIR:
    np.testing.assert_allclose(float(metrics[f'umt_mse_{m}']), expected[m], rtol=1e-5)
    assert expected[m] > 0
  np.testing.assert_allclose(float(objectives['distill']), 3.0 * sum(expected.values()), rtol=1e-5)


def _params(workdir, kind, config):
  exp = build.build(config)
  mngr = checkpointing.manager(workdir, kind)
  try:
    state, _, _ = checkpointing.restore_latest(mngr, loop.initial_state([exp]))
  finally:
    mngr.close()
  return state


def check_teachers(config, workdir, results):
  """Each run's teachers trained in its prerequisites/ with its seed, and its checkpoint holds them."""
  teachers = {}
  for run_config, results_s in zip(loop.replica_configs(config), results):
    seed = run_config.seed
    run = workdir if config.num_seeds == 1 else os.path.join(workdir, f'seed_{seed}')
    assert results_s['method'] == 'umt'
    for m in PAIR:
      where = os.path.join(run, loop.PREREQUISITES, f'teacher_{m}')
      with open(os.path.join(where, loop.RESULTS)) as f:
        res = json.load(f)
      assert (res['method'], res['config']['train']['select_head'], res['config']['seed']) == ('multiloss', m, seed)
      teachers[seed, m] = _params(where, checkpointing.BEST, umt.teacher_config(run_config, m, 4)).params[m]['encoder']
    # the run's checkpoint carries its teachers: the best encoders of the teacher runs
    held = _params(run, checkpointing.LAST, run_config).method_state['params']
    for m in PAIR:
      jax.tree.map(np.testing.assert_array_equal, held[m]['encoder'], teachers[seed, m])
  return teachers


def test_teachers_train_first_and_are_reused(tmp_path):
  config = smoke()
  workdir = str(tmp_path / 'w')
  results = loop.train_and_evaluate(config, workdir)
  check_teachers(config, workdir, results)
  # a fresh main run reuses the finished teachers (no new training rows in their history)
  history = os.path.join(workdir, loop.PREREQUISITES, 'teacher_audio', loop.HISTORY)
  before = open(history).read().count('"split": "train"')
  assert before > 0
  for kind in (checkpointing.LAST, checkpointing.BEST):
    shutil.rmtree(checkpointing.directory(workdir, kind))
  again = loop.train_and_evaluate(config, workdir)
  assert open(history).read().count('"split": "train"') == before
  assert again[0]['test'] == results[0]['test']


@pytest.mark.slow
def test_teachers_of_several_seeds_train_per_seed(tmp_path):
  config = smoke()
  config.num_seeds = 2
  workdir = str(tmp_path / 'w')
  teachers = check_teachers(config, workdir, loop.train_and_evaluate(config, workdir))
  assert not np.allclose(np.asarray(jax.tree.leaves(teachers[0, 'audio'])[0]),
                         np.asarray(jax.tree.leaves(teachers[1, 'audio'])[0]))
