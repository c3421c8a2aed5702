"""LFM (mlb_jax/balancing/lfm.py): the worked examples, the alignment term against the textbook JS,
the fitted schedule, the learnable update and eta halving by hand, the Hessian-vector product against
closed forms and a finite difference, three modalities, stability, the epoch hook's data (validation
samples only), its train/inference mode, one compilation per run, and a short training through the
loop."""

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from mlb_jax import balancing, build, checkpointing, loop
from mlb_jax.balancing import lfm
from mlb_jax.balancing.method import EpochContext, LossInputs

PAIR = ('audio', 'video')
THREE = ('audio', 'video', 'text')


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ce(z, y):
  return float(np.mean(-np.log(softmax(z)[np.arange(len(y)), y])))


def kl(a, b):
  """sum_c a log(a / b), per row."""
  return np.sum(a * np.log(a / b), axis=-1)


def code_alignment(zp, zq):
  p, q = softmax(np.asarray(zp, np.float64)), softmax(np.asarray(zq, np.float64))
  m = (p + q) / 2
  return float(0.5 * (np.mean(kl(m, p)) + np.mean(kl(m, q))))


def lfm_config(**section):
  config = synthetic_config.get_config('method=lfm,smoke')
  for key, value in section.items():
    config.balancing.lfm[key] = value
  return config


def toy(modalities=PAIR, shapes=None, encoders=None, size=8, **section):
  """A built `Training` on small inputs, its state, and a batch of `size` (labels 0..3 repeated)."""
  config = lfm_config(**section)
  shapes = shapes or {m: (6,) for m in modalities}
  for m in modalities:
    config.model.encoders[m] = (encoders or {}).get(m, 'mlp')
  training = build.build_training(config, build.DataSpec(modalities, shapes, 4, 4))
  state = training.initial_state({m: np.zeros(shapes[m], np.float32) for m in modalities}, [0])
  rng = np.random.default_rng(5)
  batch = {m: rng.normal(size=(size, *shapes[m])).astype(np.float32) for m in modalities}
  return training, state, batch, np.arange(size) % 4


@pytest.fixture(scope='module')
def pair():
  """Two MLP encoders (no BatchNorm), 12 samples (the hook takes the first 8)."""
  return toy(size=12)


@pytest.fixture(scope='module')
def pair_bn():
  """A conv (BatchNorm) audio encoder and an MLP video encoder, 8 samples."""
  return toy(shapes={'audio': (8, 8), 'video': (6,)}, encoders={'audio': 'conv'})


def method_for(training, **section):
  """The LFM method of `section` for an already built model (same shapes: its hook compiles to the same
  program, served by the compilation cache)."""
  spec = training.spec
  ctx = balancing.MethodContext(spec.modalities, spec.steps_per_epoch, spec.num_classes, {})
  return lfm.make_lfm(spec.modalities, lfm_config(**section).balancing, ctx)


def first(batch, labels, n=8):
  return {m: v[:n] for m, v in batch.items()}, labels[:n]


def loss_inputs(training, state, batch, labels, step=0):
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  out, _ = training.model.apply(variables, batch, train=True, detach_unimodal=True,
                                rngs={'dropout': jax.random.PRNGKey(0)}, mutable=['batch_stats'])
  return LossInputs(training.model, variables, batch, out, jnp.asarray(labels, jnp.int32), jnp.int32(step),
                    jax.random.PRNGKey(1), training.loss_weights)


class Holder:
  """The part of a TrainState the epoch hook reads and writes."""

  def __init__(self, state, method_state=None):
    self.params, self.batch_stats = state.params, state.batch_stats
    self.method_state = state.method_state if method_state is None else method_state

  def replace(self, method_state):
    return Holder(self, method_state)


class HeldOutOnly:
  """An `EpochContext` factory whose only working service is `held_out`."""

  def __init__(self, training, batch, labels):
    self.training, self.held, self.calls = training, {**batch, 'label': labels}, []

  def refuse(self, *args, **kwargs):
    raise AssertionError('LFM asked for more than its held-out samples')

  def held_out(self, n):
    self.calls.append(n)
    return {k: v[:n] for k, v in self.held.items()}

  def __call__(self, epoch):
    return EpochContext(epoch=epoch, step=epoch * 4, steps_per_epoch=4, num_classes=4, seed=3,
                        evaluate=self.refuse, encode=self.refuse, held_out=self.held_out,
                        model=self.training.model)


# ---------------------------------------------------------------- closed-form pieces

def test_alignment_worked_example_is_not_the_textbook_js():
  p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
  zp, zq = jnp.log(jnp.asarray([p], jnp.float32)), jnp.log(jnp.asarray([q], jnp.float32))
  a = float(lfm.alignment(zp, zq))
  np.testing.assert_allclose(a, 0.117973, atol=2e-6)
  m = (p + q) / 2
  js = 0.5 * (kl(p, m) + kl(q, m))
  np.testing.assert_allclose(js, 0.101749, atol=1e-6)
  assert abs(a - js) > 0.01                      # KL(m || p), as the code's kl_div(log p, m)
  np.testing.assert_allclose(float(lfm.alignment(zq, zp)), a, rtol=1e-6)   # symmetric


def test_alignment_batch_mean_by_hand():
  rng = np.random.default_rng(0)
  zp, zq = rng.normal(size=(5, 4)) * 2, rng.normal(size=(5, 4)) * 2
  value = float(lfm.alignment(jnp.asarray(zp, jnp.float32), jnp.asarray(zq, jnp.float32)))
  np.testing.assert_allclose(value, code_alignment(zp, zq), rtol=1e-5)
  # batchmean: the mean of the per-sample values, not their sum
  each = [code_alignment(zp[i:i + 1], zq[i:i + 1]) for i in range(5)]
  np.testing.assert_allclose(value, np.mean(each), rtol=1e-5)


def test_classification_term_is_ce_of_the_mean_contribution():
  rng = np.random.default_rng(1)
  za, zv = rng.normal(size=(6, 4)) * 3, rng.normal(size=(6, 4)) * 3
  y = np.array([0, 1, 2, 3, 0, 1])
  value = float(lfm.classification_loss([jnp.asarray(za, jnp.float32), jnp.asarray(zv, jnp.float32)],
                                        jnp.asarray(y)))
  np.testing.assert_allclose(value, ce(0.5 * za + 0.5 * zv, y), rtol=1e-5)
  assert abs(value - ce(za + zv, y)) > 1e-3     # not BalanceBenchmark's CE of the summed logits


def test_fitted_schedule_worked_example():
  expected = {0: 0.204624, 10: 0.247759, 50: 0.436681, 100: 0.539155, 150: 0.821314, 199: 0.915989}
  for epoch, k0 in expected.items():
    got0, got1 = lfm.fitted_weights(epoch)
    np.testing.assert_allclose(float(got0), k0, atol=2e-6, err_msg=f'epoch {epoch}')
    np.testing.assert_allclose(float(got0) + float(got1), 1.0, atol=1e-6)
  # the epoch from the step inside a jitted function (4 steps per epoch): step 41 is epoch 10
  k0 = jax.jit(lambda step: lfm.fitted_weights(step // 4)[0])(jnp.int32(41))
  np.testing.assert_allclose(float(k0), 0.247759, atol=2e-6)
  # beyond the fit (which reaches -2.31 at epoch 250) k is held at epoch 199's
  np.testing.assert_allclose(float(lfm.fitted_weights(250)[0]), 0.915989, atol=2e-6)


def test_learnable_update_by_hand_and_its_clip():
  k0, k1, ok = lfm.learnable_update(0.5, 1e-2, 3.0)
  assert ok
  np.testing.assert_allclose([k0, k1], [0.53, 0.47], rtol=1e-12)
  assert lfm.learnable_update(0.5, 1e-2, 100.0)[:2] == pytest.approx((0.95, 0.05))    # clipped below
  assert lfm.learnable_update(0.9, 1e-2, -100.0)[:2] == pytest.approx((0.05, 0.95))   # clipped above
  assert lfm.learnable_update(0.95, 1e-4, -5.0)[1] == 0.95
  # float64 on the host: a step below float32's resolution at 0.95 is kept
  k1 = lfm.learnable_update(0.95, 1e-4, 2e-4)[1]
  assert k1 == 0.95 - 2e-8 and np.float32(k1) == np.float32(0.95)
  hi, lo = lfm.split_float64(k1)
  assert float(hi) + float(lo) == pytest.approx(k1, abs=1e-15)
  # a zero or non-finite alpha-gradient leaves k1 unchanged
  assert lfm.learnable_update(0.3, 1e-4, 0.0) == (0.7, 0.3, True)
  for bad in (math.nan, math.inf):
    assert lfm.learnable_update(0.3, 1e-4, bad) == (0.7, 0.3, False)


def test_eta_halving():
  assert [e for e in range(61) if lfm.halved_eta(1.0, e, 20) != 1.0] == [20, 40, 60]
  assert lfm.halved_eta(1e-4, 20, 20) == 5e-5
  assert lfm.halved_eta(1e-4, 0, 20) == 1e-4          # never at epoch 0
  eta = 1e-4
  for e in range(46):
    eta = lfm.halved_eta(eta, e, 20)
  assert eta == 1e-4 / 4
  assert [e for e in range(5) if lfm.halved_eta(1.0, e, 1) != 1.0] == [1, 2, 3, 4]


def test_hessian_vector_product_closed_forms():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(5, 5))
  a = jnp.asarray(a + a.T, jnp.float32)
  x = {'u': jnp.asarray(rng.normal(size=2), jnp.float32), 'w': jnp.asarray(rng.normal(size=3), jnp.float32)}
  v = {'u': jnp.asarray(rng.normal(size=2), jnp.float32), 'w': jnp.asarray(rng.normal(size=3), jnp.float32)}
  flat = lambda t: jnp.concatenate([t['u'], t['w']])
  quadratic = lambda t: 0.5 * flat(t) @ a @ flat(t) + jnp.sum(flat(t))
  h = lfm.hessian_vector_product(quadratic, x, v)
  np.testing.assert_allclose(flat(h), a @ flat(v), rtol=1e-5, atol=1e-5)
  quartic = lambda t: jnp.sum(flat(t) ** 4) / 4                     # H = diag(3 x^2)
  h = lfm.hessian_vector_product(quartic, x, v)
  np.testing.assert_allclose(flat(h), 3 * flat(x) ** 2 * flat(v), rtol=1e-5)


def test_alpha_gradient_against_a_finite_difference_of_the_gradient(pair):
  training, state, batch, y = pair
  batch, y = first(batch, y)
  model, params, stats = training.model, state.params, state.batch_stats
  labels, k = jnp.asarray(y, jnp.int32), jnp.asarray([0.3, 0.7], jnp.float32)
  value = float(lfm.jit_alpha_gradient(model, PAIR)(params, stats, batch, labels, k, jnp.bool_(False),
                                                    jax.random.PRNGKey(0)))

  def terms(p):
    out = model.apply({'params': p, 'batch_stats': stats}, batch, train=False)
    return lfm.lfm_terms([out.contributions[m] for m in PAIR], labels)

  grad_total = jax.jit(jax.grad(lambda p: k[0] * terms(p)[0] + k[1] * terms(p)[1]))
  c = jax.jit(jax.grad(lambda p: terms(p)[0]))(params)
  eps = 1e-2
  shifted = lambda s: jax.tree.map(lambda x, d: x + s * eps * d, params, c)
  fd = jax.tree.map(lambda a, b: (a - b) / (2 * eps), grad_total(shifted(1.0)), grad_total(shifted(-1.0)))
  leaf = lfm.first_parameter(fd, PAIR)
  paths = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(fd['audio']['encoder'])
           if x is leaf]
  assert len(paths) == 1 and paths[0].endswith("['kernel']"), paths
  assert abs(value) > 1e-6                       # the check has teeth
  np.testing.assert_allclose(value, float(jnp.mean(leaf)), rtol=2e-2, atol=1e-7)


# ---------------------------------------------------------------- the loss on a model

def test_loss_by_hand_learnable_and_fitted(pair):
  training, state, batch, y = pair
  batch, y = first(batch, y)
  ms = state.method_state
  np.testing.assert_allclose(ms.k, [0.05, 0.95])            # the authors' initial weights
  assert training.method.unimodal_heads == 'probe' and training.method.fusion == 'late_linear'
  ms = ms._replace(k=jnp.asarray([0.3, 0.7], jnp.float32), alpha_grad=jnp.float32(0.25))
  inputs = loss_inputs(training, state, batch, y)
  objectives, _, metrics = training.method.loss(inputs, ms)
  out = inputs.output
  za, zv = (np.asarray(out.contributions[m]) for m in PAIR)
  probes = sum(ce(np.asarray(out.logits[m]), y) for m in PAIR)
  expected = 2 * (0.3 * ce(0.5 * za + 0.5 * zv, y) + 0.7 * code_alignment(za, zv))
  np.testing.assert_allclose(objectives['lfm'], expected, rtol=1e-5)
  np.testing.assert_allclose(objectives['probes'], probes, rtol=1e-5)
  assert (metrics['lfm_k0'], metrics['lfm_k1']) == pytest.approx((0.3, 0.7))
  assert float(metrics['lfm_alpha_grad']) == 0.25
  np.testing.assert_allclose(metrics['loss_lfm_alignment'], code_alignment(za, zv), rtol=1e-5)
  # fitted: step 9 of 4 per epoch is epoch 2
  fitted = method_for(training, schedule='fitted')
  assert fitted.epoch_update is None and fitted.init_state(None) == ()
  inputs = loss_inputs(training, state, batch, y, step=9)
  objectives, _, metrics = fitted.loss(inputs, ())
  k0 = sum(a * 2.0 ** i for i, a in enumerate(lfm.FITTED_COEFFICIENTS))
  za, zv = (np.asarray(inputs.output.contributions[m]) for m in PAIR)
  expected = 2 * (k0 * ce(0.5 * za + 0.5 * zv, y) + (1 - k0) * code_alignment(za, zv))
  np.testing.assert_allclose(objectives['lfm'], expected, rtol=1e-5)
  np.testing.assert_allclose(metrics['lfm_k0'], k0, rtol=1e-5)


def test_three_modalities_average_the_pairs():
  rng = np.random.default_rng(3)
  zs = [rng.normal(size=(5, 3)) * 2 for _ in range(3)]
  value = float(lfm.pairwise_alignment([jnp.asarray(z, jnp.float32) for z in zs]))
  pairs = [code_alignment(zs[a], zs[b]) for a, b in itertools.combinations(range(3), 2)]
  np.testing.assert_allclose(value, np.mean(pairs), rtol=1e-5)
  assert abs(value - np.sum(pairs)) > 1e-3
  with pytest.raises(ValueError, match='at least 2'):
    lfm.pairwise_alignment(zs[:1])
  # on a 3-modality model: the loss, an epoch update and a train step
  training, state, batch, y = toy(THREE)
  inputs = loss_inputs(training, state, batch, y)
  objectives, _, metrics = training.method.loss(inputs, state.method_state)
  c = [np.asarray(inputs.output.contributions[m]) for m in THREE]
  pairs = [code_alignment(c[a], c[b]) for a, b in itertools.combinations(range(3), 2)]
  expected = 2 * (0.05 * ce(sum(c) / 3, y) + 0.95 * np.mean(pairs))
  np.testing.assert_allclose(objectives['lfm'], expected, rtol=1e-5)
  holder = training.method.epoch_update(HeldOutOnly(training, batch, y)(0), Holder(state))
  assert int(holder.method_state.updates) == 1 and np.isfinite(float(holder.method_state.alpha_grad))
  state, step_metrics = training.train_step(state, training.place_batch([{**batch, 'label': y}]))
  assert all(np.isfinite(v) for v in jax.device_get(step_metrics).values())


def test_saturated_and_identical_predictions_are_finite():
  big = jnp.asarray([[3e4, -3e4, 0.0], [-3e4, 3e4, 0.0]], jnp.float32)
  other = jnp.asarray([[-3e4, 3e4, 0.0], [0.0, 0.0, 3e4]], jnp.float32)
  value, grads = jax.value_and_grad(lambda a, b: lfm.alignment(a, b), argnums=(0, 1))(big, other)
  assert np.isfinite(float(value)) and float(value) > 1e3
  assert all(np.all(np.isfinite(g)) for g in grads)
  ce_value, ce_grad = jax.value_and_grad(lambda a: lfm.classification_loss([a, other], jnp.array([1, 0])))(big)
  assert np.isfinite(float(ce_value)) and np.all(np.isfinite(ce_grad))
  # identical predictions: zero alignment, zero gradient, no NaN
  value, grad = jax.value_and_grad(lambda a: lfm.alignment(a, big))(big)
  assert float(value) == pytest.approx(0.0, abs=1e-6) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_zero_parameters_give_a_zero_finite_alpha_gradient(pair):
  training, state, batch, y = pair
  method = method_for(training, initial_k1=0.5)
  zero = state.replace(params=jax.tree.map(jnp.zeros_like, state.params), method_state=method.init_state(None))
  holder = method.epoch_update(HeldOutOnly(training, batch, y)(0), Holder(zero))
  ms = holder.method_state
  assert float(ms.alpha_grad) == 0.0 and int(ms.updates) == 1 and int(ms.rejected) == 0
  np.testing.assert_allclose(ms.k, [0.5, 0.5])


# ---------------------------------------------------------------- the epoch hook

def test_epoch_update_uses_the_held_out_samples_only_and_halves_eta_first(pair):
  training, state, batch, y = pair
  method = method_for(training, initial_k1=0.5, lr_alpha=10.0, halve_every=2)
  fake = HeldOutOnly(training, batch, y)
  held, labels = first(batch, y)
  direct = lfm.jit_alpha_gradient(training.model, PAIR)
  holder = Holder(state, method.init_state(None))
  k1, eta = 0.5, 10.0
  for epoch in range(4):
    k = jnp.asarray(holder.method_state.k)
    holder = method.epoch_update(fake(epoch), holder)
    value = float(direct(state.params, state.batch_stats, held, jnp.asarray(labels, jnp.int32), k,
                         jnp.bool_(epoch == 0), jax.random.fold_in(jax.random.PRNGKey(3), epoch)))
    eta = eta / 2 if epoch == 2 else eta                     # halved at epoch 2, before its update
    k1 = min(0.95, max(0.05, k1 - eta * value))
    ms = holder.method_state
    np.testing.assert_allclose(float(ms.alpha_grad), value, rtol=1e-5)
    np.testing.assert_allclose(float(ms.eta), eta, rtol=1e-6)
    np.testing.assert_allclose(float(ms.k[1]) + float(ms.k1_low), k1, rtol=1e-6)
    np.testing.assert_allclose(float(ms.k[0]), 1 - k1, rtol=1e-6)
  assert fake.calls == [8] * 4                    # held_out_samples, of the 12 the context holds
  assert abs(k1 - 0.5) > 1e-3 and int(holder.method_state.updates) == 4
  # nothing but the method state changes
  assert holder.params is state.params and holder.batch_stats is state.batch_stats
  # a different sample count is asked for as configured
  fake = HeldOutOnly(training, batch, y)
  method_for(training, held_out_samples=12).epoch_update(fake(0), Holder(state))
  assert fake.calls == [12]


def test_train_mode_at_epoch_zero_inference_after_statistics_untouched_one_trace(pair_bn):
  training, state, batch, y = pair_bn
  assert state.batch_stats, 'the audio encoder has BatchNorm'
  labels, k = jnp.asarray(y, jnp.int32), state.method_state.k
  fold = lambda e: jax.random.fold_in(jax.random.PRNGKey(3), e)
  direct = lfm.jit_alpha_gradient(training.model, PAIR)
  with_batch_stats, with_running = (float(direct(state.params, state.batch_stats, batch, labels, k, jnp.bool_(t),
                                                 fold(e))) for t, e in ((True, 0), (False, 1)))
  assert abs(with_batch_stats - with_running) > 1e-3 * max(abs(with_running), 1e-6)
  fake = HeldOutOnly(training, batch, y)
  before = jax.device_get(state.batch_stats)
  traces, got = [], []
  for epoch in range(3):
    holder = training.method.epoch_update(fake(epoch), Holder(state))   # the same state each epoch
    got.append(float(holder.method_state.alpha_grad))
    traces.append(lfm.TRACES['alpha_gradient'])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(holder.batch_stats), before)
  np.testing.assert_allclose(got, [with_batch_stats, with_running, with_running], rtol=1e-5)
  assert traces[0] == traces[1] == traces[2], traces      # compiled once, not per epoch
  # held_out_mode='train' uses batch statistics at every epoch (BalanceBenchmark's mode)
  holder = method_for(training, held_out_mode='train').epoch_update(fake(1), Holder(state))
  np.testing.assert_allclose(float(holder.method_state.alpha_grad), with_batch_stats, rtol=1e-5)


def test_settings_and_fusions_are_validated():
  ctx = balancing.MethodContext(PAIR, 4, 8, {'audio': 16, 'video': 16})
  for key, value in (('schedule', 'cosine'), ('lr_alpha', -1.0), ('lr_alpha', math.nan), ('halve_every', 0),
                     ('held_out_samples', 0), ('initial_k1', 0.99), ('held_out_mode', 'eval')):
    with pytest.raises(ValueError, match=f'balancing.lfm.{key}'):
      lfm.make_lfm(PAIR, lfm_config(**{key: value}).balancing, ctx)
  config = lfm_config()
  config.model.fusion = 'mid_mlp'
  spec = build.DataSpec(PAIR, {'audio': (32, 32), 'video': (3, 16, 16, 3)}, 8, 4)
  with pytest.raises(ValueError, match="'lfm' is not defined with model.fusion 'mid_mlp'"):
    build.build_training(config, spec)
  assert balancing.METHODS['lfm'] is lfm.make_lfm


# ---------------------------------------------------------------- end to end

def test_smoke_training_moves_k1_after_an_epoch_boundary(tmp_path):
  # The smoke data's alpha-gradients are negative: from the authors' k1 = 0.95 the clip holds k1, so this
  # run starts at 0.5 with a larger eta, which makes every update visible in float32.
  config = lfm_config(initial_k1=0.5, lr_alpha=5.0)
  config.train.num_steps = 5          # 4 batches per epoch: step 5 is the first of epoch 1
  config.train.eval_every = 5
  workdir = str(tmp_path / 'w')
  results = loop.train_and_evaluate(config, workdir)
  assert results[0]['method'] == 'lfm'
  assert all(np.isfinite(d['loss']) for d in results[0]['test'].values())
  with open(os.path.join(workdir, loop.HISTORY)) as f:
    train = [r for r in map(json.loads, f) if r['split'] == 'train']
  assert [r['step'] for r in train] == [1, 2, 3, 4, 5]
  assert all(np.isfinite(r['loss']) for r in train)
  assert [r['lfm_updates'] for r in train] == [1, 1, 1, 1, 2]
  g0, g1 = train[0]['lfm_alpha_grad'], train[4]['lfm_alpha_grad']
  assert g0 != 0.0 and g1 != 0.0
  k1_epoch0 = lfm.learnable_update(0.5, 5.0, g0)[1]
  k1_epoch1 = lfm.learnable_update(k1_epoch0, 5.0, g1)[1]
  np.testing.assert_allclose([r['lfm_k1'] for r in train], [k1_epoch0] * 4 + [k1_epoch1], rtol=1e-5)
  assert train[4]['lfm_k1'] != train[3]['lfm_k1'] != 0.5
  exp = build.build(config)
  state, _ = checkpointing.restore(checkpointing.manager(workdir, checkpointing.LAST), loop.initial_state([exp]))
  ms = jax.device_get(state.method_state)
  np.testing.assert_allclose(float(ms.k[1]) + float(ms.k1_low), k1_epoch1, rtol=1e-6)   # checkpointed


def test_first_parameter_is_the_first_kernel_of_the_first_encoder():
  kernel = jnp.ones((7, 7, 1, 8))
  tree = {'audio': {'encoder': {'resnet': {'bn1': {'bias': jnp.zeros(8), 'scale': jnp.ones(8)},
                                           'conv1': {'kernel': kernel}}}},
          'video': {'encoder': {'Dense_0': {'bias': jnp.zeros(3), 'kernel': jnp.zeros((2, 3))}}}}
  assert lfm.first_parameter(tree, ('audio', 'video')) is kernel      # the stem conv, not bn1's bias
  assert lfm.first_parameter(tree, ('video', 'audio')) is tree['video']['encoder']['Dense_0']['kernel']
  no_kernel = {'audio': {'encoder': {'bn': {'bias': jnp.zeros(2)}}}}
  assert lfm.first_parameter(no_kernel, ('audio',)) is no_kernel['audio']['encoder']['bn']['bias']
