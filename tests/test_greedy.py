"""Greedy (mlb_jax/balancing/greedy.py) and its MMTM fusion (mlb_jax/models/fusion.py): the worked
example, the curation state machine over a scripted sequence, the fusion against its formula, the
running-mean gates and their replacement, no NaN from zero norms, the two-modality bound, the
curation switch reaching the train step, and a 2-step smoke training."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from configs.lib import base
from mlb_jax import balancing, build, loop, losses, models, optim, steps
from mlb_jax.balancing import greedy
from mlb_jax.balancing.method import GradInputs, MethodContext
from mlb_jax.models import fusion as fusion_heads
from mlb_jax.train_state import make_init

AV = ('audio', 'video')
B, C = 4, 3


def greedy_config(**overrides):
  cfg = base.get_config().balancing
  cfg.greedy.update(overrides)
  return cfg


def make(cfg=None, modalities=AV, steps_per_epoch=4):
  ctx = MethodContext(modalities, steps_per_epoch, C, {m: 6 for m in modalities})
  return greedy.make_greedy(modalities, cfg or greedy_config(), ctx)


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


# ---------------------------------------------------------------- the speed measure and the worked example

def test_worked_example():
  # bypass (gn, wn) = (0.04, 4), (0.01, 4); main (1, 100), (0.4, 80)
  grad_norms = (jnp.array([0.04, 0.01]), jnp.array([1.0, 0.4]))
  param_norms = (jnp.array([4.0, 4.0]), jnp.array([100.0, 80.0]))
  new = greedy.greedy_update(greedy.init_state(), grad_norms, param_norms, True, 0.01, 5)
  np.testing.assert_allclose(new['bypass'], [0.01, 0.0025], rtol=1e-6)
  np.testing.assert_allclose(new['main'], [0.01, 0.005], rtol=1e-6)
  np.testing.assert_allclose(new['bdr'], [0.0, -0.30103], atol=1e-6)
  np.testing.assert_allclose(new['d'], 0.30103, atol=1e-6)
  assert (int(new['curating']), int(new['counter']), int(new['caring'])) == (1, 0, 0)
  # the same sums before the starting epoch: accumulated, no curation
  locked = greedy.greedy_update(greedy.init_state(), grad_norms, param_norms, False, 0.01, 5)
  np.testing.assert_allclose(locked['d'], 0.30103, atol=1e-6)
  assert int(locked['curating']) == 0
  # the mirrored example cares for modality 1
  mirrored = greedy.greedy_update(greedy.init_state(), tuple(x[::-1] for x in grad_norms),
                                  tuple(x[::-1] for x in param_norms), True, 0.01, 5)
  np.testing.assert_allclose(mirrored['d'], -0.30103, atol=1e-6)
  assert (int(mirrored['curating']), int(mirrored['caring'])) == (1, 1)


def test_groups_share_the_squeeze_and_leave_out_the_probe_heads():
  full = lambda v, n=1: {'kernel': jnp.full((n,), v)}
  tree = {'audio': {'encoder': {'Dense_0': full(1.0, 2)}, 'head': full(100.0)},
          'video': {'encoder': {'Dense_0': full(2.0)}, 'head': full(100.0)},
          'fusion': {'squeeze': full(3.0), 'excite_audio': full(4.0), 'excite_video': full(5.0),
                     'classifier_audio': full(6.0), 'classifier_video': full(7.0)}}
  bypass, main = greedy.group_norms(tree, AV)
  np.testing.assert_allclose(bypass, [9 + 16, 9 + 25])
  np.testing.assert_allclose(main, [2 + 36, 4 + 49])
  _, encoders_only = greedy.group_norms(tree, AV, main_classifier=False)
  np.testing.assert_allclose(encoders_only, [2, 4])


# ---------------------------------------------------------------- the curation state machine

def test_state_machine_over_a_scripted_sequence():
  eps, window = 0.01, 3
  state = (False, 0, 0)
  script = [  # (d, active) -> (curating, counter, caring) after the step
      (0.5, False, (False, 0, 0)),     # before the starting epoch: never curates
      (0.005, True, (False, 0, 0)),    # |d| <= eps: stays out
      (-0.02, True, (True, 0, 1)),     # start, caring 1 (BDR_0 < BDR_1)
      (0.9, True, (True, 1, 1)),       # curating: d is not looked at, the cared modality stays
      (0.0, True, (True, 2, 1)),
      (0.9, True, (False, 3, 1)),      # counter reaches W: leaves (caring kept, unused)
      (0.0, True, (False, 3, 0)),      # out, |d| <= eps: caring 0
      (0.02, True, (True, 0, 0)),      # start again, caring 0
  ]
  seen = []
  for d, active, _ in script:
    out = greedy.curation_update(*state, jnp.float32(d), active, eps, window)
    state = tuple(x.item() for x in out)
    seen.append((bool(state[0]), int(state[1]), int(state[2])))
  assert seen == [expected for *_, expected in script]


def test_sums_and_d_freeze_while_curating():
  state = dict(greedy.init_state(), bypass=jnp.array([0.1, 0.2]), main=jnp.array([0.1, 0.1]),
               bdr=jnp.array([0.0, 0.30103]), d=jnp.float32(-0.30103), curating=jnp.int32(1),
               counter=jnp.int32(0), caring=jnp.int32(1))
  norms = (jnp.array([1.0, 1.0]), jnp.array([1.0, 1.0]))
  new = greedy.greedy_update(state, norms, norms, True, 0.01, 2)
  for key in ('bypass', 'main', 'bdr', 'd'):
    np.testing.assert_array_equal(new[key], state[key])
  assert (int(new['curating']), int(new['counter']), int(new['caring'])) == (1, 1, 1)
  new = greedy.greedy_update(new, norms, norms, True, 0.01, 2)   # W = 2 reached: leaves
  assert int(new['curating']) == 0
  new = greedy.greedy_update(new, norms, norms, True, 0.01, 2)   # out again: the sums move
  np.testing.assert_allclose(new['bypass'], [1.1, 1.2], rtol=1e-6)
  np.testing.assert_allclose(new['main'], [1.1, 1.1], rtol=1e-6)


def test_curate_mask_and_model_args():
  np.testing.assert_array_equal(greedy.curate_mask(True, 1), [0.0, 1.0])
  np.testing.assert_array_equal(greedy.curate_mask(True, 0), [1.0, 0.0])
  np.testing.assert_array_equal(greedy.curate_mask(False, 1), [0.0, 0.0])
  method = make()
  state = dict(method.init_state({}), curating=jnp.int32(1), caring=jnp.int32(1))
  np.testing.assert_array_equal(method.model_args(state)['curate'], [0.0, 1.0])


# ---------------------------------------------------------------- no NaN

def test_zero_norms_give_no_nan_and_no_curation():
  np.testing.assert_array_equal(greedy.norm_ratio(jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0])), [0.0, 0.0])
  bdr, d = greedy.balance_ratios(jnp.array([0.0, 0.1]), jnp.array([0.2, 0.1]))   # log10(0) is avoided
  np.testing.assert_array_equal(bdr, [0.0, 0.0])
  assert float(d) == 0.0
  bdr, d = greedy.balance_ratios(jnp.array([0.2, 0.1]), jnp.array([0.1, 0.0]))   # BDR_1 undefined: d = 0
  np.testing.assert_allclose(bdr, [0.30103, 0.0], atol=1e-6)
  assert float(d) == 0.0
  method = make(greedy_config(starting_epoch=0))
  params = {'audio': {'encoder': {'k': jnp.zeros(3)}, 'head': {'k': jnp.zeros(2)}},
            'video': {'encoder': {'k': jnp.ones(3)}, 'head': {'k': jnp.zeros(2)}},
            'fusion': {'squeeze': {'k': jnp.zeros(2)}, 'excite_audio': {'k': jnp.zeros(2)},
                       'excite_video': {'k': jnp.zeros(2)}, 'classifier_audio': {'k': jnp.zeros(2)},
                       'classifier_video': {'k': jnp.zeros(2)}}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  with jax.debug_nans(True):   # no NaN anywhere, untaken branches included
    hook = jax.jit(method.gradients)
    state = method.init_state({})
    for step in range(3):
      grads, state, metrics = hook(zero_grads, GradInputs(params, jnp.int32(step), jax.random.key(0)), state)
      jax.block_until_ready(state)
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves((state, metrics)))
  assert float(metrics['greedy_curating']) == 0.0 and float(metrics['greedy_d']) == 0.0
  assert set(metrics) == {'greedy_d', 'greedy_curating', 'greedy_caring', 'greedy_bdr_audio', 'greedy_bdr_video'}


# ---------------------------------------------------------------- the MMTM fusion

def fusion_inputs(seed=0, b=B):
  rng = np.random.default_rng(seed)
  return {'audio': jnp.asarray(rng.standard_normal((b, 6)), jnp.float32),
          'video': jnp.asarray(rng.standard_normal((b, 4)), jnp.float32)}


def by_hand(p, feats):
  """(gates {m: [B, D_m]}, classifier logits {m: [B, C]}) from the parameters."""
  cat = np.concatenate([np.asarray(feats[m]) for m in AV], -1)
  s = np.maximum(cat @ p['squeeze']['kernel'] + p['squeeze']['bias'], 0)
  gates = {m: sigmoid(s @ p[f'excite_{m}']['kernel'] + p[f'excite_{m}']['bias']) for m in AV}
  x = {m: (np.asarray(feats[m]) * gates[m]) @ p[f'classifier_{m}']['kernel'] + p[f'classifier_{m}']['bias']
       for m in AV}
  return gates, x


def test_mmtm_matches_its_formula_and_decomposes():
  head = fusion_heads.MMTMFusion(AV, C, ratio=4)
  feats = fusion_inputs()
  variables = head.init(jax.random.key(0), feats, train=False)
  p = jax.device_get(variables['params'])
  assert p['squeeze']['kernel'].shape == (10, 5)   # int(2 * 10 / 4)
  assert p['excite_audio']['kernel'].shape == (5, 6) and p['excite_video']['kernel'].shape == (5, 4)
  assert p['classifier_audio']['kernel'].shape == (6, C) and p['classifier_video']['kernel'].shape == (4, C)
  contributions = head.apply(variables, feats, method='contributions')
  fused = head.apply(variables, feats, train=False)
  _, x = by_hand(p, feats)
  for m in AV:
    np.testing.assert_allclose(contributions[m], x[m] / 2, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fused, (x['audio'] + x['video']) / 2, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fused, contributions['audio'] + contributions['video'], rtol=1e-6, atol=1e-6)
  stats = jax.device_get(variables['batch_stats'])
  assert int(stats['gate_count']) == 0 and not np.any(stats['gate_mean_audio'])   # init updates nothing


def test_running_mean_gates_by_hand_and_train_only():
  head = fusion_heads.MMTMFusion(AV, C)
  f1, f2 = fusion_inputs(1), fusion_inputs(2, b=6)
  variables = head.init(jax.random.key(0), f1, train=False)
  p = variables['params']
  g1, _ = by_hand(jax.device_get(p), f1)
  g2, _ = by_hand(jax.device_get(p), f2)
  _, new = head.apply(variables, f1, train=True, mutable=['batch_stats'])
  stats = new['batch_stats']
  _, new = head.apply({'params': p, 'batch_stats': stats}, f2, train=True, mutable=['batch_stats'])
  stats = jax.device_get(new['batch_stats'])
  assert int(stats['gate_count']) == 2
  for m in AV:   # the mean of the two batch means (batches of different size weigh the same)
    np.testing.assert_allclose(stats[f'gate_mean_{m}'], (g1[m].mean(0) + g2[m].mean(0)) / 2, rtol=1e-5)
  # an evaluation forward leaves them, even with the collection mutable
  _, same = head.apply({'params': p, 'batch_stats': stats}, f1, train=False, mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(same['batch_stats']), stats)


def test_curate_replaces_the_gate_by_its_running_mean():
  head = fusion_heads.MMTMFusion(AV, C)
  feats = fusion_inputs(3)
  variables = head.init(jax.random.key(0), feats, train=False)
  p = jax.device_get(variables['params'])
  mean_a = np.linspace(0.1, 0.9, 6).astype(np.float32)
  stats = dict(jax.device_get(variables['batch_stats']), gate_mean_audio=mean_a, gate_count=np.int32(3))
  apply = jax.jit(lambda curate: head.apply({'params': p, 'batch_stats': stats}, feats, method='contributions',
                                            curate=curate))
  plain, curated = apply(jnp.array([0.0, 0.0])), apply(jnp.array([1.0, 0.0]))
  assert apply._cache_size() == 1   # one compilation for curation on and off
  gates, x = by_hand(p, feats)
  expected_a = ((np.asarray(feats['audio']) * mean_a) @ p['classifier_audio']['kernel']
                + p['classifier_audio']['bias']) / 2
  np.testing.assert_allclose(curated['audio'], expected_a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(plain['audio'], x['audio'] / 2, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(curated['audio']) - np.asarray(plain['audio'])).max() > 1e-3
  np.testing.assert_allclose(curated['video'], plain['video'], rtol=1e-6)   # the other gate is kept
  # in a train forward the mean used includes the current batch, as the original
  out, new = head.apply({'params': p, 'batch_stats': stats}, feats, train=True, curate=jnp.array([0.0, 1.0]),
                        mutable=['batch_stats'])
  mean_v = jax.device_get(new['batch_stats'])['gate_mean_video']
  np.testing.assert_allclose(mean_v, (gates['video'].mean(0) + 3 * 0.0) / 4, rtol=1e-5)
  expected_v = ((np.asarray(feats['video']) * mean_v) @ p['classifier_video']['kernel']
                + p['classifier_video']['bias']) / 2
  np.testing.assert_allclose(out, x['audio'] / 2 + expected_v, rtol=1e-5, atol=1e-6)


def test_ratio_too_large_is_refused():
  head = fusion_heads.MMTMFusion(AV, C, ratio=100)
  with pytest.raises(ValueError, match='model.mmtm.ratio'):
    head.init(jax.random.key(0), fusion_inputs(), train=False)


# ---------------------------------------------------------------- settings and bounds

def test_three_modalities_and_other_fusions_are_refused():
  method = make(modalities=('audio', 'video', 'text'))
  with pytest.raises(ValueError, match="method 'greedy' is defined for exactly 2 modalities, got 3"):
    balancing.check_method(method, ('audio', 'video', 'text'), balancing.resolve_fusion(method, 'auto'))
  assert balancing.resolve_fusion(method, 'auto') == 'mmtm'
  balancing.check_method(make(), AV, 'mmtm')
  with pytest.raises(ValueError, match="'greedy' is not defined with model.fusion 'late_linear'"):
    balancing.check_method(make(), AV, 'late_linear')


@pytest.mark.parametrize('key,value', [('eps', -1.0), ('window', 0), ('starting_epoch', -1), ('loss', 'mean')])
def test_invalid_settings_name_their_key(key, value):
  with pytest.raises(ValueError, match=f'balancing.greedy.{key}'):
    make(greedy_config(**{key: value}))


# ---------------------------------------------------------------- the train step

MODEL_SHAPES = {'audio': (10,), 'video': (7,)}


def step_setup(loss='branches'):
  cfg = base.get_config().model
  cfg.encoder, cfg.fusion, cfg.features, cfg.mlp.hidden = 'mlp', 'mmtm', 8, (8,)
  model = models.build_model(cfg, AV, MODEL_SHAPES, C)
  method = make(greedy_config(starting_epoch=0, loss=loss))
  tx = optim.make_optimizer(base.get_config().optimizer,
                            functools.partial(optim.modality_labels, heads_scaled=False, kernels_only=False),
                            'gradients')
  rng = np.random.default_rng(0)
  batch = {m: jnp.asarray(rng.standard_normal((8,) + s), jnp.float32) for m, s in MODEL_SHAPES.items()}
  batch['label'] = jnp.arange(8) % C
  state = make_init(model, tx, method)({m: batch[m] for m in AV}, jax.random.key(0))
  weights = {'fused': 1.0, 'audio': 1.0, 'video': 1.0}
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, method=method, loss_weights=weights))
  return model, state, step, batch


def test_the_curation_switch_reaches_the_train_forward():
  model, state, step, batch = step_setup()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}

  def branch_losses(curate):
    out, _ = model.apply(variables, batch, train=True, curate=curate, mutable=['batch_stats'])
    return [float(losses.cross_entropy(2 * out.contributions[m], batch['label'])) for m in AV]

  new, metrics = step(state, batch)
  np.testing.assert_allclose([metrics['loss_branch_audio'], metrics['loss_branch_video']],
                             branch_losses(jnp.zeros(2)), rtol=1e-5)
  assert int(new.batch_stats['fusion']['gate_count']) == 1
  assert {'greedy_bdr_audio', 'greedy_bdr_video', 'greedy_curating', 'greedy_caring'} <= set(metrics)
  curating = state.replace(method_state=dict(state.method_state, curating=jnp.int32(1), caring=jnp.int32(1)))
  new, metrics = step(curating, batch)
  expected = branch_losses(jnp.array([0.0, 1.0]))
  np.testing.assert_allclose([metrics['loss_branch_audio'], metrics['loss_branch_video']], expected, rtol=1e-5)
  assert abs(expected[1] - branch_losses(jnp.zeros(2))[1]) > 1e-4   # the switch changes the video branch
  assert step._cache_size() == 1
  assert (int(new.method_state['curating']), int(new.method_state['counter'])) == (1, 1)
  # evaluation never curates: it equals the plain inference forward
  logits = steps.eval_step(curating, batch, model=model)
  plain = model.apply(variables, batch, train=False)
  np.testing.assert_allclose(logits['fused'], plain.logits['fused'], rtol=1e-6)


def test_fused_loss_option_trains_on_the_fused_logits():
  model, state, step, batch = step_setup('fused')
  _, metrics = step(state, batch)
  assert 'loss_branch_audio' not in metrics
  np.testing.assert_allclose(metrics['loss'], metrics['loss_fused'] + metrics['loss_audio'] + metrics['loss_video'],
                             rtol=1e-5)


def test_smoke_training(tmp_path):
  config = synthetic_config.get_config('method=greedy,smoke')
  workdir = str(tmp_path / 'w')
  results = loop.train_and_evaluate(config, workdir)
  assert results[0]['method'] == 'greedy'
  assert all(np.isfinite(d['loss']) for d in results[0]['test'].values())
  with open(os.path.join(workdir, loop.HISTORY)) as f:
    train = [r for r in map(json.loads, f) if r['split'] == 'train']
  assert [r['step'] for r in train] == [1, 2]
  assert all(np.isfinite(r['loss']) and np.isfinite(r['greedy_bdr_audio']) for r in train), train
  assert all(r['greedy_curating'] == 0.0 for r in train)   # starting epoch 1: the smoke run stays in epoch 0
