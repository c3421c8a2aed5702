"""PMR: prototypical modality rebalance (Fan et al., CVPR 2023), as the MLB authors
run it (METHODS.md §3.6), made robust (§7 item 6). Defined for 2 modalities.

Prototypes. At the start of every epoch the loop encodes training batches in
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
    L        += beta_a CE(-d_a) + beta_v CE(-d_v)     for steps in [start, end)

so the weaker modality is pulled towards its prototypes.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mlb_jax.balancing.method import Method, StepInputs, require_two_modalities, score_metrics
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


def make_pmr(*, modalities: tuple[str, ...], num_classes: int, feature_dims: dict, alpha: float,
             momentum: float, start_step: int, end_step: int, fraction: float) -> Method:
  require_two_modalities('PMR', modalities)
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f'balancing.pmr.momentum must be in [0, 1), got {momentum}')
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'balancing.pmr.fraction must be in (0, 1], got {fraction}')
  dims = {feature_dims[m] for m in modalities}
  if len(dims) != 1:
    raise ValueError(f'PMR needs equal feature widths across modalities, got {feature_dims}')
  dim = dims.pop()

  def init_state(_):
    return PMRState(jnp.zeros((2, num_classes, dim), jnp.float32), jnp.zeros((2, num_classes), bool),
                    jnp.zeros((), jnp.int32))

  def loss_hook(output, labels, state: PMRState, step):
    d = [prototype_distances(output.features[m], state.prototypes[i]) for i, m in enumerate(modalities)]
    probs = [jax.nn.softmax(-jax.lax.stop_gradient(x), axis=-1) for x in d]
    sums = jnp.stack([jnp.sum(jnp.take_along_axis(p, labels[:, None], axis=-1)) for p in probs])
    betas, rho = pmr_betas(sums, alpha)
    active = ((step >= start_step) & (step < end_step)).astype(jnp.float32)
    terms = jnp.stack([cross_entropy(-x, labels) for x in d])
    loss = active * jnp.sum(betas * terms)
    scales = {m: betas[i] for i, m in enumerate(modalities)}
    metrics = score_metrics(modalities, sums, jnp.stack([rho, 1.0 / jnp.maximum(rho, 1e-12)]), scales)
    metrics = {k.replace('scale_', 'pmr_beta_'): v for k, v in metrics.items()}
    metrics.update({f'loss_prototype_{m}': terms[i] for i, m in enumerate(modalities)})
    metrics['prototypes_rejected'] = state.rejected.astype(jnp.float32)
    return loss, state, metrics

  def coefficients(inputs: StepInputs, state):
    del inputs
    return {m: jnp.ones((), jnp.float32) for m in modalities}, state, {}

  def epoch_update(state, inputs):
    return update_prototypes(state, inputs['sums'], inputs['counts'], momentum)

  return Method('pmr', detach_unimodal=True, init_state=init_state, coefficients=coefficients,
                loss_hook=loss_hook, epoch_input='prototypes', epoch_update=epoch_update)

