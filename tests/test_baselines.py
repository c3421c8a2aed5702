"""Baselines pinned against hand-computed values (docs/methods.md, one section per method), plus short
training runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.lib import base
from configs import synthetic as synthetic_config
from mlb_jax import balancing, build, loop, optim
from mlb_jax.balancing import agm, mslr, ogm, pmr
from mlb_jax.models.fusion import MMCosineFusion
from mlb_jax.train_state import TrainState

MODALITIES = ('audio', 'video')


def balancing_config():
  return base.get_config().balancing


def context(steps_per_epoch=4, modalities=MODALITIES, num_classes=3, dim=4):
  return balancing.MethodContext(tuple(modalities), steps_per_epoch, num_classes, {m: dim for m in modalities})


def fake_train_state(method_state):
  return TrainState(step=jnp.int32(0), params={}, batch_stats={}, opt_state=(), method_state=method_state,
                    rng=jax.random.key(0))

# --- OGM / OGM-GE -----------------------------------------------------------------------


def test_ogm_slows_only_the_leading_modality():
  k = ogm.ogm_coefficients(jnp.array([6.0, 3.0]), alpha=0.8)   # rho_a = 2, rho_v = 0.5
  np.testing.assert_allclose(k, [1 - math.tanh(0.8 * 2.0), 1.0], rtol=1e-6)
  k = ogm.ogm_coefficients(jnp.array([2.0, 5.0]), alpha=0.5)   # rho_v = 2.5
  np.testing.assert_allclose(k, [1.0, 1 - math.tanh(0.5 * 2.5)], rtol=1e-6)
  np.testing.assert_allclose(ogm.ogm_coefficients(jnp.array([3.0, 3.0]), alpha=0.8), [1.0, 1.0])


def test_ogm_three_modalities_compare_with_the_mean_of_the_others():
  s = jnp.array([6.0, 2.0, 4.0])   # rho = 6/3, 2/5, 4/4
  np.testing.assert_allclose(ogm.ogm_ratios(s), [2.0, 0.4, 1.0], rtol=1e-6)
  np.testing.assert_allclose(ogm.ogm_coefficients(s, alpha=1.0), [1 - math.tanh(2.0), 1.0, 1.0], rtol=1e-6)


def test_ogm_method_uses_sum_scores_and_its_window():
  cfg = balancing_config()
  cfg.ogm.alpha, cfg.ogm.start_epoch, cfg.ogm.end_epoch = 0.8, 2, 3   # one step per epoch: steps 2, 3
  method = ogm.make_ogm(MODALITIES, cfg, context(steps_per_epoch=1))
  logits = {'audio': jnp.array([[5.0, 0.0], [5.0, 0.0]]), 'video': jnp.zeros((2, 2))}
  labels = jnp.array([0, 0])
  p = 1 / (1 + math.exp(-5.0))
  for step, active in [(1, False), (2, True), (3, True), (4, False)]:
    inputs = balancing.StepInputs(logits, labels, jnp.int32(step), jax.random.key(0))
    scales, _, metrics = method.scales(inputs, ())
    np.testing.assert_allclose(metrics['score_audio'], 2 * p, rtol=1e-6)   # a sum, not a mean
    expected = 1 - math.tanh(0.8 * (2 * p) / 1.0) if active else 1.0
    np.testing.assert_allclose(scales['audio'], expected, rtol=1e-6)
    np.testing.assert_allclose(scales['video'], 1.0)


def test_ogm_ge_noise_follows_the_unscaled_gradient_std_and_leaves_fusion_alone():
  labels = optim.modality_labels
  tx = optim.scale_by_modality(labels)
  rng = np.random.default_rng(0)
  updates = {'audio': {'w': jnp.asarray(rng.standard_normal((200, 100)) * 3.0, jnp.float32)},
             'video': {'w': jnp.asarray(rng.standard_normal((200, 100)), jnp.float32)},
             'fusion': {'w': jnp.ones((4, 4))}}
  scales = {'audio': jnp.float32(0.5), 'video': jnp.float32(1.0)}
  out, _ = tx.update(updates, tx.init(updates), modality_scales=scales, noise_key=jax.random.key(1),
                     noise_scale=jnp.float32(1.0))
  noise_a = out['audio']['w'] - 0.5 * updates['audio']['w']
  noise_v = out['video']['w'] - updates['video']['w']
  np.testing.assert_allclose(np.std(noise_a), np.std(updates['audio']['w']), rtol=0.03)
  np.testing.assert_allclose(np.std(noise_v), np.std(updates['video']['w']), rtol=0.03)
  assert abs(float(np.corrcoef(np.ravel(noise_a), np.ravel(noise_v))[0, 1])) < 0.02  # independent draws
  np.testing.assert_array_equal(out['fusion']['w'], updates['fusion']['w'])
  silent, _ = tx.update(updates, tx.init(updates), modality_scales=scales, noise_key=jax.random.key(1),
                        noise_scale=jnp.float32(0.0))
  np.testing.assert_allclose(silent['audio']['w'], 0.5 * updates['audio']['w'])


# --- MSLR -------------------------------------------------------------------------------


def mslr_context(epoch, accuracy, calls):
  """An EpochContext whose validation gives `accuracy` = (acc_audio, acc_video) to the contribution heads."""
  def evaluate(state, split, heads):
    del state
    calls.append((epoch, split, list(heads)))
    return {h: {'accuracy': a, 'ece': 0.0, 'loss': 1.0} for h, a in zip(heads, accuracy)}

  def encode(*args):
    raise AssertionError('MSLR encodes nothing')

  return balancing.EpochContext(epoch=epoch, step=4 * epoch, steps_per_epoch=4, num_classes=3, seed=0,
                                evaluate=evaluate, encode=encode, held_out=None, model=None)


def test_mslr_ratio_after_an_accuracy_history():
  cfg = balancing_config()
  cfg.mslr.initial, cfg.mslr.keep_epochs = {'audio': 0.9, 'video': 1.1}, 2
  method = mslr.make_mslr(MODALITIES, cfg, context())
  train_state = fake_train_state(method.init_state({}))
  calls = []
  # epoch 0 starts with nothing to read: no evaluation, nothing changes
  train_state = method.epoch_update(mslr_context(0, None, calls), train_state)
  assert calls == []
  np.testing.assert_allclose(train_state.method_state.ratios, [1.0, 1.0])
  history = [(0.50, 0.40), (0.60, 0.40), (0.70, 0.45), (0.60, 0.50)]   # after epochs 0..3
  for epoch, acc in enumerate(history, start=1):
    train_state = method.epoch_update(mslr_context(epoch, acc, calls), train_state)
    assert calls[-1] == (epoch, 'val', ['contribution_audio', 'contribution_video'])
    if epoch <= 2:   # e <= K: ratio 1
      np.testing.assert_allclose(train_state.method_state.ratios, [1.0, 1.0])
  assert len(calls) == 4
  state = train_state.method_state
  # epoch 3: acc (0.70, 0.45) / mean of (0.50, 0.40), (0.60, 0.40) = (0.55, 0.40)
  # epoch 4: acc (0.60, 0.50) / mean of (0.60, 0.40), (0.70, 0.45) = (0.65, 0.425)
  np.testing.assert_allclose(state.ratios, [0.60 / 0.65, 0.50 / 0.425], rtol=1e-6)
  inputs = balancing.StepInputs({'audio': jnp.zeros((2, 3)), 'video': jnp.zeros((2, 3))},
                                jnp.array([0, 1]), jnp.int32(0), jax.random.key(0))
  scales, _, _ = method.scales(inputs, state)
  np.testing.assert_allclose([scales['audio'], scales['video']], [0.9 * 0.60 / 0.65, 1.1 * 0.50 / 0.425],
                             rtol=1e-6)


def test_mslr_epoch_three_exactly():
  state = mslr.MSLRState(jnp.zeros((2, 2)), jnp.int32(0), jnp.ones(2))
  for epoch, acc in enumerate([(0.5, 0.4), (0.6, 0.4), (0.7, 0.45)], start=1):
    state = mslr.mslr_epoch_update(state, np.array(acc, np.float32), epoch)
  np.testing.assert_allclose(state.ratios, [0.70 / 0.55, 0.45 / 0.40], rtol=1e-6)
  assert int(state.stored) == 3


def test_mslr_rejects_unknown_modalities():
  cfg = balancing_config()
  cfg.mslr.initial = {'text': 1.0}
  with pytest.raises(ValueError, match=r"unknown modalities \['text'\]"):
    mslr.make_mslr(MODALITIES, cfg, context())


# --- AGM --------------------------------------------------------------------------------


def test_agm_contributions_of_a_known_fusion():
  # F(f_a, f_v) = 2 f_a + 3 f_v + 1; zeroed features f_a0 = f_v0 = 0.5
  fa, fv = jnp.array([[1.0]]), jnp.array([[2.0]])
  fuse = lambda a, v: 2 * a + 3 * v + 1
  z, z0v, za0 = fuse(fa, fv), fuse(0.5, fv), fuse(fa, 0.5)
  z_a, z_v = agm.agm_contributions(z, z0v, za0)
  # z = 9, z0v = 8, za0 = 4.5: z_a = (9 - 8 + 4.5) / 2, z_v = (9 - 4.5 + 8) / 2
  np.testing.assert_allclose(z_a, [[2.75]])
  np.testing.assert_allclose(z_v, [[6.25]])
  np.testing.assert_allclose(z_a + z_v, z)


def test_agm_coefficients_and_running_means():
  losses = jnp.array([0.5, 1.0])
  mean = jnp.array([0.7, 0.9])
  k, ratios, new_mean = agm.agm_coefficients(losses, mean, jnp.int32(3), alpha=1.5)
  r_a, rbar_a = math.exp(1.0 - 0.5), math.exp(0.9 - 0.7)
  np.testing.assert_allclose(ratios, [r_a, 1 / r_a], rtol=1e-6)
  np.testing.assert_allclose(k, [math.exp(1.5 * (rbar_a - r_a)), math.exp(1.5 * (1 / rbar_a - 1 / r_a))],
                             rtol=1e-5)
  np.testing.assert_allclose(new_mean, [0.7 * 3 / 4 + 0.5 / 4, 0.9 * 3 / 4 + 1.0 / 4], rtol=1e-6)
  big, _, _ = agm.agm_coefficients(jnp.array([0.0, 0.0]), jnp.array([0.0, 50.0]), jnp.int32(0), alpha=1.0)
  np.testing.assert_allclose(big[0], math.exp(10.0), rtol=1e-5)   # capped at exp(alpha * 10)


def test_agm_scale_gradient_is_identity_forward_and_scales_backward():
  x = jnp.array([1.0, -2.0])
  np.testing.assert_array_equal(agm.scale_gradient(x, jnp.float32(3.0)), x)
  g = jax.grad(lambda x: jnp.sum(agm.scale_gradient(x, jnp.float32(3.0)) * jnp.array([1.0, 2.0])))(x)
  np.testing.assert_allclose(g, [3.0, 6.0])


def test_agm_clip_triggers_only_on_large_fusion_gradients():
  small = {'audio': {'w': jnp.full((3,), 10.0)}, 'fusion': {'kernel': jnp.full((2,), 0.5)}}
  out, m = agm.agm_clip(small)
  np.testing.assert_array_equal(out['audio']['w'], small['audio']['w'])
  np.testing.assert_allclose(m['clip_factor'], 1.0)
  large = {'audio': {'w': jnp.full((3,), 10.0)}, 'fusion': {'kernel': jnp.array([0.5, -2.0])}}
  out, m = agm.agm_clip(large)
  norm = math.sqrt(3 * 100 + 0.25 + 4)
  np.testing.assert_allclose(out['audio']['w'], 10.0 / (norm + 1e-6), rtol=1e-6)
  np.testing.assert_allclose(out['fusion']['kernel'], np.array([0.5, -2.0]) / (norm + 1e-6), rtol=1e-6)


def test_agm_needs_two_modalities():
  method = agm.make_agm(MODALITIES, balancing_config(), context())
  with pytest.raises(ValueError, match="'agm' is defined for exactly 2 modalities"):
    balancing.check_method(method, ('audio', 'video', 'text'), 'late_linear')


@pytest.mark.parametrize('name', ['agm', 'pmr'])
def test_two_modality_methods_with_three_are_refused_by_the_build_naming_the_count(name):
  # The build refuses the run before training, with the modality-count message of check_method.
  config = synthetic_config.get_config(f'method={name},smoke')
  spec = build.DataSpec(('audio', 'video', 'text'), {'audio': (32, 32), 'video': (3, 16, 16, 3), 'text': (8,)},
                        8, 4)
  with pytest.raises(ValueError, match=f"'{name}' is defined for exactly 2 modalities, got 3"):
    build.build_training(config, spec)


# --- PMR --------------------------------------------------------------------------------


def test_pmr_prototypes_from_a_three_sample_batch():
  f = jnp.array([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
  labels = jnp.array([0, 1, 1])
  sums, counts = pmr.prototype_sums(f, labels, num_classes=3)
  # batch-normalised columns: (x - mean) / sqrt(var + 1e-5), mean (3, 2), var 8/3
  z = (np.array(f) - np.array([3.0, 2.0])) / np.sqrt(8 / 3 + 1e-5)
  np.testing.assert_allclose(sums, [z[0], z[1] + z[2], [0, 0]], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(counts, [1, 2, 0])
  state = pmr.PMRState(jnp.full((1, 3, 2), 7.0), jnp.array([[True, True, True]]), jnp.int32(0))
  new = pmr.update_prototypes(state, sums[None], counts[None], momentum=0.2)
  np.testing.assert_allclose(new.prototypes[0, 0], 0.8 * z[0] + 0.2 * 7.0, rtol=1e-5)
  np.testing.assert_allclose(new.prototypes[0, 1], 0.8 * (z[1] + z[2]) / 2 + 0.2 * 7.0, rtol=1e-5)
  np.testing.assert_allclose(new.prototypes[0, 2], [7.0, 7.0])   # empty class keeps its prototype
  assert np.all(np.isfinite(new.prototypes))


def test_pmr_never_stores_a_non_finite_prototype():
  state = pmr.PMRState(jnp.ones((1, 2, 2)), jnp.array([[True, False]]), jnp.int32(0))
  sums = jnp.array([[[jnp.inf, 0.0], [1.0, 1.0]]])
  new = pmr.update_prototypes(state, sums, jnp.array([[1.0, 1.0]]), momentum=0.0)
  np.testing.assert_allclose(new.prototypes[0, 0], [1.0, 1.0])
  np.testing.assert_allclose(new.prototypes[0, 1], [1.0, 1.0])
  assert int(new.rejected) == 1 and bool(new.seen[0, 1])


def test_pmr_distances_have_finite_gradients_at_the_prototype():
  f = jnp.array([[1.0, 2.0], [-1.0, -2.0]])
  protos = pmr.batch_normalize(f)   # each sample sits exactly on a prototype
  d = pmr.prototype_distances(f, protos)
  np.testing.assert_allclose(np.diag(d), np.sqrt(pmr.DIST_EPS), rtol=1e-3)
  g = jax.grad(lambda f: jnp.sum(pmr.prototype_distances(f, protos)))(f)
  assert np.all(np.isfinite(g))


def test_pmr_betas_push_the_weaker_modality():
  np.testing.assert_allclose(pmr.pmr_betas(jnp.array([3.0, 1.0]), 2.0)[0], [0.0, 2.0])
  np.testing.assert_allclose(pmr.pmr_betas(jnp.array([1.0, 3.0]), 2.0)[0], [2.0, 0.0])


# --- MMCosine ---------------------------------------------------------------------------


def test_mmcosine_logits_are_scaled_cosines():
  fusion = MMCosineFusion(modalities=('audio', 'video'), num_classes=2, scale=10.0)
  feats = {'audio': jnp.array([[3.0, 4.0]]), 'video': jnp.array([[1.0, 0.0, 0.0]])}
  params = fusion.init(jax.random.key(0), feats, train=False)
  wa = np.array(params['params']['kernel_audio'])
  wv = np.array(params['params']['kernel_video'])
  cos = lambda f, w: (f @ w) / (np.linalg.norm(f) * np.linalg.norm(w, axis=0))
  expected = 10.0 * (cos(np.array([3.0, 4.0]), wa) + cos(np.array([1.0, 0.0, 0.0]), wv))
  np.testing.assert_allclose(fusion.apply(params, feats, train=False)[0], expected, rtol=1e-5)
  doubled = fusion.apply(params, {k: 2 * v for k, v in feats.items()}, train=False)
  np.testing.assert_allclose(doubled[0], expected, rtol=1e-5)   # invariant to feature scale


def test_mmcosine_requires_its_fusion_and_contribution_methods_require_decomposable_fusion():
  cfg = synthetic_config.get_config('smoke').balancing
  ctx = context()
  method = balancing.make_method('mmcosine', MODALITIES, cfg, ctx)
  assert balancing.resolve_fusion(method, 'auto') == 'mmcosine'
  balancing.check_method(method, MODALITIES, 'mmcosine')
  with pytest.raises(ValueError, match="'mmcosine' is not defined with model.fusion 'late_linear'"):
    balancing.check_method(method, MODALITIES, 'late_linear')
  for name in ('ogm', 'ogm_ge', 'mslr'):
    method = balancing.make_method(name, MODALITIES, cfg, ctx)
    for fusion in ('late_linear', 'mmcosine'):
      balancing.check_method(method, MODALITIES, fusion)
    with pytest.raises(ValueError, match="needs model.fusion in"):
      balancing.check_method(method, MODALITIES, 'mid_mlp')


# --- every method trains ----------------------------------------------------------------

ALL_METHODS = sorted(balancing.METHODS)


def method_config(method, steps):
  config = synthetic_config.get_config(f'method={method},smoke')
  config.data.num_train = 64
  config.data.batch_size = 16          # 4 steps per epoch: epoch hooks run
  config.train.num_steps = steps
  config.train.eval_every = steps
  config.train.log_every = 1
  config.balancing.mslr.keep_epochs = 1
  return config   # model.fusion 'auto': mmcosine gets its own fusion


# Trained through the loop by their own tests instead: UMT with its teacher runs (tests/test_umt.py),
# LFM with its epoch hook's Hessian-vector product (tests/test_lfm.py), Greedy (tests/test_greedy.py).
@pytest.mark.parametrize('method', [m for m in ALL_METHODS if m not in ('umt', 'lfm', 'greedy')])
def test_every_method_runs_five_steps_finite(tmp_path, method):
  results = loop.train_and_evaluate(method_config(method, 5), str(tmp_path / method))
  assert isinstance(results, list) and len(results) == 1
  assert results[0]['method'] == method
  assert all(np.isfinite(d['loss']) for d in results[0]['test'].values())


@pytest.mark.slow
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('method', ALL_METHODS)
def test_every_method_trains_200_steps_without_nan(tmp_path, method, seed):
  config = method_config(method, 200)
  config.data.num_train = 320
  config.seed = seed
  results = loop.train_and_evaluate(config, str(tmp_path / method))
  assert all(np.isfinite(d['loss']) for d in results[0]['test'].values())


def test_kernels_only_labels_leave_biases_and_batch_norm_unscaled():
  params = {'audio': {'encoder': {'Conv_0': {'kernel': jnp.ones((3, 3, 1, 2))},
                                  'BatchNorm_0': {'scale': jnp.ones(2), 'bias': jnp.zeros(2)},
                                  'Dense_0': {'kernel': jnp.ones((2, 2)), 'bias': jnp.zeros(2)}},
                      'head': {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)}},
            'fusion': {'kernel': jnp.ones((2, 3))}}
  labels = optim.modality_labels(params, heads_scaled=False, kernels_only=True)
  enc = labels['audio']['encoder']
  assert enc['Conv_0']['kernel'] == 'audio' and enc['Dense_0']['kernel'] == 'audio'
  assert enc['BatchNorm_0']['scale'] == 'audio/unscaled' and enc['Dense_0']['bias'] == 'audio/unscaled'
  assert labels['audio']['head']['kernel'] == 'audio/probe'
  assert labels['fusion']['kernel'] == 'fusion'
  tx = optim.scale_by_modality(labels)
  out, _ = tx.update(params, tx.init(params), modality_scales={'audio': jnp.float32(0.0)})
  np.testing.assert_array_equal(out['audio']['encoder']['Conv_0']['kernel'], 0.0)
  np.testing.assert_array_equal(out['audio']['encoder']['BatchNorm_0']['scale'], 1.0)
  np.testing.assert_array_equal(out['audio']['head']['kernel'], 1.0)


def test_agm_variants_count_their_passes_and_reject_unknown_ones():
  assert agm.extra_forward_passes('both') == {'encoder': 4, 'fusion': 2}
  assert agm.extra_forward_passes('zeroed') == {'encoder': 2, 'fusion': 2}
  cfg = balancing_config()
  cfg.agm.reencode = 'nope'
  with pytest.raises(ValueError, match="reencode must be one of"):
    agm.make_agm(MODALITIES, cfg, context())
  cfg = balancing_config()
  cfg.ogm.scale = 'nope'
  with pytest.raises(ValueError, match="ogm.scale must be one of"):
    ogm.make_ogm(MODALITIES, cfg, context())
  with pytest.raises(ValueError, match="ogm.scale must be one of"):
    ogm.make_ogm_ge(MODALITIES, cfg, context())


@pytest.mark.parametrize('field, value', [('balancing.agm.reencode', 'zeroed'), ('balancing.ogm.scale', 'all')])
def test_authors_variants_run(tmp_path, field, value):
  config = method_config(field.split('.')[1], 3)
  section, leaf = field.rsplit('.', 1)
  target = config
  for part in section.split('.'):
    target = target[part]
  target[leaf] = value
  results = loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert all(np.isfinite(d['loss']) for d in results[0]['test'].values())
