"""Multi-Loss Balanced coefficients (Kontras et al., BMVC 2024, Eqs. 5-7).

    r_i    = mean_{j != i}(s_j) / s_i                                    (Eq. 5)
    beta_i = beta_max if r_i > 1 else 2                                   (Eq. 6)
    k_i    = 1 + (beta_i - 1) * tanh(alpha * (r_i - 1))                   (Eq. 7)

A modality that lags (r_i > 1) is accelerated up to k_i -> beta_max; one that
leads (r_i < 1) is decelerated, k_i in (1 - tanh(alpha), 1]; when all scores
are equal every k_i is 1 (exactly for M = 2, to float32 rounding for M > 2), so
balancing fades out by itself.

`beta_max = 2` reproduces every released configuration of the authors' code
(their default `tanh_mode`; docs/methods.md#mlb).

Zero scores. Eq. 5 divides by s_i. We define:
  * s_i = 0 and mean_{j != i} s_j > 0  ->  r_i = R_MAX (a lagging modality at
    its limit: k_i = beta_max to float precision);
  * s_i = 0 and all other scores 0     ->  r_i = 1 (nothing to compare: k_i = 1);
  * finite ratios are capped at R_MAX = 1e6, where tanh is already saturated.
So `mlb_coefficients` never returns inf or nan for finite, non-negative scores.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mlb_jax.balancing.method import Method, score_metrics
from mlb_jax.balancing.scores import modality_scores

R_MAX = 1e6


class MLBOutput(NamedTuple):
  ratios: jax.Array        # float32 [M], r_i of Eq. 5
  coefficients: jax.Array  # float32 [M], k_i of Eq. 7


def performance_ratios(scores: jax.Array) -> jax.Array:
  """Eq. 5: r_i = mean of the other modalities' scores divided by s_i.

  Args:
    scores: [M] non-negative scores, M >= 2.

  Returns:
    [M] float32 ratios in [0, R_MAX] (see the module docstring for zeros).
  """
  scores = jnp.asarray(scores, jnp.float32)
  if scores.ndim != 1 or scores.shape[0] < 2:
    raise ValueError(f'scores must be a 1-D array of length M >= 2, got shape {scores.shape}')
  m = scores.shape[0]
  others = (jnp.sum(scores) - scores) / (m - 1)
  positive = scores > 0
  safe = jnp.where(positive, scores, 1.0)
  ratio = jnp.where(positive, others / safe, jnp.where(others > 0, R_MAX, 1.0))
  return jnp.clip(ratio, 0.0, R_MAX)


def coefficients_from_ratios(ratios: jax.Array, *, alpha: float, beta_max: float) -> jax.Array:
  """Eqs. 6-7 applied to given ratios."""
  beta = jnp.where(ratios > 1.0, beta_max, 2.0)
  return 1.0 + (beta - 1.0) * jnp.tanh(alpha * (ratios - 1.0))


def mlb_coefficients(scores: jax.Array, *, alpha: float, beta_max: float = 2.0) -> jax.Array:
  """k_i for every modality from its score s_i (Eqs. 5-7).

  Args:
    scores: [M] scores s_i in config modality order (M >= 2).
    alpha: steepness of the tanh, alpha > 0.
    beta_max: largest acceleration, beta_max >= 1.

  Returns:
    [M] float32 coefficients k_i.
  """
  return mlb_balance(scores, alpha=alpha, beta_max=beta_max).coefficients


def mlb_balance(scores: jax.Array, *, alpha: float, beta_max: float = 2.0) -> MLBOutput:
  """Like `mlb_coefficients`, also returning the ratios r_i (for logging)."""
  if not alpha > 0:
    raise ValueError(f'alpha must be > 0, got {alpha}')
  if not beta_max >= 1:
    raise ValueError(f'beta_max must be >= 1, got {beta_max}')
  ratios = performance_ratios(scores)
  return MLBOutput(ratios, coefficients_from_ratios(ratios, alpha=alpha, beta_max=beta_max))


def make_mlb(modalities: tuple[str, ...], cfg, ctx) -> Method:
  """MLB: multi-loss (Eq. 3) with k_i from Eqs. 4-7 every step.

  `cfg` is `config.balancing` (`score`, `mlb.alpha`, `mlb.beta_max`, `mlb.fusion_slices`).
  """
  del ctx
  alpha, beta_max, score = cfg.mlb.alpha, cfg.mlb.beta_max, cfg.score
  mlb_balance(jnp.ones(len(modalities)), alpha=alpha, beta_max=beta_max)  # validates alpha, beta_max

  def scales(inputs, state):
    s = modality_scores(inputs.logits, inputs.labels, modalities, score)
    out = mlb_balance(s, alpha=alpha, beta_max=beta_max)
    k = {m: out.coefficients[i] for i, m in enumerate(modalities)}
    return k, state, score_metrics(modalities, s, out.ratios, k)

  return Method('mlb', scales=scales, scales_fusion_slices=bool(cfg.mlb.fusion_slices))
