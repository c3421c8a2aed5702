"""MBSD and CML (mlb_jax/balancing/mbsd.py, cml.py): every closed-form piece against hand-computed
values, the loss of a 3-modality model on a toy batch, and a 2-step smoke training of each.

The methods are registered (and their config sections added) inside the tests when the library does
not have them yet, so the tests hold before and after their registration."""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from mlb_jax import balancing, build, loop
from mlb_jax.balancing import cml, mbsd
from mlb_jax.balancing.method import LossInputs

SECTIONS = {
    'mbsd': {'start_epoch': 0, 'end_epoch': 1500, 'kl': 'toolkit', 'distance': 'auto'},
    'cml': {'lam': 0.1, 'start_epoch': 0, 'end_epoch': 1500, 'order_seed': 0},
}
MAKERS = {'mbsd': mbsd.make_mbsd, 'cml': cml.make_cml}


@pytest.fixture
def registered(monkeypatch):
  for name, make in MAKERS.items():
    if name not in balancing.METHODS:
      monkeypatch.setitem(balancing.METHODS, name, make)


def with_sections(config):
  for name, fields in SECTIONS.items():
    if name not in config.balancing:
      config.balancing[name] = ml_collections.ConfigDict(fields)
  return config


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ce(z, y):
  return float(np.mean(-np.log(softmax(z)[np.arange(len(y)), y])))


# ---------------------------------------------------------------- MBSD pieces

def test_mbsd_worked_example():
  # p_a = 0.7 (audio right), p_v = 0.2: w = 0.5, KL term 0.2 (ln 0.2 - 0.7), weighted -0.230944
  w, ps, pw = mbsd.pair_weights(jnp.array([0.7]), jnp.array([0.2]), jnp.array([True]), jnp.array([False]))
  np.testing.assert_allclose([w[0], ps[0], pw[0]], [0.5, 0.7, 0.2], rtol=1e-6)
  kl = mbsd.pseudo_kl(ps, pw)
  np.testing.assert_allclose(kl, [-0.461888], atol=1e-6)
  np.testing.assert_allclose(w * kl, [-0.230944], atol=1e-6)
  # the same through mbsd_terms from logits with those probabilities (2 classes, label 0)
  z_a = jnp.log(jnp.array([[0.7, 0.3]]))
  z_v = jnp.log(jnp.array([[0.2, 0.8]]))
  terms = mbsd.mbsd_terms([z_a, z_v], jnp.array([0]))
  np.testing.assert_allclose(terms['kl'], -0.230944, atol=1e-6)
  rs = 0.5 * ((math.log(0.7) - math.log(0.2)) ** 2 + (math.log(0.3) - math.log(0.8)) ** 2) / 2   # on logits
  np.testing.assert_allclose(terms['rs'], rs, rtol=1e-5)
  np.testing.assert_allclose(terms['weight'], 0.5, rtol=1e-6)


def test_mbsd_true_kl_option():
  kl = mbsd.pseudo_kl(jnp.array([0.7]), jnp.array([0.2]), 'log')
  np.testing.assert_allclose(kl, [0.2 * (math.log(0.2) - math.log(0.7))], rtol=1e-6)
  with pytest.raises(ValueError, match='kl'):
    mbsd.pseudo_kl(jnp.array([0.7]), jnp.array([0.2]), 'other')


def test_mbsd_weight_is_zero_when_both_are_wrong_and_at_ties():
  p_a, p_b = jnp.array([0.4, 0.3, 0.5]), jnp.array([0.1, 0.3, 0.2])
  right_a, right_b = jnp.array([False, True, False]), jnp.array([False, True, True])
  w, ps, pw = mbsd.pair_weights(p_a, p_b, right_a, right_b)
  np.testing.assert_allclose(w, [0.0, 0.0, 0.3], atol=1e-7)     # neither right; a tie; b right
  np.testing.assert_allclose(ps, [0.4, 0.3, 0.5], atol=1e-7)   # ps, pw are defined for every sample
  np.testing.assert_allclose(pw, [0.1, 0.3, 0.2], atol=1e-7)


def test_mbsd_batch_terms_by_hand():
  rng = np.random.default_rng(0)
  z_a, z_v = rng.normal(size=(6, 4)) * 2, rng.normal(size=(6, 4)) * 2
  y = np.array([0, 1, 2, 3, 0, 1])
  terms = mbsd.mbsd_terms([jnp.asarray(z_a, jnp.float32), jnp.asarray(z_v, jnp.float32)], jnp.asarray(y))
  p_a, p_v = softmax(z_a)[np.arange(6), y], softmax(z_v)[np.arange(6), y]
  right = (z_a.argmax(-1) == y) | (z_v.argmax(-1) == y)
  ps, pw = np.maximum(p_a, p_v), np.minimum(p_a, p_v)
  w = np.where(right, ps - pw, 0.0)
  assert 0 < right.sum() < 6, right   # the mask matters in this batch
  rs = np.mean((z_a - z_v) ** 2, -1)
  kl = pw * (np.log(pw) - ps)
  np.testing.assert_allclose(terms['rs'], np.sum(w * rs) / 6, rtol=1e-5)
  np.testing.assert_allclose(terms['kl'], np.sum(w * kl) / 6, rtol=1e-5)
  np.testing.assert_allclose(terms['weight'], w.mean(), rtol=1e-5)


def test_mbsd_three_modalities_average_the_pairs_on_probabilities():
  rng = np.random.default_rng(1)
  zs = [rng.normal(size=(5, 3)) * 2 for _ in range(3)]
  y = np.array([0, 1, 2, 0, 1])
  terms = mbsd.mbsd_terms([jnp.asarray(z, jnp.float32) for z in zs], jnp.asarray(y))
  probs = [softmax(z) for z in zs]
  p = [q[np.arange(5), y] for q in probs]
  right = [z.argmax(-1) == y for z in zs]
  rs, kl = [], []
  for a, b in ((0, 1), (0, 2), (1, 2)):
    ps, pw = np.maximum(p[a], p[b]), np.minimum(p[a], p[b])
    w = np.where(right[a] | right[b], ps - pw, 0.0)
    rs.append(np.sum(w * np.mean((probs[a] - probs[b]) ** 2, -1)) / 5)
    kl.append(np.sum(w * pw * (np.log(pw) - ps)) / 5)
  np.testing.assert_allclose(terms['rs'], np.mean(rs), rtol=1e-5)
  np.testing.assert_allclose(terms['kl'], np.mean(kl), rtol=1e-5)
  # distance='logits' measures the 3-modality distance on the logits instead
  logits = mbsd.mbsd_terms([jnp.asarray(z, jnp.float32) for z in zs], jnp.asarray(y), distance='logits')
  assert not np.isclose(logits['rs'], terms['rs'])
  assert mbsd.resolve_distance('auto', 2) == 'logits' and mbsd.resolve_distance('auto', 4) == 'probabilities'


def test_mbsd_gradient_flows_through_the_weights():
  rng = np.random.default_rng(2)
  z_a, z_v = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(2))
  y = jnp.array([0, 1, 2, 0])

  def by_hand(z_a, stop):
    p_a = jax.nn.softmax(z_a)[jnp.arange(4), y]
    p_v = jax.nn.softmax(z_v)[jnp.arange(4), y]
    right = (jnp.argmax(z_a, -1) == y) | (jnp.argmax(z_v, -1) == y)
    ps, pw = jnp.maximum(p_a, p_v), jnp.minimum(p_a, p_v)
    w = jnp.where(right, ps - pw, 0.0)
    w = jax.lax.stop_gradient(w) if stop else w
    return jnp.mean(w * jnp.mean((z_a - z_v) ** 2, -1)) + jnp.mean(w * pw * (jnp.log(pw) - ps))

  ours = jax.grad(lambda z: sum(mbsd.mbsd_terms([z, z_v], y)[k] for k in ('rs', 'kl')))(z_a)
  np.testing.assert_allclose(ours, jax.grad(lambda z: by_hand(z, False))(z_a), rtol=1e-5, atol=1e-6)
  assert not np.allclose(ours, jax.grad(lambda z: by_hand(z, True))(z_a), atol=1e-6)


def test_mbsd_is_finite_for_zero_probabilities():
  z_a = jnp.array([[0.0, -1e4, -1e4], [60.0, -60.0, 0.0]])    # softmax underflows to exact zeros
  z_v = jnp.array([[-1e4, 0.0, -1e4], [-60.0, 60.0, 0.0]])
  y = jnp.array([1, 0])
  assert float(jax.nn.softmax(z_a)[0, 1]) == 0.0
  for kind in mbsd.KL_CHOICES:
    value, grads = jax.value_and_grad(
        lambda a, v, kind=kind: sum(mbsd.mbsd_terms([a, v], y, kl=kind)[k] for k in ('rs', 'kl')),
        argnums=(0, 1))(z_a, z_v)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads), kind


# ---------------------------------------------------------------- CML pieces

def test_cml_worked_example_batch_sum_hinge():
  conf, conf_p = jnp.array([0.6, 0.5]), jnp.array([0.7, 0.3])
  assert float(cml.confidence_hinge(conf, conf_p)) == 0.0        # sum -0.1: sample 0's rise is cancelled
  np.testing.assert_allclose(cml.confidence_hinge(conf, jnp.array([0.7, 0.6])), 0.2, rtol=1e-6)


def test_cml_confidence_is_the_max_probability():
  z = jnp.log(jnp.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]]))
  np.testing.assert_allclose(cml.confidence(z), [0.5, 0.9], rtol=1e-6)


def test_cml_removal_keeps_the_full_bias():
  f_a, f_v = np.array([[1.0, 2.0]]), np.array([[0.5, -1.0, 3.0]])
  w_a, w_v = np.arange(6.0).reshape(2, 3) / 10, np.arange(9.0).reshape(3, 3) / 7 - 0.5
  b = np.array([0.3, -0.2, 1.0])
  c = np.stack([f_a @ w_a + b / 2, f_v @ w_v + b / 2])
  z = c.sum(0)
  removed = cml.removed_logits(jnp.asarray(z), jnp.asarray(c), jnp.asarray(b / 2), jnp.array([0, 1]))
  assert len(removed) == 1
  np.testing.assert_allclose(removed[0], f_a @ w_a + b, rtol=1e-6)    # video (last) removed
  removed = cml.removed_logits(jnp.asarray(z), jnp.asarray(c), jnp.asarray(b / 2), jnp.array([1, 0]))
  np.testing.assert_allclose(removed[0], f_v @ w_v + b, rtol=1e-6)    # audio removed
  # three modalities: sequential removals from the end of the order, the bias kept whole each time
  rng = np.random.default_rng(3)
  parts = rng.normal(size=(3, 2, 4))
  b3 = rng.normal(size=4)
  c3 = parts + b3 / 3
  removed = cml.removed_logits(jnp.asarray(c3.sum(0)), jnp.asarray(c3), jnp.asarray(b3 / 3), jnp.array([2, 0, 1]))
  np.testing.assert_allclose(removed[0], parts[2] + parts[0] + b3, rtol=1e-5)
  np.testing.assert_allclose(removed[1], parts[2] + b3, rtol=1e-5)


def test_cml_order_is_a_permutation_per_epoch():
  key = jax.random.PRNGKey(0)
  orders = [np.asarray(cml.removal_order(jnp.int32(s), key, 4, 3)) for s in range(40)]
  for s, order in enumerate(orders):
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_array_equal(order, orders[4 * (s // 4)])          # fixed within an epoch
  expected = np.asarray(jax.random.permutation(jax.random.fold_in(key, 7), 3))
  np.testing.assert_array_equal(orders[29], expected)                    # step 29 is in epoch 7
  assert len({tuple(o) for o in orders}) > 1                             # and it changes between epochs
  jitted = jax.jit(lambda s: cml.removal_order(s, key, 4, 3))
  np.testing.assert_array_equal(jitted(jnp.int32(29)), expected)


def test_cml_terms_by_hand():
  rng = np.random.default_rng(4)
  z, z1 = rng.normal(size=(5, 3)) * 2, rng.normal(size=(5, 3)) * 2
  y = np.array([0, 1, 2, 0, 1])
  terms = cml.cml_terms(jnp.asarray(z, jnp.float32), [jnp.asarray(z1, jnp.float32)], jnp.asarray(y))
  np.testing.assert_allclose(terms['ce_fused'], ce(z, y), rtol=1e-5)
  np.testing.assert_allclose(terms['ce_removed'], [ce(z1, y)], rtol=1e-5)
  rise = np.sum(softmax(z1).max(-1) - softmax(z).max(-1))
  np.testing.assert_allclose(terms['hinges'], [max(0.0, rise)], rtol=1e-5, atol=1e-6)
  flips = np.sum((z.argmax(-1) == y) & (z1.argmax(-1) != y))
  assert float(terms['flips']) == flips


# ---------------------------------------------------------------- the losses on a 3-modality model

THREE = ('audio', 'video', 'text')


def three_modality(method, **section):
  config = with_sections(synthetic_config.get_config(f'method={method},smoke'))
  config.model.encoders.video = 'mlp'
  for key, value in section.items():
    config.balancing[method][key] = value
  spec = build.DataSpec(THREE, {m: (6,) for m in THREE}, 4, 4)
  training = build.build_training(config, spec)
  state = training.initial_state({m: np.zeros(6, np.float32) for m in THREE}, [0])
  rng = np.random.default_rng(5)
  batch = {m: jnp.asarray(rng.normal(size=(8, 6)), jnp.float32) for m in THREE}
  labels = jnp.asarray(np.arange(8) % 4, jnp.int32)
  return training, state, batch, labels


def toy_loss(training, state, batch, labels, step=0):
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  out, _ = training.model.apply(variables, batch, train=True, detach_unimodal=True,
                                rngs={'dropout': jax.random.PRNGKey(0)}, mutable=['batch_stats'])
  inputs = LossInputs(training.model, variables, batch, out, labels, jnp.int32(step), jax.random.PRNGKey(1),
                      training.loss_weights)
  objectives, _, metrics = training.method.loss(inputs, state.method_state)
  return out, jax.device_get(objectives), jax.device_get(metrics)


def probes(out, y):
  return sum(ce(np.asarray(out.logits[m]), y) for m in THREE)


def test_mbsd_loss_with_three_modalities(registered):
  training, state, batch, labels = three_modality('mbsd')
  out, objectives, metrics = toy_loss(training, state, batch, labels)
  y = np.asarray(labels)
  c = [np.asarray(out.contributions[m]) for m in THREE]
  z = np.asarray(out.logits['fused'])
  terms = mbsd.mbsd_terms([jnp.asarray(x) for x in c], labels)
  expected = ce(z, y) + sum(ce(x, y) for x in c) + float(terms['rs']) + float(terms['kl']) + probes(out, y)
  np.testing.assert_allclose(sum(objectives.values()), expected, rtol=1e-5)
  np.testing.assert_allclose(objectives['mbsd_rs'], terms['rs'], rtol=1e-5)
  for m, x in zip(THREE, c):
    np.testing.assert_allclose(metrics[f'loss_contribution_{m}'], ce(x, y), rtol=1e-5)
  assert all(np.isfinite(v) for v in metrics.values())
  # outside the window only CE(z) and the probes remain (the toolkit's loss)
  training, state, batch, labels = three_modality('mbsd', start_epoch=1)
  out, objectives, metrics = toy_loss(training, state, batch, labels)
  np.testing.assert_allclose(sum(objectives.values()), ce(np.asarray(out.logits['fused']), y) + probes(out, y),
                             rtol=1e-5)
  assert metrics['mbsd_active'] == 0.0
  state, step_metrics = training.train_step(state, training.place_batch([{**batch, 'label': labels}]))
  assert all(np.isfinite(v) for v in jax.device_get(step_metrics).values())


def rising_confidence(state, batch, order):
  """Identical encoders and inputs, fusion slices 3A (kept last) and -A (removed): z_0 = f A, z_1 = 2 f A,
  z_2 = 3 f A, so each removal raises the confidence and both hinges are positive."""
  params, stats = jax.device_get(state.params), jax.device_get(state.batch_stats)
  for m in THREE[1:]:
    params[m] = {**params[m], 'encoder': params[THREE[0]]['encoder']}
    if THREE[0] in stats:
      stats[m] = stats[THREE[0]]
  kernel = np.asarray(params['fusion']['kernel'])
  d = kernel.shape[0] // 3
  a = kernel[:d] * 3
  slices = [3 * a if i == order[0] else -a for i in range(3)]
  params['fusion'] = {'kernel': np.concatenate(slices), 'bias': np.asarray(params['fusion']['bias'])}
  same = {m: batch[THREE[0]] for m in THREE}
  return state.replace(params=jax.tree.map(jnp.asarray, params), batch_stats=jax.tree.map(jnp.asarray, stats)), same


def test_cml_loss_with_three_modalities(registered):
  training, state, batch, labels = three_modality('cml', lam=0.5)
  step = 9                                   # epoch 2 of 4 steps each
  order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(0), 2), 3))
  state, batch = rising_confidence(state, batch, order)
  out, objectives, metrics = toy_loss(training, state, batch, labels, step)
  y = np.asarray(labels)
  bias = np.asarray(state.params['fusion']['bias'])
  c = np.stack([np.asarray(out.contributions[m]) for m in THREE])
  parts = c - bias / 3                       # the feature-dependent part of each contribution
  z0 = np.asarray(out.logits['fused'])
  z1 = z0 - parts[order[2]]
  z2 = z1 - parts[order[1]]
  np.testing.assert_allclose(z2, parts[order[0]] + bias, rtol=1e-4, atol=1e-5)
  conf = [softmax(x).max(-1) for x in (z0, z1, z2)]
  rises = [np.sum(conf[1] - conf[0]), np.sum(conf[2] - conf[1])]
  assert min(rises) > 0.01, rises            # both hinges are active: the check has teeth
  hinge = sum(max(0.0, r) for r in rises)
  expected = (ce(z0, y) + ce(z1, y) + ce(z2, y)) / 3 + 0.5 * hinge + probes(out, y)
  np.testing.assert_allclose(sum(objectives.values()), expected, rtol=1e-5)
  np.testing.assert_allclose(metrics['cml_hinge'], hinge, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([metrics['loss_removed_1'], metrics['loss_removed_2']], [ce(z1, y), ce(z2, y)],
                             rtol=1e-5)
  assert [metrics['cml_removed_1'], metrics['cml_removed_2']] == [order[2], order[1]]
  assert all(np.isfinite(v) for v in metrics.values())
  # outside the window: CE(z) and the probes
  training, state, batch, labels = three_modality('cml', start_epoch=3)
  out, objectives, _ = toy_loss(training, state, batch, labels, step)
  np.testing.assert_allclose(sum(objectives.values()), ce(np.asarray(out.logits['fused']), y) + probes(out, y),
                             rtol=1e-5)
  state, step_metrics = training.train_step(state, training.place_batch([{**batch, 'label': labels}]))
  assert all(np.isfinite(v) for v in jax.device_get(step_metrics).values())


@pytest.mark.parametrize('method', sorted(MAKERS))
def test_non_decomposable_fusions_are_refused(registered, method):
  config = with_sections(synthetic_config.get_config(f'method={method},smoke'))
  config.model.fusion = 'mid_mlp'
  spec = build.DataSpec(('audio', 'video'), {'audio': (32, 32), 'video': (3, 16, 16, 3)}, 8, 4)
  with pytest.raises(ValueError, match=f"'{method}' is not defined with model.fusion 'mid_mlp'"):
    build.build_training(config, spec)


def test_constructors_validate_their_settings(registered):
  config = with_sections(synthetic_config.get_config('method=mbsd,smoke'))
  ctx = balancing.MethodContext(('audio', 'video'), 4, 8, {'audio': 16, 'video': 16})
  for key, value in (('kl', 'true'), ('distance', 'cosine'), ('end_epoch', -1)):
    bad = with_sections(synthetic_config.get_config('method=mbsd,smoke'))
    bad.balancing.mbsd[key] = value
    with pytest.raises(ValueError, match='balancing.mbsd'):
      mbsd.make_mbsd(('audio', 'video'), bad.balancing, ctx)
  bad = with_sections(synthetic_config.get_config('method=cml,smoke'))
  bad.balancing.cml.lam = -0.1
  with pytest.raises(ValueError, match='balancing.cml.lam'):
    cml.make_cml(('audio', 'video'), bad.balancing, ctx)
  assert mbsd.make_mbsd(('audio', 'video'), config.balancing, ctx).unimodal_source == 'contributions'


# ---------------------------------------------------------------- end to end

@pytest.mark.parametrize('method,metric', [('mbsd', 'mbsd_kl'), ('cml', 'cml_hinge')])
def test_smoke_training(registered, tmp_path, method, metric):
  config = with_sections(synthetic_config.get_config(f'method={method},smoke'))
  workdir = str(tmp_path / 'w')
  results = loop.train_and_evaluate(config, workdir)
  assert results[0]['method'] == method
  assert all(np.isfinite(d['loss']) for d in results[0]['test'].values())
  with open(os.path.join(workdir, loop.HISTORY)) as f:
    train = [r for r in map(json.loads, f) if r['split'] == 'train']
  assert [r['step'] for r in train] == [1, 2]
  assert all(np.isfinite(r['loss']) and np.isfinite(r[metric]) for r in train), train
