"""The interface every training method implements.

A method is a bundle of pure functions over explicit state
(`TrainState.balance_state`). The train step (`mlb_jax.steps.train_step`)
calls, in order:

1. `forward_hook` (optional, inside the differentiated loss): replaces the
   fused logits of the standard forward pass, e.g. AGM's modulated
   contributions. Gets a `ForwardContext`.
2. the multi-loss (Eq. 3) over the logits, plus `loss_hook` (optional, also
   inside the loss), e.g. PMR's prototype terms.
3. `gradient_hook` (optional) on the raw gradients, then `coefficients`, with the stop-gradient unimodal logits of
   this batch (`unimodal_source`: the linear heads, or the fused head's
   per-modality contributions); the per-modality scales k_i go to
   `mlb_jax.optim.scale_by_modality`, together with `optimizer_args` (e.g.
   OGM-GE's noise key).

Between epochs the loop calls `epoch_update(state, inputs)` with what
`epoch_input` names ('val_accuracy': MSLR; 'prototypes': PMR).
"""

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax

UNIMODAL_SOURCES = ('heads', 'contributions')


class StepInputs(NamedTuple):
  """What a method sees of one training step (all arrays, all stop-gradient)."""
  logits: Mapping[str, jax.Array]   # {modality: [B, C]} unimodal logits (see unimodal_source)
  labels: jax.Array                 # int32 [B]
  step: jax.Array                   # int32 [], 0-based optimizer step
  rng: jax.Array                    # PRNG key for stochastic methods


class ForwardContext(NamedTuple):
  """What a `forward_hook` may use: the model, this step's variables and outputs."""
  model: Any                        # MultimodalClassifier
  variables: Mapping[str, Any]      # {'params': ..., 'batch_stats': ...} being differentiated
  batch: Mapping[str, jax.Array]
  output: Any                       # ModelOutput of the train-mode forward pass
  labels: jax.Array
  step: jax.Array


class Method(NamedTuple):
  """A training method.

  Attributes:
    name: the config name (`config.method`).
    detach_unimodal: when True the unimodal heads are probes: their loss trains
      the head only (`stop_gradient` on the encoder features), so unimodal
      accuracy is measured on equal terms for every method.
    init_state: `modalities -> state` pytree kept in `TrainState.balance_state`.
    coefficients: `(StepInputs, state) -> (scales, state, metrics)`; scales is
      `{modality: float32 []}` and metrics a flat dict of scalars.
    unimodal_source: 'heads' or 'contributions' (needs a fusion whose logits
      are a sum of per-modality terms: late_linear, mmcosine).
    optimizer_args: optional `StepInputs -> dict` of extra `tx.update` arguments.
    forward_hook: optional `(ForwardContext, state) -> (logits, state, metrics)`.
    loss_hook: optional `(ModelOutput, labels, state, step) -> (loss, state, metrics)`.
    gradient_hook: optional `grads -> (grads, metrics)` applied to the raw
      gradients before the optimizer (AGM's conditional clipping).
    epoch_input: None, 'val_accuracy' or 'prototypes'.
    epoch_update: optional `(state, inputs) -> state`, called by the loop at
      the start of every epoch (0-based `epoch` is part of the inputs).
    scale_kernels_only: the scales reach only weight kernels of a modality's
      subtree, not biases or BatchNorm parameters (OGM's paper).
  """
  name: str
  detach_unimodal: bool
  init_state: Callable[[tuple[str, ...]], Any]
  coefficients: Callable[[StepInputs, Any], tuple[dict[str, jax.Array], Any, dict[str, jax.Array]]]
  unimodal_source: str = 'heads'
  optimizer_args: Optional[Callable[[StepInputs], dict]] = None
  forward_hook: Optional[Callable] = None
  loss_hook: Optional[Callable] = None
  gradient_hook: Optional[Callable] = None
  epoch_input: Optional[str] = None
  epoch_update: Optional[Callable] = None
  scale_kernels_only: bool = False


def score_metrics(modalities, scores, ratios, scales) -> dict[str, jax.Array]:
  """Flat metrics `score_<m>`, `ratio_<m>`, `scale_<m>`."""
  out = {}
  for i, m in enumerate(modalities):
    out[f'score_{m}'] = scores[i]
    out[f'ratio_{m}'] = ratios[i]
    out[f'scale_{m}'] = scales[m]
  return out


def require_two_modalities(name: str, modalities: tuple[str, ...]) -> None:
  if len(modalities) != 2:
    raise ValueError(f'{name} is defined for exactly 2 modalities, got {len(modalities)}: {list(modalities)}')
