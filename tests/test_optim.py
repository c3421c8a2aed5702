"""Optax pieces: scale_by_modality, the optimizer chain (torch semantics), per-label optimizers and the LR schedule."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mlb_jax.optim import (ScaleByModalityState, base_optimizer, cosine_restarts_schedule, make_optimizer,
                           make_schedule, modality_labels, scale_by_modality)
from tree_asserts import assert_trees_all_close, assert_trees_all_equal


def _params():
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return {'audio': {'w': f(3, 2), 'b': f(2)},
          'video': {'enc': {'w': f(4, 2)}, 'b': f(2)},
          'fusion': {'w': f(4, 3), 'b': f(3)}}


def _grads(step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _params())


def _cfg(**overrides):
  base = dict(name='adam', learning_rate=1e-3, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-7,
              momentum=0.9, schedule='constant', warmup_steps=0, restart_period=4, restart_mult=2)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


# ---------------------------------------------------------------- scale_by_modality

def test_modality_labels():
  labels = modality_labels(_params())
  assert labels == {'audio': {'w': 'audio', 'b': 'audio'}, 'video': {'enc': {'w': 'video'}, 'b': 'video'},
                    'fusion': {'w': 'fusion', 'b': 'fusion'}}


@pytest.mark.parametrize('labels', ['callable', 'tree'])
def test_scale_by_modality_jit_shapes_and_per_label_scales(labels):
  params = _params()
  tx = scale_by_modality(modality_labels if labels == 'callable' else modality_labels(params))
  state = jax.jit(tx.init)(params)
  updates = _grads(0)
  scales = {'audio': jnp.float32(0.5), 'video': jnp.float32(3.0)}
  new, new_state = jax.jit(lambda u, s, k: tx.update(u, s, params, modality_scales=k))(updates, state, scales)
  assert jax.tree.structure(new) == jax.tree.structure(updates)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(updates)):
    assert a.shape == b.shape and a.dtype == b.dtype and np.all(np.isfinite(a))
  assert_trees_all_close(new['audio'], jax.tree.map(lambda u: 0.5 * u, updates['audio']), rtol=1e-6)
  assert_trees_all_close(new['video'], jax.tree.map(lambda u: 3.0 * u, updates['video']), rtol=1e-6)
  assert_trees_all_equal(new['fusion'], updates['fusion'])  # untouched
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_scale_by_modality_missing_label_passes_through_and_python_floats():
  tx = scale_by_modality(modality_labels)
  updates = _grads(1)
  new, _ = tx.update(updates, tx.init(_params()), modality_scales={'video': 0.0})
  assert_trees_all_equal(new['audio'], updates['audio'])
  assert_trees_all_equal(new['fusion'], updates['fusion'])
  assert_trees_all_equal(new['video'], jax.tree.map(jnp.zeros_like, updates['video']))


def test_scale_by_modality_bfloat16_updates_keep_dtype():
  tx = scale_by_modality(modality_labels)
  updates = jax.tree.map(lambda u: u.astype(jnp.bfloat16), _grads(2))
  new, _ = tx.update(updates, tx.init(updates), modality_scales={'audio': jnp.float32(2.0)})
  for leaf in jax.tree.leaves(new):
    assert leaf.dtype == jnp.bfloat16
  assert_trees_all_equal(new['audio'], jax.tree.map(lambda u: u * 2, updates['audio']))


def test_scale_by_modality_unknown_label_raises():
  tx = scale_by_modality(modality_labels)
  with pytest.raises(ValueError, match='text'):
    tx.update(_grads(0), tx.init(_params()), modality_scales={'audio': 1.0, 'text': 2.0})
  with pytest.raises(ValueError, match='text'):
    jax.jit(lambda u: tx.update(u, tx.init(u), modality_scales={'text': jnp.float32(2.0)}))(_grads(0))


def test_scale_by_modality_no_recompilation():
  tx = scale_by_modality(modality_labels)
  params = _params()
  state = tx.init(params)
  traces = []

  @jax.jit
  def step(u, s, k):
    traces.append(1)  # Python side effect: runs once per trace
    return tx.update(u, s, modality_scales=k)

  updates = _grads(0)
  for i in range(5):
    k = {'audio': jnp.float32(0.5 + i), 'video': jnp.float32(2.0 - 0.3 * i)}
    new, _ = step(updates, state, k)
    np.testing.assert_allclose(new['audio']['w'], updates['audio']['w'] * (0.5 + i), rtol=1e-6)
  assert len(traces) == 1 and step._cache_size() == 1


def _leafwise_scaling(param_labels):
  """The hand-written per-leaf loop `scale_by_modality` was before it became a multi_transform (no noise)."""
  def update_fn(updates, state, params=None, *, modality_scales, **extra_args):
    labels = param_labels(updates) if callable(param_labels) else param_labels
    return jax.tree.map(lambda u, label: u * jnp.asarray(modality_scales[label], u.dtype)
                        if label in modality_scales else u, updates, labels), state
  return optax.GradientTransformationExtraArgs(lambda params: ScaleByModalityState(), update_fn)


def _kernel_params():
  rng = np.random.default_rng(1)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  branch = lambda: {'encoder': {'Conv_0': {'kernel': f(3, 3, 1, 2)},
                                'BatchNorm_0': {'scale': f(2), 'bias': f(2)}},
                    'head': {'kernel': f(2, 3), 'bias': f(3)}}
  return {'audio': branch(), 'video': branch(), 'fusion': {'kernel': f(4, 3), 'bias': f(3)}}


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('kernels_only', [False, True])
def test_scale_by_modality_bit_identical_to_leafwise_loop(dtype, kernels_only):
  params = _kernel_params()
  labels = lambda p: modality_labels(p, heads_scaled=not kernels_only, kernels_only=kernels_only)
  rng = np.random.default_rng(7)
  updates = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), dtype), params)
  scales = {'audio': jnp.float32(0.37), 'video': jnp.float32(2.9)}
  run = lambda tx: jax.jit(lambda u, k: tx.update(u, tx.init(u), modality_scales=k)[0])(updates, scales)
  assert_trees_all_equal(run(scale_by_modality(labels)), run(_leafwise_scaling(labels)))


@pytest.mark.parametrize('name', ['adam', 'sgd'])
@pytest.mark.parametrize('apply_to', ['gradients', 'updates'])
def test_make_optimizer_bit_identical_to_leafwise_loop(name, apply_to):
  cfg = _cfg(name=name, learning_rate=1e-3 if name == 'adam' else 0.1)
  balance, base = _leafwise_scaling(modality_labels), base_optimizer(cfg)
  previous = optax.chain(balance, base) if apply_to == 'gradients' else optax.chain(base, balance)
  got = _run(make_optimizer(cfg, modality_labels, apply_to), _params(), 3)
  assert_trees_all_equal(got, _run(previous, _params(), 3))


def test_scale_by_modality_state_is_empty_and_accepts_a_prefix_label_tree():
  params = _params()
  tx = scale_by_modality(modality_labels)
  assert tx.init(params) == ScaleByModalityState()  # opt_state (and checkpoints) keep their structure
  assert make_optimizer(_cfg(), modality_labels, 'gradients').init(params)[0] == ScaleByModalityState()
  prefix = scale_by_modality({'audio': 'audio', 'video': 'video', 'fusion': 'fusion'})
  kw = dict(modality_scales={'audio': jnp.float32(0.5)}, noise_key=jax.random.key(0), noise_scale=1.0)
  assert_trees_all_equal(prefix.update(_grads(0), ScaleByModalityState(), **kw)[0],
                         tx.update(_grads(0), ScaleByModalityState(), **kw)[0])


def test_ogm_ge_noise_uses_the_unbiased_std_deterministically():
  # Hand-computed: leaf i (position among all leaves) gets k u + s (std_{N-1}(u) + 1e-8) z_i,
  # z_i = N(0, 1) drawn from fold_in(key, i); torch's Tensor.std() divides by N - 1, not N.
  updates = {'audio': {'b': jnp.asarray([1.0, -2.0, 0.5, 3.0]), 'w': jnp.asarray([[0.2, 0.1], [-0.4, 0.3]])},
             'fusion': {'w': jnp.ones(3)},
             'video': {'one': jnp.asarray([2.5]), 'scalar': jnp.float32(-1.5)}}
  key, k, s = jax.random.key(5), {'audio': jnp.float32(0.5), 'video': jnp.float32(2.0)}, jnp.float32(0.7)
  tx = scale_by_modality(modality_labels)
  out, _ = jax.jit(lambda u: tx.update(u, tx.init(u), modality_scales=k, noise_key=key, noise_scale=s))(updates)
  leaves = jax.tree_util.tree_leaves_with_path(updates)  # audio/b, audio/w, fusion/w, video/one, video/scalar
  for i, (path, u) in enumerate(leaves):
    label = path[0].key
    got = np.asarray(out[label][path[1].key])
    if label == 'fusion':
      np.testing.assert_array_equal(got, u)
      continue
    z = np.asarray(jax.random.normal(jax.random.fold_in(key, i), u.shape, jnp.float32))
    u = np.asarray(u, np.float64)
    std = np.std(u, ddof=1) if u.size > 1 else 0.0  # one element: std 0, so the noise is 1e-8 z
    np.testing.assert_allclose(got, float(k[label]) * u + float(s) * (std + 1e-8) * z, rtol=1e-6, atol=1e-6)
    if u.size > 1:  # the population std (ddof=0) would be off by sqrt((N-1)/N)
      population = float(k[label]) * u + float(s) * (np.std(u) + 1e-8) * z
      assert not np.allclose(got, population, rtol=1e-3, atol=0)
    assert np.all(np.isfinite(got))


def test_make_optimizer_no_recompilation_across_scales():
  params = _params()
  opt = make_optimizer(_cfg(), modality_labels, 'gradients')
  traces = []

  @jax.jit
  def step(p, s, g, k):
    traces.append(1)
    u, s = opt.update(g, s, p, modality_scales=k)
    return optax.apply_updates(p, u), s

  state = opt.init(params)
  for i in range(5):
    params, state = step(params, state, _grads(i), {'audio': jnp.float32(1.0 + 0.1 * i),
                                                    'video': jnp.float32(1.0 - 0.1 * i)})
  assert len(traces) == 1 and step._cache_size() == 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


# ---------------------------------------------------------------- make_optimizer vs torch semantics

SCALES = [{'audio': 0.5, 'video': 1.7}, {'audio': 1.3, 'video': 0.4}, {'audio': 0.9, 'video': 2.0}]


def _numpy_reference(cfg, apply_to, params, n_steps):
  """torch.optim.Adam / SGD(momentum) with coupled weight decay, MLB scaling by label."""
  theta = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  leaves, treedef = jax.tree.flatten(theta)
  labels = jax.tree.leaves(modality_labels(params))
  m = [np.zeros_like(x) for x in leaves]
  v = [np.zeros_like(x) for x in leaves]
  buf = [None] * len(leaves)
  for t in range(1, n_steps + 1):
    grads = jax.tree.leaves(_grads(t - 1))
    for i, (x, g, lab) in enumerate(zip(leaves, grads, labels)):
      k = SCALES[t - 1].get(lab, 1.0)
      g = np.asarray(g, np.float64)
      if apply_to == 'gradients':
        g = g * k  # balancing: in place on .grad after backward
      g = g + cfg.weight_decay * x  # torch coupled L2, inside step()
      if cfg.name == 'adam':
        m[i] = cfg.b1 * m[i] + (1 - cfg.b1) * g
        v[i] = cfg.b2 * v[i] + (1 - cfg.b2) * g * g
        mhat = m[i] / (1 - cfg.b1 ** t)
        vhat = v[i] / (1 - cfg.b2 ** t)
        step = cfg.learning_rate * mhat / (np.sqrt(vhat) + cfg.eps)
      else:
        buf[i] = g.copy() if buf[i] is None else cfg.momentum * buf[i] + g
        step = cfg.learning_rate * buf[i]
      if apply_to == 'updates':
        step = step * k
      leaves[i] = x - step
  return jax.tree.unflatten(treedef, leaves)


def _run(opt, params, n_steps, scales=SCALES, grads=_grads):
  state = opt.init(params)

  @jax.jit
  def step(p, s, g, k):
    u, s = opt.update(g, s, p, modality_scales=k)
    return optax.apply_updates(p, u), s

  for t in range(n_steps):
    k = {lab: jnp.float32(x) for lab, x in scales[t].items()}
    params, state = step(params, state, grads(t), k)
  return params


@pytest.mark.parametrize('name', ['adam', 'sgd'])
@pytest.mark.parametrize('apply_to', ['gradients', 'updates'])
@pytest.mark.parametrize('weight_decay', [1e-4, 0.1])
def test_make_optimizer_matches_torch_reference(name, apply_to, weight_decay):
  cfg = _cfg(name=name, weight_decay=weight_decay, learning_rate=1e-3 if name == 'adam' else 0.1)
  params = _params()
  got = _run(make_optimizer(cfg, modality_labels, apply_to), params, 3)
  want = _numpy_reference(cfg, apply_to, params, 3)
  assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
  # and the parameters actually moved by a meaningful amount
  delta = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)))
  assert delta > 1e-3


def test_apply_to_placements_differ_with_adam():
  # Sanity: 'gradients' and 'updates' are genuinely different for Adam.
  params = _params()
  g = _run(make_optimizer(_cfg(), modality_labels, 'gradients'), params, 3)
  u = _run(make_optimizer(_cfg(), modality_labels, 'updates'), params, 3)
  assert not np.allclose(g['audio']['w'], u['audio']['w'], rtol=1e-4, atol=0)
  np.testing.assert_allclose(g['fusion']['w'], u['fusion']['w'], rtol=1e-6)  # fusion scale 1 in both


def test_make_optimizer_sgd_without_momentum():
  cfg = _cfg(name='sgd', momentum=0.0, weight_decay=0.0, learning_rate=0.1)
  params = _params()
  got = _run(make_optimizer(cfg, modality_labels, 'gradients'), params, 1)
  want = jax.tree.map(lambda p, g, lab: p - 0.1 * SCALES[0].get(lab, 1.0) * g,
                      params, _grads(0), modality_labels(params))
  assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('name', ['adam', 'sgd'])
@pytest.mark.parametrize('apply_to', ['gradients', 'updates'])
def test_zero_scale_freezes_modality(name, apply_to):
  cfg = _cfg(name=name, weight_decay=0.0)
  params = _params()
  got = _run(make_optimizer(cfg, modality_labels, apply_to), params, 1,
             scales=[{'audio': 0.0, 'video': 1.0}])
  assert_trees_all_equal(got['audio'], params['audio'])
  for moved, orig in zip(jax.tree.leaves(got['video']), jax.tree.leaves(params['video'])):
    assert np.all(np.asarray(moved) != np.asarray(orig))


# ---------------------------------------------------------------- per-label base optimizers

@pytest.mark.parametrize('name', ['adam', 'sgd'])
@pytest.mark.parametrize('apply_to', ['gradients', 'updates'])
def test_per_label_zero_learning_rate_freezes_that_modality_only(name, apply_to):
  cfg = _cfg(name=name, weight_decay=0.1, learning_rate=1e-3 if name == 'adam' else 0.1)
  frozen = base_optimizer(_cfg(name=name, weight_decay=0.1, learning_rate=0.0))
  params = _params()
  got = _run(make_optimizer(cfg, modality_labels, apply_to, per_label={'audio': frozen}), params, 3)
  assert_trees_all_equal(got['audio'], params['audio'])
  for key in ('video', 'fusion'):
    for moved, orig in zip(jax.tree.leaves(got[key]), jax.tree.leaves(params[key])):
      assert np.all(np.asarray(moved) != np.asarray(orig))
  assert_trees_all_equal(got['video'], _run(make_optimizer(cfg, modality_labels, apply_to), params, 3)['video'])


@pytest.mark.parametrize('apply_to', ['gradients', 'updates'])
def test_per_label_with_the_base_optimizer_is_bit_identical(apply_to):
  cfg = _cfg()
  params = _params()
  got = _run(make_optimizer(cfg, modality_labels, apply_to, per_label={'video': base_optimizer(cfg)}), params, 3)
  assert_trees_all_equal(got, _run(make_optimizer(cfg, modality_labels, apply_to), params, 3))


def test_updates_placement_is_a_per_modality_learning_rate():
  # 'updates' with constant k equals giving each modality the base optimizer at lr * k (to float
  # rounding: (lr u) k vs (lr k) u); 'gradients' with Adam does not.
  k = {'audio': 0.5, 'video': 2.0}
  lr = 1e-3
  per_label = {m: base_optimizer(_cfg(learning_rate=lr * x)) for m, x in k.items()}
  want = _run(make_optimizer(_cfg(learning_rate=lr), modality_labels, 'updates', per_label=per_label),
              _params(), 3, scales=[{}] * 3)
  got = _run(make_optimizer(_cfg(learning_rate=lr), modality_labels, 'updates'), _params(), 3, scales=[k] * 3)
  assert_trees_all_close(got, want, rtol=1e-6)
  grads_first = _run(make_optimizer(_cfg(learning_rate=lr), modality_labels, 'gradients'), _params(), 3,
                     scales=[k] * 3)
  assert not np.allclose(grads_first['audio']['w'], want['audio']['w'], rtol=1e-4, atol=0)


def test_per_label_own_schedule_and_no_recompilation():
  # SGD without momentum or decay: video follows its own schedule, the rest the base lr; k still applies.
  cfg = _cfg(name='sgd', momentum=0.0, weight_decay=0.0, learning_rate=0.1)
  video_lr = optax.piecewise_constant_schedule(0.2, {1: 0.5})  # 0.2, then 0.1
  opt = make_optimizer(cfg, modality_labels, 'gradients', per_label={'video': optax.sgd(video_lr)})
  params = _params()
  state = jax.jit(opt.init)(params)

  @jax.jit
  def step(s, g, k):
    return opt.update(g, s, params, modality_scales=k)

  for t, lr_video in enumerate((0.2, 0.1, 0.1)):
    k = {'audio': jnp.float32(1.0 + t), 'video': jnp.float32(3.0 - t)}
    updates, state = step(state, _grads(t), k)
    assert_trees_all_close(updates['video'], jax.tree.map(lambda g: -lr_video * (3.0 - t) * g, _grads(t)['video']),
                           rtol=1e-6)
    assert_trees_all_close(updates['audio'], jax.tree.map(lambda g: -0.1 * (1.0 + t) * g, _grads(t)['audio']),
                           rtol=1e-6)
    assert_trees_all_close(updates['fusion'], jax.tree.map(lambda g: -0.1 * g, _grads(t)['fusion']), rtol=1e-6)
  assert step._cache_size() == 1


def test_per_label_key_covers_probe_and_unscaled_labels_unless_given_its_own():
  params = _kernel_params()
  labels = lambda p: modality_labels(p, heads_scaled=False, kernels_only=True)  # audio, audio/probe, audio/unscaled
  frozen = optax.sgd(0.0)
  grads = lambda t: jax.tree.map(lambda p: p + 1.0 + t, params)
  got = _run(make_optimizer(_cfg(), labels, 'gradients', per_label={'audio': frozen}), params, 1,
             scales=[{'audio': 1.0}], grads=grads)
  assert_trees_all_equal(got['audio'], params['audio'])
  got = _run(make_optimizer(_cfg(), labels, 'gradients', per_label={'audio': frozen, 'audio/probe': optax.sgd(0.1)}),
             params, 1, scales=[{'audio': 1.0}], grads=grads)
  assert_trees_all_equal(got['audio']['encoder'], params['audio']['encoder'])
  assert not np.allclose(got['audio']['head']['kernel'], params['audio']['head']['kernel'])


def test_per_label_errors():
  opt = make_optimizer(_cfg(), modality_labels, 'gradients', per_label={'text': optax.sgd(0.1)})
  with pytest.raises(ValueError, match='text'):
    opt.init(_params())
  with pytest.raises(ValueError, match='video'):
    make_optimizer(_cfg(), modality_labels, 'gradients', per_label={'video': 0.1})


# ---------------------------------------------------------------- schedule

def _torch_lr(j, base=1.0, warmup=780, t0=4):
  """Constant base for j < warmup, then CosineAnnealingWarmRestarts(T_0=4, T_mult=2) at epoch=j."""
  if j < warmup:
    return base
  if j < t0:
    t_cur, t_i = j, t0
  else:
    n = int(math.floor(math.log2(j / t0 + 1)))
    t_i = t0 * 2 ** n
    t_cur = j - t0 * (2 ** n - 1)
  assert 0 <= t_cur < t_i
  return base * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def test_cosine_restarts_key_points():
  lr = cosine_restarts_schedule(1.0, warmup_steps=780)
  assert float(lr(0)) == 1.0
  assert float(lr(779)) == 1.0
  np.testing.assert_allclose(float(lr(780)), _torch_lr(780), atol=1e-6)
  assert float(lr(780)) == pytest.approx(0.451, abs=5e-4)
  assert 0.0 <= float(lr(1019)) < 1e-4
  np.testing.assert_allclose(float(lr(1019)), _torch_lr(1019), atol=1e-6)
  np.testing.assert_allclose(float(lr(1020)), 1.0, atol=1e-6)
  for j in (2044, 4092):  # later restarts
    np.testing.assert_allclose(float(lr(j)), 1.0, atol=1e-6)
    assert float(lr(j - 1)) < 1e-4


def test_cosine_restarts_matches_torch_formula():
  lr = jax.jit(cosine_restarts_schedule(1.0, warmup_steps=780))
  j = np.arange(0, 5001)
  got = np.asarray(lr(jnp.asarray(j)))
  want = np.array([_torch_lr(int(x)) for x in j])
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  # also step by step with scalar int counts, as optax passes them
  for x in (780, 781, 1019, 1020, 1021, 2043, 2044, 3000, 4091, 4092, 5000):
    np.testing.assert_allclose(float(lr(jnp.int32(x))), _torch_lr(x), atol=1e-5)


def test_cosine_restarts_scales_with_base_and_no_warmup():
  lr = cosine_restarts_schedule(1e-3, warmup_steps=0)
  j = np.arange(0, 200)
  np.testing.assert_allclose(np.asarray(lr(jnp.asarray(j))), [_torch_lr(int(x), 1e-3, 0) for x in j],
                             rtol=0, atol=1e-8)
  # restarts at 4(2^n - 1): 0, 4, 12, 28, 60, 124
  for r in (0, 4, 12, 28, 60, 124):
    np.testing.assert_allclose(float(lr(r)), 1e-3, rtol=1e-6)


@pytest.mark.parametrize('period,mult', [(4, 1), (3, 3), (5, 2)])
def test_cosine_restarts_other_periods(period, mult):
  def torch_lr(j):  # CosineAnnealingWarmRestarts(T_0=period, T_mult=mult), by walking the cycles
    start, t_i = 0, period
    while j >= start + t_i:
      start, t_i = start + t_i, t_i * mult
    return (1 + math.cos(math.pi * (j - start) / t_i)) / 2
  lr = cosine_restarts_schedule(1.0, warmup_steps=0, period=period, mult=mult)
  j = np.arange(0, 1500)
  np.testing.assert_allclose(np.asarray(lr(jnp.asarray(j))), [torch_lr(int(x)) for x in j], rtol=0, atol=1e-5)


def test_make_schedule_from_config():
  const = make_schedule(_cfg(learning_rate=0.01))
  assert float(const(0)) == pytest.approx(0.01) and float(const(10_000)) == pytest.approx(0.01)
  cos = make_schedule(_cfg(learning_rate=0.01, schedule='cosine_restarts', warmup_steps=780))
  np.testing.assert_allclose(float(cos(780)), 0.01 * _torch_lr(780), rtol=1e-5)


def test_optimizer_uses_schedule():
  # SGD without momentum / decay: the step is exactly -lr(j) * g; check j = 0 and j = 1
  # across a warmup of 1 with base 1 (lr(1) = torch value at j = 1).
  cfg = _cfg(name='sgd', momentum=0.0, weight_decay=0.0, learning_rate=1.0,
             schedule='cosine_restarts', warmup_steps=1)
  opt = make_optimizer(cfg, modality_labels, 'updates')
  params = _params()
  state = opt.init(params)
  g = _grads(0)
  u0, state = opt.update(g, state, params, modality_scales={})
  u1, state = opt.update(g, state, params, modality_scales={})
  assert_trees_all_close(u0, jax.tree.map(lambda x: -x, g), rtol=1e-6)
  assert_trees_all_close(u1, jax.tree.map(lambda x: -_torch_lr(1, 1.0, 1) * x, g), rtol=1e-5)


# ---------------------------------------------------------------- config errors

def test_invalid_apply_to_raises():
  with pytest.raises(ValueError, match='params'):
    make_optimizer(_cfg(), modality_labels, 'params')


def test_invalid_optimizer_name_raises():
  with pytest.raises(ValueError, match='rmsprop'):
    make_optimizer(_cfg(name='rmsprop'), modality_labels, 'gradients')


def test_invalid_schedule_raises():
  with pytest.raises(ValueError, match='linear'):
    make_optimizer(_cfg(schedule='linear'), modality_labels, 'gradients')


def test_invalid_restart_settings_raise():
  with pytest.raises(ValueError):
    cosine_restarts_schedule(1.0, warmup_steps=0, period=0)
  with pytest.raises(ValueError):
    cosine_restarts_schedule(1.0, warmup_steps=0, mult=0)
