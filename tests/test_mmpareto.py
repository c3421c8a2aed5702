"""MMPareto (mlb_jax/balancing/mmpareto.py) against the worked examples of docs/methods.md#mmpareto,
a NumPy transcription of the authors' per-step loop, and the training step and loop."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.lib import base
from configs import synthetic as synthetic_config
from mlb_jax import balancing, loop, models, steps
from mlb_jax.balancing import GradInputs, MethodContext, mmpareto
from mlb_jax.losses import cross_entropy
from mlb_jax.train_state import make_init
from tests.tree_asserts import assert_trees_all_close

SECTION = {'gamma': 1.5, 'start_epoch': 0, 'end_epoch': 1500}


def balancing_config(**kw):
  cfg = base.get_config().balancing
  if 'mmpareto' not in cfg:   # until configs/lib/base.py has the section
    cfg.mmpareto = ml_collections.ConfigDict(SECTION)
  for key, value in kw.items():
    cfg.mmpareto[key] = value
  return cfg


def make(modalities, steps_per_epoch=4, **kw):
  ctx = MethodContext(tuple(modalities), steps_per_epoch, 3, {m: 4 for m in modalities})
  return mmpareto.make_mmpareto(tuple(modalities), balancing_config(**kw), ctx)


def f32(*x):
  return jnp.asarray(x, jnp.float32)


# --- the 2-vector solver and the per-encoder rule: worked examples ---------------------------


def test_min_norm_2_worked_example():
  g_mm, g_u = f32(1.0, 0.0), f32(-0.5, 1.0)
  k = mmpareto.min_norm_2(g_mm, g_u)
  np.testing.assert_allclose(k, [1.75 / 3.25, 1.5 / 3.25], rtol=1e-6)
  c = k[0] * g_mm + k[1] * g_u
  np.testing.assert_allclose(c, [0.307692, 0.461538], atol=1e-6)
  np.testing.assert_allclose(jnp.dot(c, g_mm - g_u), 0.0, atol=1e-6)   # the min-norm point of the segment


def test_min_norm_2_boundary_branches_and_pytrees():
  np.testing.assert_allclose(mmpareto.min_norm_2(f32(1.0, 0.0), f32(2.0, 0.0)), [0.999, 0.001], atol=1e-7)
  np.testing.assert_allclose(mmpareto.min_norm_2(f32(2.0, 0.0), f32(1.0, 0.0)), [0.001, 0.999], atol=1e-7)
  # Inner products run over the whole pytree, as over the flattened vector.
  tree = mmpareto.min_norm_2({'a': f32(1.0), 'b': f32(0.0)}, {'a': f32(-0.5), 'b': f32(1.0)})
  np.testing.assert_allclose(tree, mmpareto.min_norm_2(f32(1.0, 0.0), f32(-0.5, 1.0)), rtol=1e-6)


def test_conflicting_example():
  out, info = mmpareto.pareto_gradient(f32(1.0, 0.0), f32(-0.5, 1.0), gamma=1.5)
  np.testing.assert_allclose(info['cos'], -0.5 / np.sqrt(1.25), rtol=1e-5)
  assert float(info['conflict']) == 1.0
  np.testing.assert_allclose(info['weight'], 0.538462, rtol=1e-5)
  np.testing.assert_allclose(out, [0.930261, 1.395391], rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(out), 1.677051, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(out), 1.5 * np.hypot(0.5, 1.0), rtol=1e-5)   # 1.5 |g_mm + g_u|


def test_agreeing_example():
  out, info = mmpareto.pareto_gradient(f32(1.0, 0.5), f32(0.5, 1.0), gamma=1.5)
  assert float(info['conflict']) == 0.0 and float(info['weight']) == 0.5
  np.testing.assert_allclose(out, [2.25, 2.25], rtol=1e-6)


def test_gamma_scales_the_result():
  a, _ = mmpareto.pareto_gradient(f32(1.0, 0.0), f32(-0.5, 1.0), gamma=1.0)
  b, _ = mmpareto.pareto_gradient(f32(1.0, 0.0), f32(-0.5, 1.0), gamma=3.0)
  np.testing.assert_allclose(b, 3.0 * a, rtol=1e-6)


@pytest.mark.parametrize('case', ['mm_zero', 'u_zero', 'both_zero'])
def test_zero_gradients_are_finite(case):
  g = {'w': f32([0.3, -0.2], [0.1, 0.4]), 'b': f32(0.5, -1.0)}
  zero = jax.tree.map(jnp.zeros_like, g)
  g_mm, g_u = {'mm_zero': (zero, g), 'u_zero': (g, zero), 'both_zero': (zero, zero)}[case]
  with jax.debug_nans(True):   # no NaN anywhere, untaken branches included
    out, info = jax.jit(functools.partial(mmpareto.pareto_gradient, gamma=1.5))(g_mm, g_u)
    jax.block_until_ready(out)
  assert float(info['cos']) == 0.0 and float(info['conflict']) == 1.0   # cos 0: the min-norm branch
  # One gradient zero: the solver puts 0.999 (0.001) on the zero one, the magnitude is restored to
  # |g_mm + g_u| per tensor, so the result is gamma times the other gradient.
  expected = zero if case == 'both_zero' else jax.tree.map(lambda x: 1.5 * x, g)
  assert_trees_all_close(out, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(info['weight'], {'mm_zero': 0.999, 'u_zero': 0.001, 'both_zero': 0.999}[case],
                             rtol=1e-6)


def test_a_tensor_whose_combination_vanishes_gets_zero_not_nan():
  k = f32(0.25, 0.75)
  g_mm, g_u = f32(0.75, 0.0), f32(-0.25, 0.0)   # 2 k0 g_mm + 2 k1 g_u = 0 exactly, |g_mm + g_u| > 0
  with jax.debug_nans(True):
    out = jax.jit(mmpareto.restore_tensor, static_argnums=4)(g_mm, g_u, g_mm + g_u, k, 1.5)
    jax.block_until_ready(out)
  np.testing.assert_array_equal(out, [0.0, 0.0])


def test_interior_weight_never_divides_by_zero():
  # Equal vectors: v12 = v11 = v22, so a boundary branch is taken and the interior's 0/0 is guarded.
  g = f32(1.0, 2.0)
  with jax.debug_nans(True):
    k = jax.jit(mmpareto.min_norm_2)(g, g)
    jax.block_until_ready(k)
  np.testing.assert_allclose(k, [0.999, 0.001], atol=1e-7)


# --- a NumPy transcription of the authors' step ---------------------------------------------


def _named(tree):
  return {jax.tree_util.keystr(p): np.asarray(x, np.float64) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def reference_encoder(g_mm, g_u, g_sum, gamma):
  """The authors' per-encoder loop over {name: tensor} (with their extra flattened 'concat' entry)."""
  names = list(g_mm)
  mm = {**g_mm, 'concat': np.concatenate([g_mm[n].ravel() for n in names])}
  u = {**g_u, 'concat': np.concatenate([g_u[n].ravel() for n in names])}
  a, b = mm['concat'], u['concat']
  cos = a @ b / (max(np.linalg.norm(a), 1e-8) * max(np.linalg.norm(b), 1e-8))
  if cos > 0:
    k = (0.5, 0.5)
  else:
    dot = lambda x, y: sum(np.sum(x[e] * y[e]) for e in x)   # over every entry, 'concat' included
    v11, v12, v22 = dot(mm, mm), dot(mm, u), dot(u, u)
    if v12 >= v11:
      c = 0.999
    elif v12 >= v22:
      c = 0.001
    else:
      c = -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))
    k = (c, 1 - c)
  out = {}
  for n in names:
    three = np.linalg.norm(g_sum[n])
    new = 2 * k[0] * g_mm[n] + 2 * k[1] * g_u[n]
    new_norm = np.linalg.norm(new)
    diff = three / new_norm if new_norm > 0 else 0.0   # the authors: NaN
    out[n] = diff * new * gamma if diff > 1 else new * gamma
  return out, cos


def reference_combine(per_objective, modalities, gamma):
  """{name: array} of the whole combined gradient, and {m: cos}."""
  named = {n: _named(g) for n, g in per_objective.items()}
  plain = {key: sum(named[n][key] for n in named) for key in named['fused']}
  out, cos = dict(plain), {}
  for m in modalities:
    prefix = f"['{m}']['encoder']"
    keys = [key for key in plain if key.startswith(prefix)]
    enc, cos[m] = reference_encoder({k: named['fused'][k] for k in keys}, {k: named[m][k] for k in keys},
                                    {k: plain[k] for k in keys}, gamma)
    out.update(enc)
  return out, cos


def _random_grads(modalities, seed):
  rng = np.random.default_rng(seed)
  def tree():
    t = {m: {'encoder': {'Dense_0': {'kernel': rng.normal(size=(3, 2)), 'bias': rng.normal(size=(2,))},
                         'Dense_1': {'kernel': rng.normal(size=(2, 2))}},
             'head': {'kernel': rng.normal(size=(2, 3)), 'bias': rng.normal(size=(3,))}} for m in modalities}
    t['fusion'] = {'kernel': rng.normal(size=(2 * len(modalities), 3)), 'bias': rng.normal(size=(3,))}
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  per = {'fused': tree(), **{m: tree() for m in modalities}}
  for m in modalities:   # objective m reaches only branch m; the fused objective no unimodal head
    for other in modalities:
      if other != m:
        per[m][other] = jax.tree.map(jnp.zeros_like, per[m][other])
    per[m]['fusion'] = jax.tree.map(jnp.zeros_like, per[m]['fusion'])
    per['fused'][m]['head'] = jax.tree.map(jnp.zeros_like, per['fused'][m]['head'])
  # First encoder: agreement; second: conflict (g_m near -g_fused); the third is random.
  per[modalities[0]][modalities[0]]['encoder'] = jax.tree.map(
      lambda g, n: g + 0.3 * n, per['fused'][modalities[0]]['encoder'], per[modalities[0]][modalities[0]]['encoder'])
  per[modalities[1]][modalities[1]]['encoder'] = jax.tree.map(
      lambda g, n: -g + 0.3 * n, per['fused'][modalities[1]]['encoder'], per[modalities[1]][modalities[1]]['encoder'])
  return per


@pytest.mark.parametrize('seed', [0, 1])
def test_three_modalities_match_the_authors_loop(seed):
  mods = ('audio', 'video', 'text')
  per = _random_grads(mods, seed)
  method = make(mods)
  grads, _, metrics = method.combine(per, GradInputs({}, jnp.int32(0), jax.random.key(0)), ())
  expected, cos = reference_combine(per, mods, 1.5)
  got = _named(grads)
  assert set(got) == set(expected)
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
  for m in mods:
    np.testing.assert_allclose(metrics[f'cos_{m}'], cos[m], rtol=1e-5, atol=1e-7)
    assert float(metrics[f'conflict_{m}']) == float(cos[m] <= 0)
  assert cos['audio'] > 0 and cos['video'] < 0   # both branches are exercised
  assert float(metrics['modulation_active']) == 1.0
  # The heads and the fusion get the plain sum, the encoders something else.
  plain = jax.tree.map(lambda *g: sum(g), *per.values())
  for m in mods:
    assert_trees_all_close(grads[m]['head'], plain[m]['head'], rtol=1e-6)
    with pytest.raises(AssertionError):
      assert_trees_all_close(grads[m]['encoder'], plain[m]['encoder'], rtol=1e-3)
  assert_trees_all_close(grads['fusion'], plain['fusion'], rtol=1e-6)


def test_window_outside_gives_the_plain_sum():
  mods = ('audio', 'video')
  per = _random_grads(mods, 3)
  method = make(mods, steps_per_epoch=2, start_epoch=1, end_epoch=1)   # steps 2 and 3
  plain = jax.tree.map(lambda *g: sum(g), *[per[n] for n in sorted(per)])
  combine = jax.jit(lambda step: method.combine(per, GradInputs({}, step, jax.random.key(0)), ()))
  for step, active in [(0, False), (1, False), (2, True), (3, True), (4, False)]:
    grads, _, metrics = combine(jnp.int32(step))
    assert float(metrics['modulation_active']) == float(active)
    if active:
      with pytest.raises(AssertionError):
        assert_trees_all_close(grads, plain, rtol=1e-3)
    else:
      assert_trees_all_close(grads, plain, rtol=1e-6)


def test_gamma_is_validated():
  with pytest.raises(ValueError, match='gamma'):
    make(('audio', 'video'), gamma=0.0)


# --- through the training step on a tiny model -----------------------------------------------

CLASSES = 3


def _model(modalities, shapes):
  cfg = base.get_config().model
  cfg.fusion, cfg.kernels, cfg.features, cfg.mlp.hidden = 'late_linear', 'plain', 4, (6,)
  cfg.encoders = {m: 'mlp' for m in modalities}
  return models.build_model(cfg, modalities, shapes, CLASSES)


def _recording_tx():
  """Keeps the last gradient as its state and never moves the parameters."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None, **kw: (jax.tree.map(jnp.zeros_like, grads), grads))


def _step_case(modalities, shapes, weights, edit_params, seed=0):
  """(step gradient, step metrics, per-objective gradients by jax.grad, params) on a tiny model."""
  model = _model(modalities, shapes)
  rng = np.random.default_rng(seed)
  batch = {m: jnp.asarray(rng.normal(size=(6, *shapes[m])), jnp.float32) for m in modalities}
  batch['label'] = jnp.asarray(np.arange(6) % CLASSES, jnp.int32)
  method = make(modalities)
  tx = _recording_tx()
  state = make_init(model, tx, method)({m: batch[m] for m in modalities}, jax.random.key(seed))
  state = state.replace(params=edit_params(state.params, np.random.default_rng(seed + 1)))
  new_state, metrics = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, method=method,
                                                 loss_weights=weights))(state, batch)

  def objective(params, head):
    out, _ = model.apply({'params': params, 'batch_stats': state.batch_stats}, batch, train=True,
                         mutable=['batch_stats'])
    return weights[head] * cross_entropy(out.logits[head], batch['label'])

  per = {h: jax.grad(objective)(state.params, h) for h in ('fused', *modalities)}
  ce = {h: objective(state.params, h) / weights[h] for h in ('fused', *modalities)}
  return new_state.opt_state, metrics, per, ce


def _fusion_from_heads(params, signs, noise, rng):
  """Fusion kernel block of m = signs[m] * head kernel of m (+ noise), all logits small, biases 0:
  g_fused and g_m on encoder m then point the same way (sign +) or against each other (sign -)."""
  params = jax.tree.map(lambda x: x, params)
  blocks = []
  for m, sign in signs.items():
    head = params[m]['head']['kernel'] * 0.01
    params[m]['head'] = {'kernel': head, 'bias': jnp.zeros_like(params[m]['head']['bias'])}
    blocks.append(sign * head + noise * 0.01 * jnp.asarray(rng.normal(size=head.shape), jnp.float32))
  params['fusion'] = {'kernel': jnp.concatenate(blocks), 'bias': jnp.zeros_like(params['fusion']['bias'])}
  return params


def test_step_with_agreeing_gradients_is_gamma_times_the_plain_sum():
  mods, shapes = ('audio', 'video'), {'audio': (5,), 'video': (4,)}
  weights = {'fused': 1.0, 'audio': 1.0, 'video': 1.0}
  edit = lambda p, rng: _fusion_from_heads(p, {'audio': 1.0, 'video': 1.0}, 0.0, rng)
  grads, metrics, per, ce = _step_case(mods, shapes, weights, edit)
  for m in mods:
    assert float(metrics[f'cos_{m}']) > 0.9 and float(metrics[f'conflict_{m}']) == 0.0
  for h in ('fused', *mods):   # objectives and their metrics as `multiloss_objectives` reports them
    np.testing.assert_allclose(metrics[f'loss_{h}'], ce[h], rtol=1e-6)
  np.testing.assert_allclose(metrics['loss'], sum(ce.values()), rtol=1e-6)
  plain = jax.tree.map(lambda *g: sum(g), *per.values())
  scale = lambda t: jax.tree.map(lambda x: 1.5 * x, t)
  atol = 1e-6 * max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(plain))
  for m in mods:
    assert_trees_all_close(grads[m]['encoder'], scale(plain[m]['encoder']), rtol=1e-5, atol=atol)
    assert_trees_all_close(grads[m]['head'], plain[m]['head'], rtol=1e-5, atol=atol)
  assert_trees_all_close(grads['fusion'], plain['fusion'], rtol=1e-5, atol=atol)


def test_three_modality_step_matches_the_authors_loop():
  mods, shapes = ('audio', 'video', 'text'), {'audio': (5,), 'video': (4,), 'text': (3,)}
  weights = {'fused': 1.0, 'audio': 1.0, 'video': 0.5, 'text': 2.0}
  edit = lambda p, rng: _fusion_from_heads(p, {'audio': 1.0, 'video': -1.0, 'text': 1.0}, 1.0, rng)
  grads, metrics, per, _ = _step_case(mods, shapes, weights, edit)
  expected, cos = reference_combine(per, mods, 1.5)
  assert cos['audio'] > 0 and cos['video'] < 0
  got = _named(grads)
  atol = 1e-5 * max(np.max(np.abs(x)) for x in expected.values())
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=atol, err_msg=key)
  for m in mods:
    np.testing.assert_allclose(metrics[f'cos_{m}'], cos[m], rtol=1e-4, atol=1e-6)
  assert all(np.isfinite(float(v)) for v in metrics.values())


# --- through the training loop ---------------------------------------------------------------


@pytest.fixture
def registered(monkeypatch):
  if 'mmpareto' not in balancing.METHODS:   # until mlb_jax/balancing/__init__.py registers it
    monkeypatch.setitem(balancing.METHODS, 'mmpareto', mmpareto.make_mmpareto)


def test_smoke_config_trains_two_steps(tmp_path, registered):
  config = synthetic_config.get_config('method=mmpareto,smoke')
  if 'mmpareto' not in config.balancing:
    config.balancing.mmpareto = ml_collections.ConfigDict(SECTION)
  assert config.train.num_steps == 2
  [results] = loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert results['method'] == 'mmpareto'
  assert all(np.isfinite(d['loss']) for d in results['test'].values())
