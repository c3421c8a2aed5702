"""OGM and OGM-GE: on-the-fly gradient modulation (Peng et al., CVPR 2022).

Scores are *sum* softmax probabilities of the true class of each modality's
additive share of the fused logits (docs/methods.md#ogm):

    S_i   = sum_b softmax(z_i)[b, y_b]
    rho_i = S_i / mean_{j != i} S_j            (M = 2: rho_a = S_a / S_v)
    k_i   = 1 - tanh(alpha * relu(rho_i))  if rho_i > 1,  else 1

so only the leading modality is slowed (there is no "-1" in the tanh, as in
the OGM-GE code). With two modalities this is the authors' rule except at an
exact tie rho_a = rho_v = 1, where their `if rho_a > 1 ... else` slows the
video; here neither is slowed. The rule generalises to M >= 2 through the mean
of the other scores.

OGM-GE adds Gaussian noise to every scaled gradient tensor,
g <- k g + N(0, (std(g) + 1e-8)^2), with std(g) the unbiased (N - 1) standard
deviation of the unscaled tensor, as torch's `Tensor.std()` (the noise is drawn
in `mlb_jax.optim.scale_by_modality` from `noise_key`).

The coefficients are active in epochs start_epoch <= e <= end_epoch (both
included, as the authors' code); outside the window k = 1 and no noise is added.

Which parameters. OGM's paper (and code) modulates the encoders' weight
kernels only; the MLB authors' re-implementation scales every encoder
parameter, BatchNorm included (docs/methods.md#ogm). `scale='kernels'` (default)
follows the paper, `scale='all'` the authors' variant.
"""

import jax
import jax.numpy as jnp

from mlb_jax.balancing.method import Method, StepInputs, epoch_window, score_metrics
from mlb_jax.balancing.scores import modality_scores


def ogm_ratios(sum_scores: jax.Array) -> jax.Array:
  """rho_i = S_i / mean_{j != i} S_j for [M] scores (0 when the others are all 0)."""
  m = sum_scores.shape[0]
  others = (jnp.sum(sum_scores) - sum_scores) / (m - 1)
  return jnp.where(others > 0, sum_scores / jnp.where(others > 0, others, 1.0), 0.0)


def ogm_coefficients(sum_scores: jax.Array, *, alpha: float) -> jax.Array:
  """[M] OGM coefficients from [M] sum-scores S_i."""
  rho = ogm_ratios(jnp.asarray(sum_scores, jnp.float32))
  return jnp.where(rho > 1.0, 1.0 - jnp.tanh(alpha * jax.nn.relu(rho)), 1.0)


SCALE_CHOICES = ('kernels', 'all')


def _make(modalities: tuple[str, ...], cfg, ctx, *, gradient_noise: bool) -> Method:
  """OGM (gradient_noise=False) or OGM-GE (True) from `config.balancing.ogm`."""
  ogm = cfg.ogm
  if not ogm.alpha > 0:
    raise ValueError(f'balancing.ogm.alpha must be > 0, got {ogm.alpha}')
  if ogm.scale not in SCALE_CHOICES:
    raise ValueError(f"balancing.ogm.scale must be one of {SCALE_CHOICES}, got '{ogm.scale}'")
  alpha = ogm.alpha

  def active(step):
    return epoch_window(step, ogm.start_epoch, ogm.end_epoch, ctx)

  def scales(inputs: StepInputs, state):
    sums = modality_scores(inputs.logits, inputs.labels, modalities, 'probability') * inputs.labels.shape[0]
    on = active(inputs.step)
    k = jnp.where(on, ogm_coefficients(sums, alpha=alpha), 1.0)
    k = {m: k[i] for i, m in enumerate(modalities)}
    metrics = score_metrics(modalities, sums, ogm_ratios(sums), k)
    if gradient_noise:
      metrics['noise_active'] = on.astype(jnp.float32)
    return k, state, metrics

  def noise(inputs: StepInputs, state):
    del state
    return {'noise_key': inputs.rng, 'noise_scale': active(inputs.step).astype(jnp.float32)}

  return Method('ogm_ge' if gradient_noise else 'ogm', scales=scales,
                optimizer_args=noise if gradient_noise else None, unimodal_heads='probe',
                unimodal_source='contributions', scaled_params='kernels' if ogm.scale == 'kernels' else 'all')


def make_ogm(modalities, cfg, ctx) -> Method:
  return _make(modalities, cfg, ctx, gradient_noise=False)


def make_ogm_ge(modalities, cfg, ctx) -> Method:
  return _make(modalities, cfg, ctx, gradient_noise=True)
