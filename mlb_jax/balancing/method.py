"""The interface every training method implements.

A method is a bundle of pure functions over explicit state. The train step calls
`coefficients` once per step with the stop-gradient unimodal logits of the
current batch; the returned per-modality scales k_i go to the Optax
transformation `mlb_jax.optim.scale_by_modality`.
"""

from typing import Any, Callable, Mapping, NamedTuple

import jax



class StepInputs(NamedTuple):
  """What a method sees of one training step (all arrays, all stop-gradient)."""
  logits: Mapping[str, jax.Array]   # {modality: [B, C]} unimodal logits
  labels: jax.Array                 # int32 [B]
  step: jax.Array                   # int32 [], 0-based optimizer step
  rng: jax.Array                    # PRNG key for stochastic methods


class Method(NamedTuple):
  """A training method.

  Attributes:
    name: the config name (`config.method`).
    detach_unimodal: when True the unimodal heads are probes: their loss trains
      the head only (`stop_gradient` on the encoder features), as for Joint
      Training, so unimodal accuracy is measured on equal terms.
    init_state: `modalities -> state` pytree kept in `TrainState.balance_state`.
    coefficients: `(StepInputs, state) -> (scales, state, metrics)` where scales
      is `{modality: float32 []}` and metrics a flat dict of scalars.
  """
  name: str
  detach_unimodal: bool
  init_state: Callable[[tuple[str, ...]], Any]
  coefficients: Callable[[StepInputs, Any], tuple[dict[str, jax.Array], Any, dict[str, jax.Array]]]


def score_metrics(modalities, scores, ratios, scales) -> dict[str, jax.Array]:
  """Flat metrics `score_<m>`, `ratio_<m>`, `scale_<m>`."""
  out = {}
  for i, m in enumerate(modalities):
    out[f'score_{m}'] = scores[i]
    out[f'ratio_{m}'] = ratios[i]
    out[f'scale_{m}'] = scales[m]
  return out
