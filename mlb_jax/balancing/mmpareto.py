"""MMPareto: Pareto gradient integration for multimodal learning (Wei & Hu, ICML 2024),
as the authors' released code computes it (docs/methods.md#mmpareto).

Objectives (unimodal heads trained, as the authors' separate heads):

    L_fused = w_fused * CE(z_fused),   L_m = w_m * CE(z_m)     (weights from `config.loss`)

Each encoder m receives two gradients, g_mm = dL_fused/dtheta_m (through the
fusion) and g_u = dL_m/dtheta_m (through its own head); no other objective
reaches encoder m. Per encoder, over the whole flattened encoder:

    cos = <g_mm, g_u> / (max(|g_mm|, 1e-8) max(|g_u|, 1e-8))
    k   = (0.5, 0.5)                       if cos > 0
        = (gamma_1, 1 - gamma_1)           else, the 2-vector min-norm point (`min_norm_2`):
          v11 = <g_mm, g_mm>, v12 = <g_mm, g_u>, v22 = <g_u, g_u>;
          gamma_1 = 0.999 if v12 >= v11; 0.001 if v12 >= v22; else (v22 - v12) / (v11 + v22 - 2 v12)

then, for every parameter tensor P of the encoder, with g_sum the gradient of the
sum of all objectives (= g_mm + g_u on P):

    s = |g_sum_P|,  g^ = 2 k_0 g_mm_P + 2 k_1 g_u_P,  r = s / |g^|
    grad_P = r g^ gamma   if r > 1,   else  g^ gamma          (gamma = `balancing.mmpareto.gamma`)

The unimodal heads and the fusion keep g_sum. Outside the modulation window
(epochs `start_epoch` <= e <= `end_epoch`, inclusive; default always on, as the
authors) every parameter gets g_sum. The rule is one 2-task problem per encoder,
so it holds for any M >= 2.

Zero gradients, where the authors' code divides by zero: the cosine's norms are
floored at 1e-8 (as torch's `cosine_similarity`), so a zero g_mm or g_u gives
cos = 0 and the min-norm branch (g_u = 0: gamma_1 = 0.001; g_mm = 0: 0.999; both:
0.999); the interior min-norm weight divides by |g_mm - g_u|^2 only where it is
positive; and a tensor with |g^| = 0 gets r = 0, i.e. grad_P = g^ gamma = 0 (the
authors' code gives NaN there). Nothing here returns NaN for finite gradients.

Cost: the step pulls M + 1 unit cotangents back through one linearisation (one
batched `jax.vjp`, `Method.combine`), i.e. M + 1 backward passes instead of one,
and holds M + 1 copies of the gradient; g_sum is their sum (no extra pass; the
authors run one backward pass per objective and one more of the sum). On top:
per encoder three inner products, and two norms per tensor, O(P).
"""

import functools

import jax
import jax.numpy as jnp

from mlb_jax import losses
from mlb_jax.balancing.method import GradInputs, LossInputs, Method, epoch_window
from mlb_jax.losses import FUSED

COS_EPS = 1e-8        # torch.nn.functional.cosine_similarity's floor on each norm
AGREE_WEIGHTS = (0.5, 0.5)


def _leaves32(tree):
  return [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]


def _dot(a, b) -> jax.Array:
  """<a, b> over every leaf of two pytrees of the same structure, float32 []."""
  terms = [jnp.sum(x * y) for x, y in zip(_leaves32(a), _leaves32(b))]
  return functools.reduce(jnp.add, terms, jnp.zeros((), jnp.float32))


def inner_products(g1, g2) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(<g1, g1>, <g1, g2>, <g2, g2>) over whole pytrees (the flattened vectors)."""
  return _dot(g1, g1), _dot(g1, g2), _dot(g2, g2)


def min_norm_weight(v11: jax.Array, v12: jax.Array, v22: jax.Array) -> jax.Array:
  """gamma_1 of the authors' 2-vector solver: the weight of g1 in min |c g1 + (1 - c) g2|."""
  num = v22 - v12
  den = (v11 - v12) + num   # = |g1 - g2|^2; > 0 wherever the interior branch is taken
  interior = num / jnp.where(den > 0, den, 1.0)
  return jnp.where(v12 >= v11, 0.999, jnp.where(v12 >= v22, 0.001, interior)).astype(jnp.float32)


def min_norm_2(g1, g2) -> jax.Array:
  """The authors' min-norm convex weights (gamma_1, 1 - gamma_1) of two gradients (pytrees), float32 [2]."""
  gamma1 = min_norm_weight(*inner_products(g1, g2))
  return jnp.stack([gamma1, 1.0 - gamma1])


def cosine(v11: jax.Array, v12: jax.Array, v22: jax.Array) -> jax.Array:
  """cos(g1, g2) from the inner products, each norm floored at COS_EPS (as torch)."""
  return v12 / (jnp.maximum(jnp.sqrt(v11), COS_EPS) * jnp.maximum(jnp.sqrt(v22), COS_EPS))


def pareto_weights(g_mm, g_u) -> tuple[jax.Array, jax.Array]:
  """(k float32 [2], cos []): (0.5, 0.5) when cos(g_mm, g_u) > 0, else `min_norm_2(g_mm, g_u)`."""
  v11, v12, v22 = inner_products(g_mm, g_u)
  cos = cosine(v11, v12, v22)
  gamma1 = min_norm_weight(v11, v12, v22)
  k = jnp.where(cos > 0, jnp.asarray(AGREE_WEIGHTS, jnp.float32), jnp.stack([gamma1, 1.0 - gamma1]))
  return k, cos


def restore_tensor(g_mm: jax.Array, g_u: jax.Array, g_sum: jax.Array, k: jax.Array, gamma: float) -> jax.Array:
  """One tensor's gradient: g^ = 2 k0 g_mm + 2 k1 g_u, rescaled to |g_sum| when that is larger, times gamma."""
  dtype = g_sum.dtype
  g_mm, g_u, g_sum = (x.astype(jnp.float32) for x in (g_mm, g_u, g_sum))
  g_hat = 2.0 * k[0] * g_mm + 2.0 * k[1] * g_u
  s, n = jnp.linalg.norm(g_sum.ravel()), jnp.linalg.norm(g_hat.ravel())
  ratio = jnp.where(n > 0, s / jnp.where(n > 0, n, 1.0), 0.0)
  out = jnp.where(ratio > 1.0, ratio * g_hat * gamma, g_hat * gamma)
  return out.astype(dtype)


def pareto_gradient(g_mm, g_u, g_sum=None, *, gamma: float = 1.5):
  """One encoder's combined gradient (pytrees of the same structure).

  Args:
    g_mm: gradient of the fused objective w.r.t. the encoder.
    g_u: gradient of the encoder's own unimodal objective.
    g_sum: gradient of the sum of all objectives (default g_mm + g_u, which it equals).
    gamma: the boost (authors: 1.5).

  Returns:
    (combined gradient, {'cos', 'conflict', 'weight'}): the cosine, 1.0 when the
    min-norm branch was taken, and k_0 (the weight of g_mm).
  """
  if g_sum is None:
    g_sum = jax.tree.map(jnp.add, g_mm, g_u)
  k, cos = pareto_weights(g_mm, g_u)
  out = jax.tree.map(lambda a, b, c: restore_tensor(a, b, c, k, gamma), g_mm, g_u, g_sum)
  return out, {'cos': cos, 'conflict': (cos <= 0).astype(jnp.float32), 'weight': k[0]}


def mmpareto_objectives(inputs: LossInputs, modalities: tuple[str, ...]):
  """({'fused': w_f CE(z_fused), m: w_m CE(z_m)}, {'loss_<head>': unweighted CE}) from the model's heads."""
  heads = (FUSED, *modalities)
  missing = [h for h in heads if h not in inputs.loss_weights]
  if missing:
    raise ValueError(f'no loss weight for heads {missing}; weights given for {sorted(inputs.loss_weights)}')
  ce = {h: losses.cross_entropy(inputs.output.logits[h], inputs.labels) for h in heads}
  objectives = {h: inputs.loss_weights[h] * ce[h] for h in heads}
  return objectives, {f'loss_{h}': v for h, v in ce.items()}


def combine_gradients(per_objective, modalities: tuple[str, ...], *, gamma: float, active=True):
  """The MMPareto gradient from {objective: grads} ('fused' and every modality).

  Encoder m (params[m]['encoder']) gets `pareto_gradient(g_fused, g_m, g_sum)` when
  `active`, every other parameter (and every one when not active) the plain sum g_sum.

  Returns:
    (grads, metrics {'cos_<m>', 'conflict_<m>', 'pareto_weight_<m>'}).
  """
  names = sorted(per_objective)
  plain = jax.tree.map(lambda *gs: functools.reduce(jnp.add, gs), *[per_objective[n] for n in names])
  grads, metrics = dict(plain), {}
  active = jnp.asarray(active)
  for m in modalities:
    if 'encoder' not in plain[m]:   # an encoder without parameters: nothing to combine
      continue
    combined, info = pareto_gradient(per_objective[FUSED][m]['encoder'], per_objective[m][m]['encoder'],
                                     plain[m]['encoder'], gamma=gamma)
    encoder = jax.tree.map(lambda c, p: jnp.where(active, c, p), combined, plain[m]['encoder'])
    grads[m] = {**plain[m], 'encoder': encoder}
    metrics[f'cos_{m}'], metrics[f'conflict_{m}'] = info['cos'], info['conflict']
    metrics[f'pareto_weight_{m}'] = info['weight']
  return grads, metrics


def make_mmpareto(modalities: tuple[str, ...], cfg, ctx) -> Method:
  """MMPareto from `config.balancing.mmpareto` (`gamma`, `start_epoch`, `end_epoch`)."""
  sec = cfg.mmpareto
  gamma, start_epoch, end_epoch = float(sec.gamma), sec.start_epoch, sec.end_epoch
  if not gamma > 0:
    raise ValueError(f'balancing.mmpareto.gamma must be > 0, got {sec.gamma}')
  modalities = tuple(modalities)

  def loss(inputs: LossInputs, state):
    objectives, metrics = mmpareto_objectives(inputs, modalities)
    return objectives, state, metrics

  def combine(per_objective, inputs: GradInputs, state):
    active = epoch_window(inputs.step, start_epoch, end_epoch, ctx)
    grads, metrics = combine_gradients(per_objective, modalities, gamma=gamma, active=active)
    metrics['modulation_active'] = active.astype(jnp.float32)
    return grads, state, metrics

  return Method('mmpareto', loss=loss, combine=combine, unimodal_heads='trained')
