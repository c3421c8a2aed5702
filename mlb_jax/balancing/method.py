"""The interface every training method implements (docs/design.md).

A method is a bundle of pure functions over explicit state plus a few
declarations. Its state lives in `TrainState.method_state` (checkpointed, so a
resumed run continues exactly). The train step (`mlb_jax.steps.train_step`)
runs, in order:

1. the train-mode forward pass (with the extra arguments `model_args(state)`
   when given), then `loss(LossInputs, state)` inside the differentiated
   function: named objectives whose sum is the loss (default: the multi-loss of
   Eq. 3, `multiloss_objectives`);
2. one gradient of the sum (or, with `combine`, one per objective, combined by
   the method), then `gradients(grads, GradInputs, state)` on the raw
   gradients (e.g. AGM's conditional clip);
3. `scales(StepInputs, state)`: per-label k for the Optax transformation
   `mlb_jax.optim.scale_by_modality` (absent: nothing is scaled), and
   `optimizer_args(StepInputs, state)`: extra `tx.update` arguments.

Between steps, at the start of every epoch, the loop calls
`epoch_update(EpochContext, train_state) -> train_state` on the host. The
context offers generic services only (evaluation of the train or validation
split, inference-mode features of training batches); the test split is not
offered, so no method can select anything on it.

Every function is per replica: with several seeds in one step the jitted
hooks are vmapped together with the step, and `epoch_update` runs once per
seed.
"""

from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional

import jax

from mlb_jax import losses

UNIMODAL_HEADS = ('trained', 'probe')
UNIMODAL_SOURCES = ('heads', 'contributions')
SCALED_PARAMS = ('all', 'kernels')


class MethodContext(NamedTuple):
  """Facts about the run a method may need when it is built."""
  modalities: tuple[str, ...]
  steps_per_epoch: int
  num_classes: int
  feature_dims: dict   # {modality: D}, the encoders' output widths


class LossInputs(NamedTuple):
  """What `loss` sees: the model, the variables being differentiated and the train-mode outputs."""
  model: Any                        # MultimodalClassifier
  variables: Mapping[str, Any]      # {'params': ..., 'batch_stats': ...}
  batch: Mapping[str, jax.Array]
  output: Any                       # ModelOutput of the train-mode forward pass
  labels: jax.Array                 # int32 [B]
  step: jax.Array                   # int32 [], 0-based optimizer step
  rng: jax.Array                    # PRNG key of this step for stochastic methods
  loss_weights: Mapping[str, float]  # {head: weight} of Eq. 3 (`config.loss`)


class GradInputs(NamedTuple):
  """What `gradients` sees besides the gradients."""
  params: Any
  step: jax.Array
  rng: jax.Array


class StepInputs(NamedTuple):
  """What `scales` and `optimizer_args` see (all arrays, all stop-gradient)."""
  logits: Mapping[str, jax.Array]   # {modality: [B, C]} unimodal logits (see `unimodal_source`)
  labels: jax.Array                 # int32 [B]
  step: jax.Array                   # int32 [], 0-based optimizer step
  rng: jax.Array


class EpochContext(NamedTuple):
  """Host-side services for `epoch_update` at the start of epoch `epoch`.

  Attributes:
    epoch: the 0-based epoch about to start.
    step: optimizer steps done so far.
    steps_per_epoch: training batches per epoch.
    num_classes: C.
    seed: the run's seed (`config.seed`).
    evaluate: `(state, split, heads) -> {head: {'accuracy', 'ece', 'loss', ...}}`
      over a whole split, 'train' or 'val' ('test' is refused).
    encode: `(state, num_batches, seed) -> iterator of (features {m: [B, D]}, labels [B])`:
      inference-mode features of `num_batches` training batches in the order of
      a shuffle drawn from `seed` (with training augmentation).
    held_out: `num_samples -> {modality: [n, ...], 'label': int32 [n]}`: the first
      `num_samples` samples of the validation split in stored order (the same
      samples every epoch), for a hook that computes with the model itself.
    model: the `MultimodalClassifier` (for `model.apply` in such a hook).
  """
  epoch: int
  step: int
  steps_per_epoch: int
  num_classes: int
  seed: int
  evaluate: Callable[..., dict]
  encode: Callable[..., Iterator]
  held_out: Callable[[int], dict]
  model: Any


class Method(NamedTuple):
  """A training method.

  Attributes:
    name: the config name (`config.method`).
    init_state: `variables -> state`, the method's pytree (`()` when it keeps none),
      from the model's initial variables {'params', 'batch_stats'}.
    loss: `(LossInputs, state) -> (objectives, state, metrics)`; objectives is
      {name: float32 []} whose sum is differentiated; default Eq. 3.
    combine: `({objective: grads}, GradInputs, state) -> (grads, state, metrics)`:
      when given, the step takes one gradient per objective (one forward pass,
      one backward pass per objective) and the method combines them (e.g.
      MMPareto); when absent, one gradient of the sum.
    gradients: `(grads, GradInputs, state) -> (grads, state, metrics)` on the
      raw gradients, before the optimizer.
    scales: `(StepInputs, state) -> ({label: float32 []}, state, metrics)`.
    optimizer_args: `(StepInputs, state) -> dict` of extra `tx.update` arguments.
    epoch_update: `(EpochContext, TrainState) -> TrainState`, host side.
    prerequisites: `config -> {name: config}`: runs that must finish before this
      one starts (e.g. UMT's unimodal teachers). The loop trains each in
      `<workdir>/prerequisites/<name>/` as an ordinary run (resumable, its best
      checkpoint chosen on validation) and hands their best states to `adopt`.
    adopt: `(TrainState, {name: TrainState}) -> TrainState`, host side: the
      initial state given the prerequisites' best states; it may only fill
      values into the structure `init_state` made (checkpoints restore into it).
    model_args: `method_state -> dict` of extra keyword arguments of the train-mode
      forward pass (`MultimodalClassifier.__call__` passes them to the fusion), from
      the state before this step's update (e.g. Greedy's `curate`); arrays, so one
      compiled step serves every value. Evaluation forwards never get them.
    unimodal_heads: 'trained' (their losses train the encoders) or 'probe'
      (stop-gradient on the encoder features: they train the head only, so
      unimodal accuracy is measured on equal terms for every method).
    unimodal_source: the unimodal logits `scales` sees: 'heads' or
      'contributions' (the modality's share of the fused logits; needs a
      fusion that decomposes per modality, see `DECOMPOSABLE_FUSIONS`).
    fusion: the fusion the method implies, used when `model.fusion = 'auto'`.
    fusions: the fusions the method is defined for (None: any).
    scaled_params: which parameters of a modality's subtree the scales reach:
      'all', or 'kernels' (weight matrices/filters only, not biases or BatchNorm).
    scales_fusion_slices: the scales also reach the rows of the fusion's input
      layer that read each modality (`mlb_jax.optim.fusion_slices`).
    min_modalities, max_modalities: the modality counts it is defined for.
  """
  name: str
  init_state: Callable[[Any], Any] = lambda variables: ()
  loss: Optional[Callable] = None
  combine: Optional[Callable] = None
  gradients: Optional[Callable] = None
  scales: Optional[Callable] = None
  optimizer_args: Optional[Callable] = None
  epoch_update: Optional[Callable] = None
  prerequisites: Optional[Callable] = None
  adopt: Optional[Callable] = None
  model_args: Optional[Callable] = None
  unimodal_heads: str = 'trained'
  unimodal_source: str = 'heads'
  fusion: Optional[str] = None
  fusions: Optional[tuple[str, ...]] = None
  scaled_params: str = 'all'
  scales_fusion_slices: bool = False
  min_modalities: int = 2
  max_modalities: Optional[int] = None


def multiloss_objectives(inputs: LossInputs, logits: Optional[Mapping[str, jax.Array]] = None):
  """Eq. 3 as objectives: ({'multiloss': weighted sum}, {'loss_<head>': unweighted CE}).

  `logits` replaces the model's logits (e.g. AGM's modulated fused logits).
  """
  total, per_head = losses.multi_loss(inputs.output.logits if logits is None else logits, inputs.labels,
                                      inputs.loss_weights)
  return {'multiloss': total}, per_head


def score_metrics(modalities, scores, ratios, scales) -> dict[str, jax.Array]:
  """Flat metrics `score_<m>`, `ratio_<m>`, `scale_<m>`."""
  out = {}
  for i, m in enumerate(modalities):
    out[f'score_{m}'] = scores[i]
    out[f'ratio_{m}'] = ratios[i]
    out[f'scale_{m}'] = scales[m]
  return out


def epochs_to_steps(epoch: float, ctx: MethodContext) -> int:
  """The first step of epoch `epoch` (0-based)."""
  return int(round(epoch * ctx.steps_per_epoch))


def epoch_window(step: jax.Array, start_epoch: float, end_epoch: float, ctx: MethodContext) -> jax.Array:
  """bool []: step `step` (0-based) lies in an epoch e with start_epoch <= e <= end_epoch (both included,
  as the authors' `start <= epoch <= end`)."""
  return (step >= epochs_to_steps(start_epoch, ctx)) & (step < epochs_to_steps(end_epoch + 1, ctx))
