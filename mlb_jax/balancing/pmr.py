"""PMR: prototypical modality rebalance (Fan et al., CVPR 2023), as the MLB authors
run it (docs/methods.md#pmr), made robust (docs/methods.md#known-pitfalls-of-the-reference-implementations,
item 6). Defined for 2 modalities.

Prototypes. At the start of every epoch `epoch_update` encodes training batches in
inference mode (epoch 0: every batch; later: the first `fraction` of a fresh
shuffle), normalises each batch's features with that batch's mean and variance
(affine-free BatchNorm, eps 1e-5, as the authors' code) and averages them per
class: P_new[m, c]. Then P <- (1 - momentum) P_new + momentum P_old.
Robustness, where the authors' code yields NaN: a class with no sample in the
pass keeps its previous prototype, and a non-finite prototype is never stored
(the previous one is kept and `prototypes_rejected` counts it).

Per step (inside the loss), with this batch's normalised train-mode features:

    d_m[b, c] = ||BN(f_m[b]) - P[m, c]||_2            (sqrt with eps inside)
    S_m       = sum_b softmax(-d_m)[b, y_b]           (stop-gradient)
    rho       = S_a / (S_v + 1e-5)
    beta_a, beta_v = (0, alpha) if rho > 1, (alpha, 0) if rho < 1, else (0, 0)
    L        += beta_a CE(-d_a) + beta_v CE(-d_v)     in epochs start <= e <= end

so the weaker modality is pulled towards its prototypes.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mlb_jax.balancing.method import (EpochContext, LossInputs, Method, MethodContext, epoch_window,
                                      multiloss_objectives, score_metrics)
from mlb_jax.losses import cross_entropy

BN_EPS = 1e-5
DIST_EPS = 1e-8


class PMRState(NamedTuple):
  prototypes: jax.Array  # float32 [M, C, D]
  seen: jax.Array        # bool [M, C], the class ever had a prototype
  rejected: jax.Array    # int32 [], non-finite prototype updates refused


def batch_normalize(features: jax.Array) -> jax.Array:
  """Affine-free BatchNorm with the batch's own statistics: [B, D] -> [B, D]."""
  mean = jnp.mean(features, axis=0, keepdims=True)
  var = jnp.var(features, axis=0, keepdims=True)
  return (features - mean) * jax.lax.rsqrt(var + BN_EPS)


def prototype_sums(features: jax.Array, labels: jax.Array, num_classes: int):
  """Per-class sums [C, D] and counts [C] of one batch's normalised features."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return onehot.T @ batch_normalize(features.astype(jnp.float32)), jnp.sum(onehot, axis=0)


def update_prototypes(state: PMRState, sums: jax.Array, counts: jax.Array, momentum: float) -> PMRState:
  """P <- (1 - m) sums/counts + m P for classes seen in this pass; guards NaN/Inf.

  Args:
    state: current prototypes.
    sums: [M, C, D] summed normalised features.
    counts: [M, C] samples per class.
    momentum: m in [0, 1).
  """
  present = counts > 0
  fresh = sums / jnp.where(present, counts, 1.0)[..., None]
  old = state.prototypes
  blended = jnp.where(state.seen[..., None], (1.0 - momentum) * fresh + momentum * old, fresh)
  finite = jnp.all(jnp.isfinite(blended), axis=-1)
  accept = present & finite
  rejected = jnp.sum(present & ~finite).astype(jnp.int32)
  return PMRState(jnp.where(accept[..., None], blended, old), state.seen | accept, state.rejected + rejected)


def prototype_distances(features: jax.Array, prototypes: jax.Array) -> jax.Array:
  """d[b, c] = ||BN(f[b]) - P[c]||, differentiable at 0: [B, D], [C, D] -> [B, C]."""
  diff = batch_normalize(features.astype(jnp.float32))[:, None, :] - prototypes[None]
  return jnp.sqrt(jnp.sum(diff * diff, axis=-1) + DIST_EPS)


def pmr_betas(sum_scores: jax.Array, alpha: float) -> jax.Array:
  """[2] (beta_a, beta_v) from the prototype sum-scores (S_a, S_v)."""
  rho = sum_scores[0] / (sum_scores[1] + 1e-5)
  beta_a = jnp.where(rho < 1.0, alpha, 0.0)
  beta_v = jnp.where(rho > 1.0, alpha, 0.0)
  return jnp.stack([beta_a, beta_v]), rho


def make_pmr(modalities: tuple[str, ...], cfg, ctx: MethodContext) -> Method:
  """PMR from `config.balancing.pmr` (`alpha`, `momentum`, `start_epoch`, `end_epoch`, `fraction`)."""
  pmr = cfg.pmr
  alpha, momentum, fraction, num_classes = pmr.alpha, pmr.momentum, pmr.fraction, ctx.num_classes
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f'balancing.pmr.momentum must be in [0, 1), got {momentum}')
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'balancing.pmr.fraction must be in (0, 1], got {fraction}')
  dims = {ctx.feature_dims[m] for m in modalities}
  if len(dims) != 1:
    raise ValueError(f'PMR needs equal feature widths across modalities, got {ctx.feature_dims}')
  dim = dims.pop()

  def init_state(variables):
    del variables
    return PMRState(jnp.zeros((2, num_classes, dim), jnp.float32), jnp.zeros((2, num_classes), bool),
                    jnp.zeros((), jnp.int32))

  def loss(inputs: LossInputs, state: PMRState):
    labels, features = inputs.labels, inputs.output.features
    d = [prototype_distances(features[m], state.prototypes[i]) for i, m in enumerate(modalities)]
    probs = [jax.nn.softmax(-jax.lax.stop_gradient(x), axis=-1) for x in d]
    sums = jnp.stack([jnp.sum(jnp.take_along_axis(p, labels[:, None], axis=-1)) for p in probs])
    betas, rho = pmr_betas(sums, alpha)
    active = epoch_window(inputs.step, pmr.start_epoch, pmr.end_epoch, ctx).astype(jnp.float32)
    terms = jnp.stack([cross_entropy(-x, labels) for x in d])
    objectives, metrics = multiloss_objectives(inputs)
    objectives['prototypes'] = active * jnp.sum(betas * terms)
    betas_of = {m: betas[i] for i, m in enumerate(modalities)}
    pmr_metrics = score_metrics(modalities, sums, jnp.stack([rho, 1.0 / jnp.maximum(rho, 1e-12)]), betas_of)
    metrics.update({k.replace('scale_', 'pmr_beta_'): v for k, v in pmr_metrics.items()})
    metrics.update({f'loss_prototype_{m}': terms[i] for i, m in enumerate(modalities)})
    metrics['prototypes_rejected'] = state.rejected.astype(jnp.float32)
    return objectives, state, metrics

  def epoch_update(ectx: EpochContext, train_state):
    """Prototypes from inference-mode features of training batches (epoch 0: all; later:
    floor(n * fraction) + 1 batches of a fresh shuffle)."""
    batches = ectx.steps_per_epoch
    if ectx.epoch > 0:
      batches = min(batches, int(batches * fraction) + 1)
    sums = counts = 0.0
    for features, labels in ectx.encode(train_state, batches, ectx.seed * 7919 + ectx.epoch):
      per = [prototype_sums(features[m], labels, num_classes) for m in modalities]
      sums = sums + np.stack([np.asarray(p[0]) for p in per])
      counts = counts + np.stack([np.asarray(p[1]) for p in per])
    return train_state.replace(method_state=update_prototypes(train_state.method_state, sums, counts, momentum))

  return Method('pmr', init_state=init_state, loss=loss, epoch_update=epoch_update, unimodal_heads='probe',
                max_modalities=2)
