"""OPM and G-Blending (mlb_jax/balancing/opm.py, gblending.py): the worked examples, the drop and its
rescale, the all-dropped batch, the weight rule and its guards, the epoch hook's splits, and short
trainings through the loop.

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
from mlb_jax import balancing, build, checkpointing, loop
from mlb_jax.balancing import gblending, opm
from mlb_jax.balancing.method import EpochContext, LossInputs

SECTIONS = {
    'opm': {'q_base': 0.5, 'lam': 0.5, 'p_exe': 0.7, 'warmup_epochs': 5},
    'gblending': {'super_epoch': 10},
}
MAKERS = {'opm': opm.make_opm, 'gblending': gblending.make_gblending}
PAIR = ('audio', 'video')


@pytest.fixture
def registered(monkeypatch):
  for name, make in MAKERS.items():
    if name not in balancing.METHODS:
      monkeypatch.setitem(balancing.METHODS, name, make)


def smoke_config(method, **section):
  config = synthetic_config.get_config(f'method={method},smoke')
  for name, fields in SECTIONS.items():
    if name not in config.balancing:
      config.balancing[name] = ml_collections.ConfigDict(fields)
  for key, value in section.items():
    config.balancing[method][key] = value
  return config


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ce_per_sample(z, y):
  return -np.log(softmax(z)[np.arange(len(y)), y])


def ce(z, y):
  return float(np.mean(ce_per_sample(z, y)))


def toy(method, modalities=PAIR, **section):
  """A built `Training` on flat inputs, its state, and a batch of 8."""
  config = smoke_config(method, **section)
  config.model.encoders.video = 'mlp'
  spec = build.DataSpec(modalities, {m: (6,) for m in modalities}, 4, 4)
  training = build.build_training(config, spec)
  state = training.initial_state({m: np.zeros(6, np.float32) for m in modalities}, [0])
  rng = np.random.default_rng(5)
  batch = {m: jnp.asarray(rng.normal(size=(8, 6)), jnp.float32) for m in modalities}
  labels = jnp.asarray(np.arange(8) % 4, jnp.int32)
  return training, state, batch, labels


def loss_inputs(training, state, batch, labels, *, step=0, rng=1, params=None):
  variables = {'params': state.params if params is None else params, 'batch_stats': state.batch_stats}
  out, _ = training.model.apply(variables, batch, train=True,
                                detach_unimodal=training.method.unimodal_heads == 'probe',
                                rngs={'dropout': jax.random.PRNGKey(0)}, mutable=['batch_stats'])
  return LossInputs(training.model, variables, batch, out, labels, jnp.int32(step), jax.random.PRNGKey(rng),
                    training.loss_weights)


# ---------------------------------------------------------------- OPM pieces

def test_opm_worked_example():
  ratios = opm.drop_ratios(jnp.array([20.0, 10.0]))
  np.testing.assert_allclose(ratios, [math.tanh(1.0), 0.0], atol=1e-6)
  np.testing.assert_allclose(ratios[0], 0.761593, atol=2e-6)   # tanh(1) = 0.7615942 (quoted truncated)
  # (q_base, q_a, theta, scale, eps of the rescale's denominator)
  for q_base, q_a, theta, scale, eps in ((0.5, 0.690398, 0.345199, 1.527182, 0.0),    # the authors' script
                                         (0.4, 0.552319, 0.276159, 1.381500, 1e-5)):  # BalanceBenchmark
    q = opm.drop_probabilities(ratios, q_base, 0.5)
    np.testing.assert_allclose(q, [q_a, 0.0], atol=1e-6)
    t = opm.drop_rate(q, (512, 512))
    np.testing.assert_allclose(t, theta, atol=1e-6)
    np.testing.assert_allclose(opm.rescale(t, eps), scale, atol=2e-6)
  np.testing.assert_allclose(opm.rescale(jnp.float32(0.276159)), 1.381520, atol=2e-6)   # ours: no eps
  assert float(opm.rescale(jnp.float32(1.0))) == 1.0                                    # all dropped: finite


def test_opm_ratios_against_the_mean_of_the_others():
  s = np.array([6.0, 3.0, 1.0])
  expected = [math.tanh(max(0.0, s[i] / np.mean(np.delete(s, i)) - 1.0)) for i in range(3)]
  np.testing.assert_allclose(opm.drop_ratios(jnp.asarray(s)), expected, atol=1e-6)
  assert expected[1] == 0.0 and expected[0] > 0   # 3 < mean(6, 1): only the leader is dropped
  # never every modality: some score is at most the mean of the others, so some q is 0
  rng = np.random.default_rng(0)
  for m in (2, 3, 5):
    for _ in range(50):
      q = opm.drop_probabilities(opm.drop_ratios(jnp.asarray(rng.uniform(0.1, 10, m))), 0.5, 0.5)
      assert float(jnp.min(q)) == 0.0
  # q is clipped to [0, 1]
  np.testing.assert_allclose(opm.drop_probabilities(jnp.array([0.9, 0.0]), 0.9, 2.0), [1.0, 0.0])


def test_opm_rescale_preserves_the_concatenated_expectation():
  b, dims, q = 20000, {'audio': 4, 'video': 12}, jnp.array([0.6, 0.2])
  feats = {m: jnp.ones((b, d), jnp.float32) for m, d in dims.items()}
  out, keep, any_kept, theta = opm.drop_features(feats, PAIR, q, jax.random.PRNGKey(3), jnp.bool_(True))
  np.testing.assert_allclose(theta, (4 * 0.6 + 12 * 0.2) / 16, rtol=1e-6)
  concatenated = jnp.concatenate([out[m] for m in PAIR], axis=1)
  np.testing.assert_allclose(jnp.mean(concatenated), 1.0, atol=0.02)        # E[h'] = h over the concatenation
  for i, m in enumerate(PAIR):                                              # per modality: (1 - q_m) / (1 - theta)
    np.testing.assert_allclose(jnp.mean(out[m]), (1 - q[i]) / (1 - theta), atol=0.02)
    np.testing.assert_allclose(jnp.mean(keep[:, i]), 1 - q[i], atol=0.02)
    values = np.unique(np.asarray(out[m]))
    np.testing.assert_allclose(values, [0.0, 1.0 / (1.0 - float(theta))], rtol=1e-6)
  np.testing.assert_array_equal(any_kept, jnp.max(keep, axis=1) > 0)
  # equal q: each modality's expectation is preserved
  out, _, _, _ = opm.drop_features(feats, PAIR, jnp.array([0.3, 0.3]), jax.random.PRNGKey(4), jnp.bool_(True))
  for m in PAIR:
    np.testing.assert_allclose(jnp.mean(out[m]), 1.0, atol=0.02)
  # no drop: the features pass unchanged
  out, keep, any_kept, theta = opm.drop_features(feats, PAIR, q, jax.random.PRNGKey(3), jnp.bool_(False))
  for m in PAIR:
    np.testing.assert_array_equal(out[m], feats[m])
  assert float(theta) == 0.0 and bool(jnp.all(any_kept)) and float(jnp.min(keep)) == 1.0


def test_opm_kept_mean():
  v = jnp.array([1.0, 2.0, 3.0, 4.0])
  np.testing.assert_allclose(opm.kept_mean(v, jnp.array([True, False, True, False])), 2.0)
  assert float(opm.kept_mean(v, jnp.zeros(4, bool))) == 0.0


def test_opm_all_dropped_batch_is_finite_and_does_not_move(registered):
  training, state, batch, labels = toy('opm')

  def total(params):
    inputs = loss_inputs(training, state, batch, labels, params=params)
    objectives, metrics = opm.refused_objectives(inputs, PAIR, jnp.ones(2), jax.random.PRNGKey(2),
                                                 jnp.bool_(True))
    return sum(objectives.values()), metrics

  (value, metrics), grads = jax.value_and_grad(total, has_aux=True)(state.params)
  assert float(value) == 0.0
  assert float(metrics['opm_kept_samples']) == 0.0 and np.isfinite(float(metrics['opm_theta']))
  leaves = jax.tree.leaves(grads)
  assert leaves and all(np.all(np.isfinite(g)) and not np.any(g) for g in map(np.asarray, leaves))


def test_opm_loss_is_the_refused_ce_over_kept_samples(registered):
  training, state, batch, labels = toy('opm', p_exe=1.0, warmup_epochs=-1, q_base=0.9)
  inputs = loss_inputs(training, state, batch, labels, rng=7)
  objectives, _, metrics = training.method.loss(inputs, state.method_state)
  out, y = inputs.output, np.asarray(labels)
  scores = [np.sum(softmax(np.asarray(out.contributions[m]))[np.arange(8), y]) for m in PAIR]
  np.testing.assert_allclose([metrics['opm_score_audio'], metrics['opm_score_video']], scores, rtol=1e-5)
  lead = int(np.argmax(scores))
  ratio = math.tanh(max(0.0, scores[lead] / scores[1 - lead] - 1.0))
  q = np.zeros(2)
  q[lead] = min(1.0, 0.9 * (1 + 0.5 * ratio)) if ratio > 0 else 0.0
  np.testing.assert_allclose([metrics['opm_q_audio'], metrics['opm_q_video']], q, atol=1e-5)
  assert metrics['opm_execute'] == 1.0
  # the same masks, then the late-linear fusion by hand
  _, rng = jax.random.split(inputs.rng)
  mask_rng, _ = jax.random.split(rng)
  feats, keep, any_kept, theta = opm.drop_features(out.features, PAIR, jnp.asarray(q, jnp.float32), mask_rng,
                                                   jnp.bool_(True))
  params = jax.device_get(state.params['fusion'])
  z = np.concatenate([np.asarray(feats[m]) for m in PAIR], 1) @ params['kernel'] + params['bias']
  kept = np.asarray(any_kept)
  assert kept.all()                                 # M = 2: the weaker modality is never dropped
  expected = float(np.sum(ce_per_sample(z, y) * kept) / kept.sum())
  np.testing.assert_allclose(objectives['fused'], expected, rtol=1e-5)
  probes = sum(ce(np.asarray(out.logits[m]), y) for m in PAIR)
  np.testing.assert_allclose(objectives['probes'], probes, rtol=1e-5)
  np.testing.assert_allclose(metrics['opm_theta'], q.sum() / 2, atol=1e-6)   # equal widths


@pytest.mark.parametrize('section,step', [({'p_exe': 0.0, 'warmup_epochs': -1}, 0),    # never drawn
                                          ({'p_exe': 1.0, 'warmup_epochs': 5}, 23)])   # warm-up: epoch 5
def test_opm_without_drop_is_fused_ce_plus_probes(registered, section, step):
  training, state, batch, labels = toy('opm', **section)
  inputs = loss_inputs(training, state, batch, labels, step=step)
  objectives, _, metrics = training.method.loss(inputs, state.method_state)
  y = np.asarray(labels)
  expected = ce(np.asarray(inputs.output.logits['fused']), y) + sum(
      ce(np.asarray(inputs.output.logits[m]), y) for m in PAIR)
  np.testing.assert_allclose(sum(objectives.values()), expected, rtol=1e-5)
  assert metrics['opm_execute'] == 0.0 and metrics['opm_theta'] == 0.0
  if step == 23:
    inputs = loss_inputs(training, state, batch, labels, step=24)    # epoch 6: drops
    assert training.method.loss(inputs, state.method_state)[2]['opm_active'] == 1.0


def test_opm_is_deterministic_for_a_given_rng(registered):
  training, state, batch, labels = toy('opm', p_exe=1.0, warmup_epochs=-1)
  runs = []
  for r in (3, 3):
    objectives, _, metrics = training.method.loss(loss_inputs(training, state, batch, labels, rng=r),
                                                  state.method_state)
    runs.append({k: float(v) for k, v in {**objectives, **metrics}.items()})
  assert runs[0] == runs[1]
  feats = {m: jnp.ones((64, 5)) for m in PAIR}
  q = jnp.array([0.5, 0.0])
  masks = [opm.drop_features(feats, PAIR, q, jax.random.PRNGKey(k), jnp.bool_(True))[1] for k in (1, 1, 2)]
  np.testing.assert_array_equal(masks[0], masks[1])
  assert not np.array_equal(masks[0], masks[2])
  # the per-step draw: over many rngs the drop executes about p_exe of the time
  training, state, batch, labels = toy('opm', p_exe=0.7, warmup_epochs=-1)
  fn = jax.jit(lambda r: training.method.loss(loss_inputs(training, state, batch, labels, rng=0)._replace(rng=r),
                                              state.method_state)[2]['opm_execute'])
  rate = np.mean([float(fn(jax.random.PRNGKey(k))) for k in range(200)])
  assert 0.6 < rate < 0.8, rate
  assert 0.55 < rate < 0.85, rate


def test_opm_three_modalities_train_step_is_finite(registered):
  three = ('audio', 'video', 'text')
  training, state, batch, labels = toy('opm', three, p_exe=1.0, warmup_epochs=-1)
  inputs = loss_inputs(training, state, batch, labels)
  objectives, _, metrics = training.method.loss(inputs, state.method_state)
  assert min(float(metrics[f'opm_q_{m}']) for m in three) == 0.0
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  state, step_metrics = training.train_step(state, training.place_batch([{**batch, 'label': labels}]))
  assert all(np.isfinite(v) for v in jax.device_get(step_metrics).values())


def test_opm_settings_and_fusions_are_validated(registered):
  ctx = balancing.MethodContext(PAIR, 4, 8, {'audio': 16, 'video': 16})
  for key, value in (('q_base', 1.5), ('lam', -1.0), ('p_exe', 2.0), ('warmup_epochs', -2)):
    with pytest.raises(ValueError, match=f'balancing.opm.{key}'):
      opm.make_opm(PAIR, smoke_config('opm', **{key: value}).balancing, ctx)
  config = smoke_config('opm')
  config.model.fusion = 'mid_mlp'
  spec = build.DataSpec(PAIR, {'audio': (32, 32), 'video': (3, 16, 16, 3)}, 8, 4)
  with pytest.raises(ValueError, match="'opm' is not defined with model.fusion 'mid_mlp'"):
    build.build_training(config, spec)


def test_opm_mmcosine_fusion_step_is_finite(registered):
  config = smoke_config('opm', p_exe=1.0, warmup_epochs=-1)
  config.model.fusion = 'mmcosine'
  config.model.encoders.video = 'mlp'
  spec = build.DataSpec(PAIR, {m: (6,) for m in PAIR}, 4, 4)
  training = build.build_training(config, spec)
  state = training.initial_state({m: np.zeros(6, np.float32) for m in PAIR}, [0])
  batch = {m: jnp.asarray(np.random.default_rng(1).normal(size=(8, 6)), jnp.float32) for m in PAIR}
  state, metrics = training.train_step(state, training.place_batch([{**batch, 'label': jnp.arange(8) % 4}]))
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())


# ---------------------------------------------------------------- G-Blending pieces

def test_gblending_worked_example():
  # BalanceBenchmark's table (branches audio, visual, output); the rule is the same on per-sample means
  weights, raw, ok = gblending.gblending_weights((100, 120, 90), (30, 35, 28), (60, 90, 40), (27, 33, 25))
  assert ok
  np.testing.assert_allclose(raw, [0.0021914, 0.0025510, 0.0013581], rtol=1e-4)
  np.testing.assert_allclose(raw[0], 3 / 37 ** 2, rtol=1e-12)
  np.testing.assert_allclose(weights, [0.35921, 0.41817, 0.22262], atol=1e-5)
  np.testing.assert_allclose(np.sum(weights), 1.0, rtol=1e-12)


@pytest.mark.parametrize('t0,v0,tn,vn', [
    ((1.0, 2.0, 3.0), (1.5, 2.5, 3.5), (0.5, 1.0, 2.0), (1.0, 1.5, 2.5)),   # delta O = 0 for every head
    ((1.0, 2.0, 3.0), (1.5, 2.5, 3.5), (0.5, 1.0, 2.0), (1.5, 2.5, 3.5)),   # delta G = 0: all raw weights 0
    ((1.0, 2.0, 3.0), (1.5, 2.5, 3.5), (0.5, 1.0, 2.0), (np.nan, 2.0, 3.0)),
    ((1.0, 2.0, 3.0), (1.5, 2.5, 3.5), (0.5, 1.0, 2.0), (np.inf, 2.0, 3.0)),
    ((1.0, 2.0, 3.0), (1.5, 2.5, 3.5), (0.5, 1.2, 2.0), (1.0, 1.5, 2.5)),   # one head's delta O = 0
])
def test_gblending_guards_keep_the_previous_weights(t0, v0, tn, vn):
  weights, _, ok = gblending.gblending_weights(t0, v0, tn, vn)
  assert not ok and weights is None
  previous = jnp.array([0.5, 0.3, 0.2], jnp.float32)
  state = gblending.GBlendingState(previous, jnp.asarray([t0, v0], jnp.float32), jnp.ones((), bool),
                                   jnp.int32(4), jnp.int32(1))
  new = gblending.gblending_update(state, tn, vn)
  np.testing.assert_array_equal(new.weights, previous)
  assert int(new.rejected) == 2 and int(new.updates) == 4
  np.testing.assert_allclose(new.start, np.asarray([tn, vn], np.float32))


class FakeContext:
  """An `EpochContext` whose evaluate serves made-up losses and refuses 'test'."""

  def __init__(self, heads):
    self.heads, self.calls = heads, []

  def __call__(self, epoch):
    self.epoch = epoch
    return EpochContext(epoch=epoch, step=epoch * 4, steps_per_epoch=4, num_classes=8, seed=0,
                        evaluate=self.evaluate, encode=None, held_out=None, model=None)

  def evaluate(self, state, split, heads):
    if split == 'test':
      raise AssertionError('epoch_update asked for the test split')
    assert tuple(heads) == self.heads
    self.calls.append(split)
    epoch = self.epoch
    base = {'train': 1.0, 'val': 1.5}[split]
    return {h: {'loss': base / (1 + epoch * (i + 1) * (0.3 if split == 'train' else 0.1)), 'accuracy': 0.5}
            for i, h in enumerate(heads)}


def test_gblending_epoch_update_uses_train_and_val_only(registered):
  config = smoke_config('gblending', super_epoch=2)
  ctx = balancing.MethodContext(PAIR, 4, 8, {'audio': 16, 'video': 16})
  method = gblending.make_gblending(PAIR, config.balancing, ctx)
  heads = ('fused', *PAIR)

  class Holder:
    def __init__(self, s):
      self.method_state = s

    def replace(self, method_state):
      return Holder(method_state)

  state = Holder(method.init_state(None))
  np.testing.assert_allclose(state.method_state.weights, [1 / 3] * 3)
  fake = FakeContext(heads)
  recorded = []
  for epoch in range(5):
    state = method.epoch_update(fake(epoch), state)
    recorded.append(np.asarray(state.method_state.weights))
  assert fake.calls == ['train', 'val'] * 3          # epochs 0, 2, 4 only
  assert set(fake.calls) == {'train', 'val'}
  assert int(state.method_state.updates) == 2 and int(state.method_state.rejected) == 0
  np.testing.assert_allclose(recorded[1], [1 / 3] * 3)  # the first window uses the initial weights
  # epoch 4's weights from the losses measured at epochs 2 and 4, by the pure rule
  loss = lambda split, e: [{'train': 1.0, 'val': 1.5}[split] / (1 + e * (i + 1) * (0.3 if split == 'train' else 0.1))
                           for i in range(3)]
  expected, _, ok = gblending.gblending_weights(loss('train', 2), loss('val', 2), loss('train', 4), loss('val', 4))
  assert ok
  np.testing.assert_allclose(recorded[4], expected, rtol=1e-5)
  np.testing.assert_allclose(np.sum(recorded[4]), 1.0, rtol=1e-6)


def test_gblending_loss_uses_the_state_weights(registered):
  training, state, batch, labels = toy('gblending')
  weights = jnp.array([0.5, 0.2, 0.3], jnp.float32)
  ms = state.method_state._replace(weights=weights)
  inputs = loss_inputs(training, state, batch, labels)
  objectives, _, metrics = training.method.loss(inputs, ms)
  y = np.asarray(labels)
  heads = ('fused', *PAIR)
  expected = sum(float(w) * ce(np.asarray(inputs.output.logits[h]), y) for w, h in zip(weights, heads))
  np.testing.assert_allclose(sum(objectives.values()), expected, rtol=1e-5)
  np.testing.assert_allclose([metrics[f'gblend_w_{h}'] for h in heads], weights)
  assert training.method.unimodal_heads == 'trained'


def test_gblending_settings_are_validated(registered):
  ctx = balancing.MethodContext(PAIR, 4, 8, {'audio': 16, 'video': 16})
  with pytest.raises(ValueError, match='balancing.gblending.super_epoch'):
    gblending.make_gblending(PAIR, smoke_config('gblending', super_epoch=0).balancing, ctx)


# ---------------------------------------------------------------- end to end

def test_opm_smoke_training(registered, tmp_path):
  config = smoke_config('opm', p_exe=1.0, warmup_epochs=-1)
  workdir = str(tmp_path / 'w')
  results = loop.train_and_evaluate(config, workdir)
  assert results[0]['method'] == 'opm'
  assert all(np.isfinite(d['loss']) for d in results[0]['test'].values())
  with open(os.path.join(workdir, loop.HISTORY)) as f:
    train = [r for r in map(json.loads, f) if r['split'] == 'train']
  assert [r['step'] for r in train] == [1, 2]
  assert all(np.isfinite(r['loss']) and r['opm_execute'] == 1.0 for r in train), train


def test_gblending_smoke_training_updates_the_weights(registered, tmp_path):
  config = smoke_config('gblending', super_epoch=1)
  config.train.num_steps = 12          # 3 epochs of 4 batches: windows [0, 1] and [1, 2]
  config.train.eval_every = 12
  config.train.log_every = 4
  workdir = str(tmp_path / 'w')
  results = loop.train_and_evaluate(config, workdir)
  assert all(np.isfinite(d['loss']) for d in results[0]['test'].values())
  exp = build.build(config)
  template = loop.initial_state([exp])
  state, _ = checkpointing.restore(checkpointing.manager(workdir, checkpointing.LAST), template)
  ms = jax.device_get(state.method_state)
  assert int(ms.updates) == 2 and int(ms.rejected) == 0, ms    # both windows gave weights
  np.testing.assert_allclose(np.sum(ms.weights), 1.0, rtol=1e-5)
  assert not np.allclose(ms.weights, np.full(3, 1 / 3), atol=1e-4), ms.weights
  with open(os.path.join(workdir, loop.HISTORY)) as f:
    train = [r for r in map(json.loads, f) if r['split'] == 'train']
  assert train[-1]['gblend_updates'] == float(ms.updates)
