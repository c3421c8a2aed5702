"""Scores (Eq. 4), MLB coefficients (Eqs. 5-7) and the Method objects."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.lib import base
from mlb_jax import balancing, models
from mlb_jax.balancing import (MethodContext, StepInputs, correct_count, make_method, mlb_balance,
                               mlb_coefficients, true_class_probability)
from tests.test_methods_fusions import methods_table

ALPHA = 0.8

LOGITS = np.array([[1.0, 2.0, 3.0],
                   [0.0, 0.0, 0.0],
                   [2.0, -1.0, 0.5]], np.float32)
LABELS = np.array([2, 0, 1], np.int32)


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _k(r, alpha, beta_max):
  """Eqs. 6-7 in plain Python."""
  beta = beta_max if r > 1 else 2.0
  return 1.0 + (beta - 1.0) * math.tanh(alpha * (r - 1.0))


# ---------------------------------------------------------------- scores

def test_true_class_probability_hand_computed():
  # row 0: e^3 / (e + e^2 + e^3); row 1: uniform -> 1/3; row 2: e^-1 / (e^2 + e^-1 + e^0.5)
  e = math.e
  p0 = e**3 / (e + e**2 + e**3)
  p1 = 1.0 / 3.0
  p2 = e**-1 / (e**2 + e**-1 + e**0.5)
  expected = (p0 + p1 + p2) / 3.0
  np.testing.assert_allclose(np.mean(_softmax(LOGITS)[np.arange(3), LABELS]), expected, rtol=1e-6)
  got = true_class_probability(jnp.asarray(LOGITS), jnp.asarray(LABELS))
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_true_class_probability_bfloat16_logits_and_bounds():
  got = true_class_probability(jnp.asarray(LOGITS, jnp.bfloat16), jnp.asarray(LABELS))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np.mean(_softmax(LOGITS)[np.arange(3), LABELS]), rtol=1e-2)
  one = true_class_probability(jnp.array([[50.0, 0.0], [0.0, 50.0]]), jnp.array([0, 1]))
  np.testing.assert_allclose(one, 1.0, rtol=1e-6)


def test_correct_count_hand_computed():
  # argmax: row 0 -> 2 (label 2, correct), row 1 -> 0 on a tie (label 0, correct),
  # row 2 -> 0 (label 1, wrong)  => 2 correct
  got = correct_count(jnp.asarray(LOGITS), jnp.asarray(LABELS))
  assert got.dtype == jnp.float32 and got.shape == ()
  assert float(got) == 2.0
  assert float(correct_count(jnp.asarray(LOGITS), jnp.array([0, 1, 2]))) == 0.0
  assert float(correct_count(jnp.asarray(LOGITS), jnp.array([2, 0, 0]))) == 3.0


# ---------------------------------------------------------------- coefficients

def test_methods_md_test_vectors():
  s = jnp.array([0.6, 0.3])  # audio, video
  out = mlb_balance(s, alpha=ALPHA, beta_max=2.0)
  np.testing.assert_allclose(out.ratios, [0.5, 2.0], rtol=1e-6)
  np.testing.assert_allclose(out.coefficients, [0.62005, 1.66404], atol=1e-5)
  np.testing.assert_allclose(mlb_coefficients(s, alpha=ALPHA), [0.62005, 1.66404], atol=1e-5)
  k10 = mlb_coefficients(s, alpha=ALPHA, beta_max=10.0)
  np.testing.assert_allclose(k10, [0.62005, 6.97633], atol=1e-5)


@pytest.mark.parametrize('s', [0.4, 0.7, 3.0, 1e-3])
@pytest.mark.parametrize('beta_max', [1.0, 2.0, 10.0])
def test_equal_scores_two_modalities_exactly_one(s, beta_max):
  out = mlb_balance(jnp.array([s, s]), alpha=ALPHA, beta_max=beta_max)
  np.testing.assert_array_equal(out.ratios, [1.0, 1.0])
  np.testing.assert_array_equal(out.coefficients, [1.0, 1.0])


@pytest.mark.parametrize('scores', [[0.7] * 3, [0.1] * 3, [0.3] * 4, [1 / 3] * 3])
@pytest.mark.parametrize('beta_max', [1.0, 2.0, 10.0])
def test_equal_scores_three_or_more_modalities(scores, beta_max):
  # For M >= 3 the float32 mean of the others, (sum - s_i) / (M - 1), can be 1 ulp
  # off s_i, so r_i and k_i are 1 to float32 precision, not bit-exactly 1.
  out = mlb_balance(jnp.array(scores), alpha=ALPHA, beta_max=beta_max)
  np.testing.assert_allclose(out.ratios, np.ones(len(scores)), rtol=0, atol=1e-6)
  np.testing.assert_allclose(out.coefficients, np.ones(len(scores)), rtol=0, atol=1e-6)


def test_three_modalities_hand_computed():
  s = [0.2, 0.4, 0.6]
  r = [(0.4 + 0.6) / 2 / 0.2, (0.2 + 0.6) / 2 / 0.4, (0.2 + 0.4) / 2 / 0.6]  # 2.5, 1.0, 0.5
  alpha, beta_max = 0.5, 3.0
  expected = [1 + 2 * math.tanh(alpha * 1.5), 1.0, 1 + math.tanh(alpha * -0.5)]
  assert expected == pytest.approx([_k(x, alpha, beta_max) for x in r])
  out = mlb_balance(jnp.array(s), alpha=alpha, beta_max=beta_max)
  np.testing.assert_allclose(out.ratios, r, rtol=1e-6)
  np.testing.assert_allclose(out.coefficients, expected, rtol=1e-6)
  assert out.ratios.dtype == jnp.float32 and out.coefficients.dtype == jnp.float32


@pytest.mark.parametrize('beta_max', [1.5, 2.0, 10.0])
def test_acceleration_capped_by_beta_max(beta_max):
  # scores [s, 1]: r_0 = 1/s > 1 for s < 1
  ratios = np.array([1.01, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0, 1e4])
  k = np.array([float(mlb_coefficients(jnp.array([1.0 / r, 1.0]), alpha=ALPHA, beta_max=beta_max)[0])
                for r in ratios])
  assert np.all(k > 1.0)
  assert np.all(k <= beta_max)
  assert np.all(np.diff(k) >= 0), k  # monotone in r
  assert np.all(k[ratios <= 3.0] < beta_max)  # strictly below the cap before tanh saturates
  np.testing.assert_allclose(k, [_k(r, ALPHA, beta_max) for r in ratios], rtol=1e-5)
  np.testing.assert_allclose(k[-1], beta_max, rtol=1e-6)  # approaches the cap


@pytest.mark.parametrize('alpha', [0.3, 0.8, 2.0])
@pytest.mark.parametrize('beta_max', [2.0, 10.0])
def test_deceleration_bounded(alpha, beta_max):
  # scores [s, 1] with s >= 1: r_0 = 1/s in (0, 1]; beta_max never matters here
  s = jnp.linspace(1.0, 50.0, 200, dtype=jnp.float32)
  k = np.asarray(jax.vmap(
      lambda x: mlb_coefficients(jnp.stack([x, 1.0]), alpha=alpha, beta_max=beta_max)[0])(s))
  np.testing.assert_allclose(k, [_k(1.0 / float(x), alpha, beta_max) for x in s], rtol=1e-5)
  assert np.all(k > 1.0 - math.tanh(alpha))
  assert np.all(k <= 1.0)
  np.testing.assert_allclose(k[0], 1.0)


def test_zero_score_one_modality():
  out = mlb_balance(jnp.array([0.0, 0.5]), alpha=ALPHA, beta_max=10.0)
  assert np.all(np.isfinite(out.ratios)) and np.all(np.isfinite(out.coefficients))
  np.testing.assert_allclose(out.coefficients[0], 10.0, rtol=1e-6)
  np.testing.assert_allclose(out.ratios[1], 0.0)
  np.testing.assert_allclose(out.coefficients[1], 1.0 - math.tanh(ALPHA), rtol=1e-6)
  # M=3, one zero among positives
  out3 = mlb_balance(jnp.array([0.3, 0.0, 0.6]), alpha=ALPHA, beta_max=2.0)
  assert np.all(np.isfinite(out3.ratios)) and np.all(np.isfinite(out3.coefficients))
  np.testing.assert_allclose(out3.coefficients[1], 2.0, rtol=1e-6)


@pytest.mark.parametrize('m', [2, 3])
def test_all_zero_scores_give_unit_coefficients(m):
  out = mlb_balance(jnp.zeros(m), alpha=ALPHA, beta_max=10.0)
  np.testing.assert_array_equal(out.ratios, np.ones(m))
  np.testing.assert_array_equal(out.coefficients, np.ones(m))


@pytest.mark.parametrize('kwargs', [dict(alpha=0.0), dict(alpha=-1.0), dict(alpha=float('nan')),
                                    dict(alpha=0.8, beta_max=0.5), dict(alpha=0.8, beta_max=0.0)])
def test_invalid_hyperparameters_raise(kwargs):
  with pytest.raises(ValueError):
    mlb_coefficients(jnp.array([0.5, 0.5]), **kwargs)


@pytest.mark.parametrize('scores', [jnp.array(0.5), jnp.array([0.5]), jnp.ones((2, 2)), jnp.zeros((0,))])
def test_wrong_shapes_raise(scores):
  with pytest.raises(ValueError):
    mlb_coefficients(scores, alpha=ALPHA)


def test_beta_max_one_disables_acceleration():
  k = mlb_coefficients(jnp.array([0.6, 0.3]), alpha=ALPHA, beta_max=1.0)
  np.testing.assert_allclose(k, [0.62005, 1.0], atol=1e-5)


def test_jit():
  fn = jax.jit(functools.partial(mlb_coefficients, alpha=ALPHA, beta_max=10.0))
  np.testing.assert_allclose(fn(jnp.array([0.6, 0.3])), [0.62005, 6.97633], atol=1e-5)
  np.testing.assert_allclose(fn(jnp.array([0.3, 0.6])), [6.97633, 0.62005], atol=1e-5)
  k0 = fn(jnp.array([0.0, 0.5]))
  assert np.all(np.isfinite(k0))
  np.testing.assert_array_equal(fn(jnp.zeros(2)), [1.0, 1.0])


# ---------------------------------------------------------------- Method objects

MODALITIES = ('audio', 'video')


def _cfg(score='probability', **mlb):
  """`config.balancing` with MLB's alpha 0.8, beta_max 2 unless overridden."""
  cfg = base.get_config().balancing
  cfg.score = score
  cfg.mlb.alpha, cfg.mlb.beta_max = 0.8, 2.0
  for key, value in mlb.items():
    cfg.mlb[key] = value
  return cfg


def _ctx(modalities=MODALITIES):
  return MethodContext(tuple(modalities), steps_per_epoch=4, num_classes=5,
                       feature_dims={m: 6 for m in modalities})


def _make(name, modalities=MODALITIES, cfg=None):
  return make_method(name, modalities, cfg if cfg is not None else _cfg(), _ctx(modalities))


def _inputs():
  rng = np.random.default_rng(0)
  logits = {'audio': jnp.asarray(rng.normal(size=(8, 5)) * 2, jnp.float32),
            'video': jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}
  labels = jnp.asarray(rng.integers(0, 5, size=8), jnp.int32)
  return StepInputs(logits, labels, jnp.int32(3), jax.random.PRNGKey(0))


@pytest.mark.parametrize('name,heads', [('joint', 'probe'), ('multiloss', 'trained')])
def test_unbalanced_methods(name, heads):
  method = _make(name)
  assert method.name == name
  assert method.unimodal_heads == heads
  # Eq. 3 with nothing scaled: no hook at all, no state.
  assert method.scales is None and method.loss is None and method.gradients is None
  assert method.optimizer_args is None and method.epoch_update is None
  assert method.init_state({'audio': {}, 'video': {}, 'fusion': {}}) == ()


# Each method's section of docs/methods.md: which unimodal logits it scores and what its k reaches.
DECLARED = {
    #            source           reaches
    'joint':     ('heads', 'all'),
    'multiloss': ('heads', 'all'),
    'mlb':       ('heads', 'all'),
    'ogm':       ('contributions', 'kernels'),
    'ogm_ge':    ('contributions', 'kernels'),
    'mslr':      ('contributions', 'all'),
    'agm':       ('heads', 'all'),
    'pmr':       ('heads', 'all'),
    'mmcosine':  ('heads', 'all'),
}


@pytest.mark.parametrize('name', sorted(balancing.METHODS))
def test_method_declarations_follow_the_methods_table(name):
  # unimodal heads, whether there is a k, the modality count and the fusions: the methods table
  row = methods_table()[name]
  method = _make(name)
  assert method.name == name
  assert method.unimodal_heads == row.unimodal_heads
  assert (method.scales is not None) is row.has_scales
  assert method.min_modalities == 2 and method.max_modalities == row.max_modalities
  fusions = frozenset(method.fusions) if method.fusions is not None else frozenset(models.FUSIONS)
  if method.unimodal_source == 'contributions':
    fusions &= frozenset(balancing.DECOMPOSABLE_FUSIONS)
  assert fusions == row.fusions
  assert balancing.resolve_fusion(method, 'auto') == {'mmcosine': 'mmcosine', 'greedy': 'mmtm'}.get(name, 'late_linear')
  assert balancing.resolve_fusion(method, 'gated') == 'gated'   # an explicit fusion is kept


@pytest.mark.parametrize('name', sorted(DECLARED))
def test_method_scores_and_scaled_parameters(name):
  source, reaches = DECLARED[name]
  method = _make(name)
  assert method.unimodal_source == source
  if method.scales is not None:
    assert method.scaled_params == reaches


def test_ogm_scale_all_reaches_every_parameter():
  cfg = _cfg()
  cfg.ogm.scale = 'all'
  for name in ('ogm', 'ogm_ge'):
    assert _make(name, cfg=cfg).scaled_params == 'all'


def test_mlb_method_scales_match_coefficients():
  method = _make('mlb', cfg=_cfg(beta_max=4.0))
  assert method.name == 'mlb' and method.unimodal_heads == 'trained' and method.scaled_params == 'all'
  inputs = _inputs()
  s = jnp.stack([true_class_probability(inputs.logits[m], inputs.labels) for m in MODALITIES])
  expected = mlb_coefficients(s, alpha=0.8, beta_max=4.0)
  scales, _, metrics = jax.jit(method.scales)(inputs, method.init_state({}))
  for i, m in enumerate(MODALITIES):
    np.testing.assert_allclose(scales[m], expected[i], rtol=1e-6)
    np.testing.assert_allclose(metrics[f'score_{m}'], s[i], rtol=1e-6)
    np.testing.assert_allclose(metrics[f'scale_{m}'], expected[i], rtol=1e-6)
  np.testing.assert_allclose(metrics['ratio_audio'], s[1] / s[0], rtol=1e-5)
  assert not np.allclose(expected, 1.0)  # the case actually exercises balancing


def test_mlb_method_reads_nested_hyperparameters():
  # balancing.mlb.alpha / beta_max drive the coefficients: the test vectors s = (0.6, 0.3),
  # as true-class probabilities of two-class logits with gap log(p / (1 - p)).
  labels = jnp.array([0, 0])
  logit = lambda p: jnp.array([[math.log(p / (1 - p)), 0.0]] * 2, jnp.float32)
  inputs = StepInputs({'audio': logit(0.6), 'video': logit(0.3)}, labels, jnp.int32(0), jax.random.PRNGKey(0))
  scales, _, _ = _make('mlb', cfg=_cfg(alpha=0.8, beta_max=10.0)).scales(inputs, ())
  np.testing.assert_allclose([scales['audio'], scales['video']], [0.62005, 6.97633], atol=1e-4)
  scales, _, _ = _make('mlb', cfg=_cfg(alpha=0.8, beta_max=2.0)).scales(inputs, ())
  np.testing.assert_allclose([scales['audio'], scales['video']], [0.62005, 1.66404], atol=1e-4)


def test_mlb_method_three_modalities():
  mods = ('audio', 'video', 'text')
  method = _make('mlb', mods)
  rng = np.random.default_rng(1)
  logits = {m: jnp.asarray(rng.normal(size=(6, 4)) * (i + 1), jnp.float32) for i, m in enumerate(mods)}
  labels = jnp.asarray(rng.integers(0, 4, size=6), jnp.int32)
  scales, _, _ = method.scales(StepInputs(logits, labels, jnp.int32(0), jax.random.PRNGKey(0)), ())
  s = jnp.stack([true_class_probability(logits[m], labels) for m in mods])
  expected = mlb_coefficients(s, alpha=0.8, beta_max=2.0)
  np.testing.assert_allclose([scales[m] for m in mods], expected, rtol=1e-6)


def test_mlb_method_correct_score_uses_counts():
  method = _make('mlb', cfg=_cfg(score='correct'))
  # audio: 3 of 4 correct, video: 1 of 4 correct
  labels = jnp.array([0, 1, 2, 0])
  audio = jax.nn.one_hot(jnp.array([0, 1, 2, 1]), 3) * 5.0
  video = jax.nn.one_hot(jnp.array([0, 0, 0, 1]), 3) * 5.0
  inputs = StepInputs({'audio': audio, 'video': video}, labels, jnp.int32(0), jax.random.PRNGKey(0))
  scales, _, metrics = method.scales(inputs, ())
  assert float(metrics['score_audio']) == 3.0
  assert float(metrics['score_video']) == 1.0
  expected = mlb_coefficients(jnp.array([3.0, 1.0]), alpha=0.8, beta_max=2.0)
  np.testing.assert_allclose([scales['audio'], scales['video']], expected, rtol=1e-6)
  np.testing.assert_allclose(scales['video'], _k(3.0, 0.8, 2.0), rtol=1e-6)


def test_unknown_method_raises():
  with pytest.raises(ValueError, match="unknown method 'ogm_gx'"):
    _make('ogm_gx')


def test_unknown_score_raises():
  with pytest.raises(ValueError, match='accuracy'):
    _make('mlb', cfg=_cfg(score='accuracy'))
  with pytest.raises(ValueError, match='accuracy'):
    _make('joint', cfg=_cfg(score='accuracy'))


def test_mlb_method_invalid_hyperparameters_raise_at_construction():
  with pytest.raises(ValueError):
    _make('mlb', cfg=_cfg(alpha=0.0))
  with pytest.raises(ValueError):
    _make('mlb', cfg=_cfg(beta_max=0.5))


@pytest.mark.parametrize('name', sorted(balancing.METHODS))
def test_one_modality_is_refused_by_every_method(name):
  method = _make(name)
  with pytest.raises(ValueError, match=f"method '{name}' is defined for .* modalities, got 1"):
    balancing.check_method(method, ('audio',), balancing.resolve_fusion(method, 'auto'))


@pytest.mark.parametrize('name', ['agm', 'pmr'])
def test_two_modality_methods_refuse_three(name):
  method = _make(name)
  with pytest.raises(ValueError, match=f"method '{name}' is defined for exactly 2 modalities, got 3"):
    balancing.check_method(method, ('audio', 'video', 'text'), 'late_linear')
  balancing.check_method(method, MODALITIES, 'late_linear')   # two are fine
