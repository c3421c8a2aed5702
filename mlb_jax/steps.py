"""Pure train and eval steps.

`train_step(state, batch, *, model, tx, method, loss_weights)` is jitted once by
the build (`mlb_jax.build`) with the static pieces bound; everything that
changes per step (the coefficients k_i, the step counter, rngs) is an array, so
nothing retraces.

Order within a step (as the authors' code, docs/methods.md#common-training-step):
one train-mode forward pass (with the method's `model_args`), the method's objectives (default Eq. 3) and
the gradient of their sum; the method's gradient transform; the per-modality
scales from the stop-gradient unimodal logits of this batch; then the optimizer
with `modality_scales` = k (see `mlb_jax.balancing.method`).

Every step also reports, for every method, the diagnostics `score_<m>` (mean
true-class probability of modality m's unimodal logits) and `ratio_<m>` (Eq. 5);
a method's own metrics of the same name replace them.

Non-finite values: the metrics carry every head's loss (`loss_<head>`) and every
parameter group's gradient norm (`grad_norm_<modality>`, `grad_norm_fusion`), from
which the loop names what went non-finite. With `skip_nonfinite` the step itself
keeps the previous state (parameters, statistics, optimizer and method state)
when any of them is not finite, and reports `skipped` = 1.
"""

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from mlb_jax.balancing import GradInputs, LossInputs, Method, StepInputs, multiloss_objectives
from mlb_jax.balancing.mlb import performance_ratios
from mlb_jax.balancing.scores import modality_scores
from mlb_jax.train_state import TrainState


def _global_norm(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def finite_guard(metrics: Mapping[str, jax.Array]) -> jax.Array:
  """bool []: the total loss, every head's loss and every gradient norm are finite."""
  watched = [v for k, v in metrics.items() if k == 'loss' or k.startswith(('loss_', 'grad_norm_'))]
  return jnp.all(jnp.isfinite(jnp.stack(watched)))


def _default_loss(inputs: LossInputs, state):
  objectives, metrics = multiloss_objectives(inputs)
  return objectives, state, metrics


def method_objectives(params, state: TrainState, batch: Mapping[str, jax.Array], *, model, method: Method,
                      loss_weights: Mapping[str, float], dropout_rng: jax.Array, method_rng: jax.Array):
  """The train-mode forward pass (with the method's `model_args`) and the method's objectives.

  Returns:
    (objectives {name: []}, (output, new batch_stats, method_state, loss metrics)).
  """
  loss = method.loss or _default_loss
  model_args = method.model_args(state.method_state) if method.model_args is not None else {}
  variables = {'params': params, 'batch_stats': state.batch_stats}
  out, new_vars = model.apply(variables, batch, train=True, detach_unimodal=method.unimodal_heads == 'probe',
                              rngs={'dropout': dropout_rng}, mutable=['batch_stats'], **model_args)
  inputs = LossInputs(model, variables, batch, out, batch['label'], state.step, method_rng, loss_weights)
  objectives, method_state, loss_metrics = loss(inputs, state.method_state)
  return objectives, (out, new_vars.get('batch_stats', {}), method_state, loss_metrics)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model, tx, method: Method,
               loss_weights: Mapping[str, float],
               skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update.

  Args:
    state: the current `TrainState`.
    batch: {<modality>: [B, ...], 'label': int [B]}.
    model: `MultimodalClassifier`.
    tx: optimizer accepting `modality_scales` (see `mlb_jax.optim`).
    method: the training method (`mlb_jax.balancing.method`).
    loss_weights: {head: weight} for Eq. 3.
    skip_nonfinite: keep the previous state (only the step counter advances)
      when a loss or a gradient is not finite, and report `skipped`.

  Returns:
    (new state, flat metrics dict of float32 scalars).
  """
  labels = batch['label']
  step_rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng, method_rng = jax.random.split(step_rng)

  def loss_fn(params, with_objectives=False):
    objectives, aux = method_objectives(params, state, batch, model=model, method=method, loss_weights=loss_weights,
                                        dropout_rng=dropout_rng, method_rng=method_rng)
    total = sum(objectives.values())
    return total, (*aux, objectives) if with_objectives else aux

  if method.combine is None:  # one backward pass of the sum
    (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    out, batch_stats, method_state, method_metrics = aux
  else:  # one gradient per objective (one forward, one backward pass each), combined by the method
    def objectives_fn(params):
      total, (out, batch_stats, method_state, loss_metrics, objectives) = loss_fn(params, with_objectives=True)
      return objectives, (total, out, batch_stats, method_state, loss_metrics)

    objectives, vjp_fn, aux = jax.vjp(objectives_fn, state.params, has_aux=True)
    total, out, batch_stats, method_state, method_metrics = aux
    names = sorted(objectives)
    one_hot = lambda n: {m: jnp.asarray(m == n, objectives[m].dtype) for m in names}
    per_objective = {n: vjp_fn(one_hot(n))[0] for n in names}  # K backward passes sharing one forward
    grads, method_state, combine_metrics = method.combine(
        per_objective, GradInputs(state.params, state.step, method_rng), method_state)
    method_metrics = {**method_metrics, **combine_metrics}
  if method.gradients is not None:
    grads, method_state, grad_metrics = method.gradients(grads, GradInputs(state.params, state.step, method_rng),
                                                         method_state)
    method_metrics = {**method_metrics, **grad_metrics}

  source = out.contributions if method.unimodal_source == 'contributions' else out.logits
  unimodal = jax.lax.stop_gradient({m: source[m] for m in model.modalities})
  scores = modality_scores(unimodal, labels, tuple(model.modalities), 'probability')
  ratios = performance_ratios(scores)
  metrics = {'loss': total}
  for i, m in enumerate(model.modalities):
    metrics[f'score_{m}'], metrics[f'ratio_{m}'] = scores[i], ratios[i]
  metrics.update(method_metrics)

  inputs = StepInputs(unimodal, labels, state.step, method_rng)
  scales = {}
  if method.scales is not None:
    scales, method_state, scale_metrics = method.scales(inputs, method_state)
    metrics.update(scale_metrics)
  extra_args = method.optimizer_args(inputs, method_state) if method.optimizer_args is not None else {}
  updates, opt_state = tx.update(grads, state.opt_state, state.params, modality_scales=scales, **extra_args)
  params = optax.apply_updates(state.params, updates)

  for head, z in out.logits.items():
    metrics[f'acc_{head}'] = jnp.mean(jnp.argmax(z, -1) == labels).astype(jnp.float32)
  for key, sub in grads.items():
    metrics[f'grad_norm_{key}'] = _global_norm(sub)
  updated = (params, batch_stats, opt_state, method_state)
  if skip_nonfinite:
    ok = finite_guard(metrics)
    previous = (state.params, state.batch_stats, state.opt_state, state.method_state)
    updated = jax.tree.map(lambda new, old: jnp.where(ok, new, old), updated, previous)
    metrics['skipped'] = 1.0 - ok.astype(jnp.float32)
  params, batch_stats, opt_state, method_state = updated
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, method_state=method_state)
  return new_state, metrics


def eval_step(state: TrainState, batch: Mapping[str, jax.Array], *, model) -> dict[str, jax.Array]:
  """Inference-mode logits of every head: {'fused': [B, C], <modality>: [B, C]}, plus
  {'contribution_<m>': [B, C]} when the fusion decomposes per modality."""
  out = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, batch, train=False)
  logits = dict(out.logits)
  if out.contributions is not None:
    logits.update({f'contribution_{m}': z for m, z in out.contributions.items()})
  return logits


def encode_step(state: TrainState, batch: Mapping[str, jax.Array], *, model) -> dict[str, jax.Array]:
  """Inference-mode pooled features {m: [B, D]}."""
  return model.apply({'params': state.params, 'batch_stats': state.batch_stats}, batch, train=False,
                     method='encode')
