"""Methods without balancing: Joint Training and Multi-Loss (every k_i = 1)."""

import jax.numpy as jnp

from mlb_jax.balancing.method import Method, StepInputs, score_metrics
from mlb_jax.balancing.mlb import performance_ratios
from mlb_jax.balancing.scores import modality_scores


def unbalanced(name: str, *, detach_unimodal: bool, modalities: tuple[str, ...], score: str) -> Method:
  """A method with every k_i = 1; s_i and r_i are still reported."""

  def coefficients(inputs: StepInputs, state):
    s = modality_scores(inputs.logits, inputs.labels, modalities, score)
    scales = {m: jnp.ones((), jnp.float32) for m in modalities}
    return scales, state, score_metrics(modalities, s, performance_ratios(s), scales)

  return Method(name, detach_unimodal, lambda _: (), coefficients)
