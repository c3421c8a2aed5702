"""LFM: learning the modality gap (Yang et al., NeurIPS 2024, "Facilitating Multimodal Classification
via Dynamically Learning Modality Gap"), as the authors' code computes it (docs/methods.md#lfm), with
BalanceBenchmark's differences listed below. Defined for M >= 2.

The per-modality logits o_m are the fused head's contributions z_m (late_linear or mmcosine, which
decompose; the fusion bias is split equally, b/M in each, where the authors' two heads each carry
their own bias). The unimodal heads are stop-gradient probes (their CE is added, training the heads
only, so unimodal accuracy is still measured).

Terms, with p_m = softmax(o_m) and a batch of B samples:

    CE  = CE((1/M) sum_m o_m, y)                  (the authors' 0.5 o_a + 0.5 o_v for M = 2)
    A(p, q) = 1/2 [KL(m || p) + KL(m || q)],  m = (p + q) / 2,  KL summed over classes, mean over B
    Abar = mean of A(p_a, p_b) over the M(M-1)/2 pairs a < b

A is what the authors' `kl_div(log p, m)` computes: KL(m || p), not the textbook Jensen-Shannon
1/2 [KL(p || m) + KL(q || m)]. For p = (0.5, 0.5), q = (0.9, 0.1): A = 0.117973, JS = 0.101749.
Everything is computed from log-softmax (log m = logaddexp(log p, log q) - log 2), so saturated
probabilities give a finite value and gradient (the authors' p.log() gives inf there).

Step loss (times the fused weight w_f of `config.loss`, 1 by default), plus the probes' CE:

    L = 2 [k0 CE + k1 Abar]

k = (k0, k1) follows one of two schedules (`balancing.lfm.schedule`):

* 'fitted': the authors' polynomial in the epoch e = step // steps_per_epoch (computed inside the
  jitted loss), k0(e) = sum_{i=0..5} a_i e^i, k1 = 1 - k0 (`fitted_weights`). The fit covers the
  authors' 200 epochs and leaves [0, 1] soon after (k0(250) = -2.31); our extension holds
  k at epoch 199's value beyond it.
* 'learnable' (default, the authors' variant): k lives in the method state with eta (lr_alpha). At
  the start of every epoch e, `epoch_update`
    1. halves eta when e > 0 and e % halve_every == 0 (`halved_eta`), before this epoch's update;
    2. on the first `held_out_samples` samples of the validation split (`EpochContext.held_out`),
       with L_tot = k0 CE + k1 Abar (no factor 2, no probes), computes c = grad CE and
       h = Hessian(L_tot) c, c held constant (`hessian_vector_product`: `jax.jvp` of `jax.grad`);
    3. takes the alpha-gradient g_alpha = mean of h over one parameter tensor: the authors take their
       model's first parameter tensor (the audio ResNet's first conv kernel); ours is the first
       kernel, in `jax.tree.leaves` order, of the first modality's encoder,
       `params[modalities[0]]['encoder']` (`first_parameter`; for ResNet-18 the stem conv's kernel);
    4. k1 <- clip(k1 - eta g_alpha, 0.05, 0.95), k0 = 1 - k1 (`learnable_update`; a non-finite
       g_alpha leaves k unchanged and is counted in `rejected`). The update runs on the host in
       float64, as the authors' Python floats; the state keeps k1 as float32 plus its float32
       remainder (`split_float64`), so steps below float32's resolution at k1 (6e-8 near 0.95;
       eta g_alpha is often smaller) accumulate instead of being rounded away.
  Epoch 0 runs an update too. The initial k is (0.05, 0.95): CE weight 0.05, alignment 0.95.
  The forward pass of step 2 runs as the authors' model does (`held_out_mode = 'authors'`): in
  train mode at epoch 0 (a fresh module), in inference mode afterwards (their validation pass
  leaves the model in eval mode when the next epoch's update runs); 'train' uses batch statistics
  every epoch. BatchNorm statistics computed there are never written back; dropout (if any) uses
  the key fold_in(PRNGKey(seed), epoch). The function is jitted once per run (cached per model).

BalanceBenchmark's trainer differs: its held-out batch is the first batch of its validation loader,
which is the test set (8 samples, a quarter of it; ours: validation samples, never test); its
initial weights are flipped (CE 0.95, alignment 0.05; `initial_k1 = 0.05` here); its CE is on the
fused logits z (the sum of the contributions, not their mean); its update runs in train mode every
epoch and writes those samples' BatchNorm statistics into the model; and the learnable update always
runs, whatever its config's `method` says. The authors hold out 16 random training samples (their
step uses half of them); ours come from the validation split.
"""

import collections
import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlb_jax.balancing.method import EpochContext, LossInputs, Method, MethodContext, multiloss_objectives
from mlb_jax.losses import FUSED
from mlb_jax.models.multimodal import MASK_SUFFIX

FUSIONS = ('late_linear', 'mmcosine')
SCHEDULES = ('learnable', 'fitted')
HELD_OUT_MODES = ('authors', 'train')
K_MIN, K_MAX = 0.05, 0.95   # the authors' clip of k1
# k0(e) = sum_i a_i e^i, the authors' fit of their learnable k0 over 200 epochs (k1 = 1 - k0).
FITTED_COEFFICIENTS = (2.04623704e-1, 3.35472727e-3, 1.22989557e-4, -2.92947416e-6, 2.23835486e-8,
                       -5.39717505e-11)
FITTED_LAST_EPOCH = 199
# Traces of the epoch hook's jitted function (a test counts them: one per run).
TRACES = collections.Counter()


class LFMState(NamedTuple):
  k: jax.Array           # float32 [2]: (k0 CE weight, k1 alignment weight), what the step uses
  k1_low: jax.Array      # float32 []: k1 - float32(k1), so the host keeps k1 in float64 across epochs
  eta: jax.Array         # float32 []: lr_alpha after the halvings so far
  alpha_grad: jax.Array  # float32 []: the last alpha-gradient (0 before the first update)
  updates: jax.Array     # int32 []: updates made
  rejected: jax.Array    # int32 []: non-finite alpha-gradients ignored


def alignment(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """A = 1/2 [KL(m || p) + KL(m || q)], m = (p + q) / 2, p and q the softmax of [B, C] logits;
  summed over classes, mean over the batch (the authors' `kl_div(log p, m, 'batchmean')`)."""
  log_p = jax.nn.log_softmax(logits_p.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(logits_q.astype(jnp.float32), axis=-1)
  log_m = jnp.logaddexp(log_p, log_q) - math.log(2.0)
  m = jnp.exp(log_m)
  kl_mp = jnp.sum(m * (log_m - log_p), axis=-1)
  kl_mq = jnp.sum(m * (log_m - log_q), axis=-1)
  return 0.5 * (jnp.mean(kl_mp) + jnp.mean(kl_mq))


def pairwise_alignment(logits) -> jax.Array:
  """Abar: the mean of `alignment` over the M(M-1)/2 pairs (a < b) of a list of M >= 2 [B, C] logits."""
  if len(logits) < 2:
    raise ValueError(f'LFM needs at least 2 modalities, got {len(logits)}')
  pairs = [alignment(logits[a], logits[b]) for a, b in itertools.combinations(range(len(logits)), 2)]
  return sum(pairs) / len(pairs)


def classification_loss(logits, labels: jax.Array) -> jax.Array:
  """CE of the mean of a list of M [B, C] logits (the authors' 0.5 o_a + 0.5 o_v)."""
  mean = sum(z.astype(jnp.float32) for z in logits) / len(logits)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mean, labels))


def lfm_terms(logits, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(CE, Abar) of a list of M per-modality logits [B, C]."""
  return classification_loss(logits, labels), pairwise_alignment(logits)


def step_loss(k0, k1, ce, align) -> jax.Array:
  """The authors' step loss 2 [k0 CE + k1 A]."""
  return 2.0 * (k0 * ce + k1 * align)


def fitted_weights(epoch) -> tuple[jax.Array, jax.Array]:
  """(k0, k1) of the fitted schedule at `epoch` (0-based; held at epoch 199 beyond it): the
  polynomial k0 = sum_i a_i e^i (Horner form, float32) and k1 = 1 - k0."""
  e = jnp.minimum(jnp.asarray(epoch), FITTED_LAST_EPOCH).astype(jnp.float32)
  k0 = jnp.zeros((), jnp.float32)
  for a in reversed(FITTED_COEFFICIENTS):
    k0 = k0 * e + jnp.float32(a)
  return k0, 1.0 - k0


def halved_eta(eta, epoch: int, halve_every: int):
  """eta / 2 at epochs e > 0 with e % halve_every == 0 (the authors' halving of lr_alpha), else eta."""
  return eta / 2 if epoch > 0 and epoch % halve_every == 0 else eta


def learnable_update(k1: float, eta: float, alpha_grad: float, low: float = K_MIN, high: float = K_MAX):
  """(k0, k1, ok), host side in float64 as the authors' Python floats: k1 <- clip(k1 - eta alpha_grad,
  low, high), k0 = 1 - k1; a non-finite alpha_grad (ok False) leaves k1 unchanged."""
  k1, eta, alpha_grad = float(k1), float(eta), float(alpha_grad)
  ok = math.isfinite(alpha_grad)
  if ok:
    k1 = min(high, max(low, k1 - eta * alpha_grad))
  return 1.0 - k1, k1, ok


def split_float64(x: float) -> tuple[np.float32, np.float32]:
  """(hi, lo) float32 with hi = float32(x) and hi + lo = x to about 1e-15 (k1's storage)."""
  hi = np.float32(x)
  return hi, np.float32(x - float(hi))


def hessian_vector_product(fn, params, vector):
  """H(fn)(params) . vector for a scalar `fn` of a pytree: the forward derivative of grad(fn) along
  `vector` (held constant)."""
  return jax.jvp(jax.grad(fn), (params,), (vector,))[1]


def first_parameter(tree, modalities):
  """The parameter tensor whose HVP mean is the alpha-gradient: the first weight matrix or filter
  (leaf named 'kernel'), in `jax.tree.leaves` order, of `tree[modalities[0]]['encoder']` (its first
  leaf when it has no kernel). For ResNet-18 that is the stem convolution's kernel, the authors' choice."""
  leaves = jax.tree_util.tree_leaves_with_path(tree[modalities[0]]['encoder'])
  for path, leaf in leaves:
    if getattr(path[-1], 'key', None) == 'kernel':
      return leaf
  return leaves[0][1]


def alpha_gradient(model, modalities, params, batch_stats, batch, labels, k, train, rng):
  """The alpha-gradient on one held-out batch: mean over `first_parameter` of Hessian(L_tot) . grad CE,
  L_tot = k0 CE + k1 Abar of the model's contributions.

  Args:
    model: the `MultimodalClassifier` (a decomposable fusion).
    modalities: their order.
    params, batch_stats: the model's variables (the statistics are not updated).
    batch: {modality: [n, ...]} (masks included, if any).
    labels: int32 [n].
    k: float32 [2] (k0, k1).
    train: bool [] (traced): batch statistics and dropout (True) or inference mode.
    rng: the dropout key.
  """
  TRACES['alpha_gradient'] += 1

  def value(use_batch_stats: bool):
    def terms(p):
      variables = {'params': p, 'batch_stats': batch_stats}
      if use_batch_stats:
        out, _ = model.apply(variables, batch, train=True, detach_unimodal=True, rngs={'dropout': rng},
                             mutable=['batch_stats'])
      else:
        out = model.apply(variables, batch, train=False, detach_unimodal=True)
      return lfm_terms([out.contributions[m] for m in modalities], labels)

    def total(p):
      ce, align = terms(p)
      return k[0] * ce + k[1] * align

    c = jax.grad(lambda p: terms(p)[0])(params)
    h = hessian_vector_product(total, params, c)
    return jnp.mean(first_parameter(h, modalities).astype(jnp.float32))

  return jax.lax.cond(train, lambda: value(True), lambda: value(False))


def jit_alpha_gradient(model, modalities):
  """`alpha_gradient` of `model` jitted: `(params, batch_stats, batch, labels, k, train, rng) -> []`."""
  return jax.jit(functools.partial(alpha_gradient, model, tuple(modalities)))


def make_lfm(modalities: tuple[str, ...], cfg, ctx: MethodContext) -> Method:
  """LFM from `config.balancing.lfm` (`schedule`, `lr_alpha`, `halve_every`, `held_out_samples`,
  `initial_k1`, `held_out_mode`)."""
  lfm = cfg.lfm
  schedule = lfm.schedule
  if schedule not in SCHEDULES:
    raise ValueError(f"balancing.lfm.schedule must be one of {SCHEDULES}, got '{schedule}'")
  lr_alpha, halve_every = float(lfm.lr_alpha), int(lfm.halve_every)
  samples, initial_k1, mode = int(lfm.held_out_samples), float(lfm.initial_k1), lfm.held_out_mode
  if not (math.isfinite(lr_alpha) and lr_alpha >= 0.0):
    raise ValueError(f'balancing.lfm.lr_alpha must be finite and >= 0, got {lr_alpha}')
  if halve_every < 1:
    raise ValueError(f'balancing.lfm.halve_every must be >= 1, got {halve_every}')
  if samples < 1:
    raise ValueError(f'balancing.lfm.held_out_samples must be >= 1, got {samples}')
  if not K_MIN <= initial_k1 <= K_MAX:
    raise ValueError(f'balancing.lfm.initial_k1 must be in [{K_MIN}, {K_MAX}], got {initial_k1}')
  if mode not in HELD_OUT_MODES:
    raise ValueError(f"balancing.lfm.held_out_mode must be one of {HELD_OUT_MODES}, got '{mode}'")
  steps_per_epoch = ctx.steps_per_epoch
  jitted = {}   # the epoch hook's function, compiled once per model (the run's)

  def init_state(variables):
    del variables
    k1, k1_low = split_float64(initial_k1)
    return LFMState(jnp.asarray([np.float32(1.0 - initial_k1), k1], jnp.float32), jnp.asarray(k1_low),
                    jnp.float32(lr_alpha), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
                    jnp.zeros((), jnp.int32))

  def loss(inputs: LossInputs, state):
    out, labels = inputs.output, inputs.labels
    ce, align = lfm_terms([out.contributions[m] for m in modalities], labels)
    if schedule == 'fitted':
      k0, k1 = fitted_weights(inputs.step // steps_per_epoch)
    else:
      k0, k1 = state.k[0], state.k[1]
    probes, metrics = multiloss_objectives(inputs, {m: out.logits[m] for m in modalities})
    objectives = {'lfm': inputs.loss_weights[FUSED] * step_loss(k0, k1, ce, align),
                  'probes': probes['multiloss']}
    metrics.update({'loss_lfm_cls': ce, 'loss_lfm_alignment': align, 'lfm_k0': k0, 'lfm_k1': k1})
    if schedule == 'learnable':
      metrics.update({'lfm_alpha_grad': state.alpha_grad, 'lfm_eta': state.eta,
                      'lfm_updates': state.updates.astype(jnp.float32),
                      'lfm_rejected': state.rejected.astype(jnp.float32)})
    return objectives, state, metrics

  def compiled(model):
    entry = jitted.get(id(model))
    if entry is None or entry[0] is not model:
      entry = jitted[id(model)] = (model, jit_alpha_gradient(model, modalities))
    return entry[1]

  def epoch_update(ectx: EpochContext, train_state):
    state: LFMState = train_state.method_state
    held = ectx.held_out(samples)
    inputs = set(modalities) | {m + MASK_SUFFIX for m in modalities}
    batch = {key: jnp.asarray(v) for key, v in held.items() if key in inputs}
    labels = jnp.asarray(held['label'], jnp.int32)
    eta = halved_eta(float(state.eta), ectx.epoch, halve_every)
    train = jnp.bool_(mode == 'train' or ectx.epoch == 0)
    rng = jax.random.fold_in(jax.random.PRNGKey(ectx.seed), ectx.epoch)
    value = compiled(ectx.model)(train_state.params, train_state.batch_stats, batch, labels, state.k, train, rng)
    value = float(jax.device_get(value))
    k1 = float(jax.device_get(state.k)[1]) + float(jax.device_get(state.k1_low))
    k0, k1, ok = learnable_update(k1, eta, value)
    k1, k1_low = split_float64(k1)
    new = LFMState(jnp.asarray([np.float32(k0), k1], jnp.float32), jnp.asarray(k1_low), jnp.float32(eta),
                   jnp.float32(value if ok else 0.0), state.updates + int(ok), state.rejected + int(not ok))
    return train_state.replace(method_state=new)

  common = dict(loss=loss, unimodal_heads='probe', unimodal_source='contributions', fusion='late_linear',
                fusions=FUSIONS)
  if schedule == 'fitted':
    return Method('lfm', **common)
  return Method('lfm', init_state=init_state, epoch_update=epoch_update, **common)
