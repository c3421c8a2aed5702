"""Pure train and eval steps.

`train_step(state, batch, *, model, tx, method, loss_weights)` is jitted once by
`make_train_step` with the static pieces bound; everything that changes per
step (the coefficients k_i, the step counter, rngs) is an array, so nothing
retraces.

Order within a step (as the authors' code, METHODS.md §1): one train-mode
forward pass, the multi-loss (Eq. 3) and its gradient; the method's
coefficients from the stop-gradient unimodal logits of this batch; then the
optimizer with `modality_scales` = k.

Non-finite values: the metrics carry every head's loss (`loss_<head>`) and every
parameter group's gradient norm (`grad_norm_<modality>`, `grad_norm_fusion`), from
which the loop names what went non-finite. With `skip_nonfinite` the step itself
keeps the previous state (parameters, statistics, optimizer and balancing state)
when any of them is not finite, and reports `skipped` = 1.
"""

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from mlb_jax import compile_options, sharding
from mlb_jax.balancing import ForwardContext, Method, StepInputs
from mlb_jax.losses import multi_loss
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


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model, tx, method: Method,
               loss_weights: Mapping[str, float],
               skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update.

  Args:
    state: the current `TrainState`.
    batch: {<modality>: [B, ...], 'label': int [B]}.
    model: `MultimodalClassifier`.
    tx: optimizer accepting `modality_scales` (see `mlb_jax.optim`).
    method: the training method (its hooks are documented in `balancing.method`).
    loss_weights: {head: weight} for Eq. 3.
    skip_nonfinite: keep the previous state (only the step counter advances)
      when a loss or a gradient is not finite, and report `skipped`.

  Returns:
    (new state, flat metrics dict of float32 scalars).
  """
  labels = batch['label']
  step_rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng, method_rng = jax.random.split(step_rng)

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state.batch_stats}
    out, new_vars = model.apply(variables, batch, train=True, detach_unimodal=method.detach_unimodal,
                                rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    logits, balance_state, hook_metrics = out.logits, state.balance_state, {}
    if method.forward_hook is not None:
      ctx = ForwardContext(model, variables, batch, out, labels, state.step)
      logits, balance_state, hook_metrics = method.forward_hook(ctx, balance_state)
    total, per_head = multi_loss(logits, labels, loss_weights)
    if method.loss_hook is not None:
      extra, balance_state, extra_metrics = method.loss_hook(out, labels, balance_state, state.step)
      total = total + extra
      hook_metrics = {**hook_metrics, **extra_metrics}
    aux = (out, new_vars.get('batch_stats', {}), per_head, balance_state, hook_metrics)
    return total, aux

  (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  out, batch_stats, per_head, balance_state, hook_metrics = aux
  if method.gradient_hook is not None:
    grads, grad_metrics = method.gradient_hook(grads)
    hook_metrics = {**hook_metrics, **grad_metrics}

  source = out.contributions if method.unimodal_source == 'contributions' else out.logits
  unimodal = jax.lax.stop_gradient({m: source[m] for m in model.modalities})
  inputs = StepInputs(unimodal, labels, state.step, method_rng)
  scales, balance_state, balance_metrics = method.coefficients(inputs, balance_state)
  extra_args = method.optimizer_args(inputs) if method.optimizer_args is not None else {}
  updates, opt_state = tx.update(grads, state.opt_state, state.params, modality_scales=scales,
                                 **extra_args)
  params = optax.apply_updates(state.params, updates)

  metrics = {'loss': total, **per_head, **balance_metrics, **hook_metrics}
  for head, z in out.logits.items():
    metrics[f'acc_{head}'] = jnp.mean(jnp.argmax(z, -1) == labels).astype(jnp.float32)
  for key, sub in grads.items():
    metrics[f'grad_norm_{key}'] = _global_norm(sub)
  updated = (params, batch_stats, opt_state, balance_state)
  if skip_nonfinite:
    ok = finite_guard(metrics)
    previous = (state.params, state.batch_stats, state.opt_state, state.balance_state)
    updated = jax.tree.map(lambda new, old: jnp.where(ok, new, old), updated, previous)
    metrics['skipped'] = 1.0 - ok.astype(jnp.float32)
  params, batch_stats, opt_state, balance_state = updated
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, balance_state=balance_state)
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
  """Inference-mode pooled features {m: [B, D]} (PMR prototypes)."""
  return model.apply({'params': state.params, 'batch_stats': state.batch_stats}, batch, train=False,
                     method='encode')


def _shardings(mesh) -> dict:
  """jit's sharding kwargs for `(state, batch) -> outputs` over `mesh`: the state and every output
  replicated, the batch split on `data`; none without a mesh."""
  if mesh is None:
    return {}
  replicated = sharding.replicated(mesh)
  return {'in_shardings': (replicated, sharding.batch_sharding(mesh)), 'out_shardings': replicated}


def make_train_step(*, model, tx, method: Method, loss_weights, donate: bool = True,
                    skip_nonfinite: bool = False, mesh=None):
  """`train_step` with its static pieces bound, jitted once.

  With a `mesh` (see `mlb_jax.sharding`) the batch is split over its devices
  and the state and metrics are replicated; the same step serves any device count.
  """
  fn = functools.partial(train_step, model=model, tx=tx, method=method,
                         loss_weights=dict(loss_weights), skip_nonfinite=skip_nonfinite)
  return jax.jit(fn, donate_argnums=(0,) if donate else (), compiler_options=compile_options.jit_options(),
                 **_shardings(mesh))


def make_eval_step(*, model, mesh=None):
  """`eval_step` jitted; with a `mesh`, the batch split over it and the logits replicated."""
  return jax.jit(functools.partial(eval_step, model=model), compiler_options=compile_options.jit_options(),
                 **_shardings(mesh))


def make_encode_step(*, model, mesh=None):
  return jax.jit(functools.partial(encode_step, model=model), compiler_options=compile_options.jit_options(),
                 **_shardings(mesh))


