"""The explicit training state pytree and its construction."""

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from mlb_jax.balancing import Method


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes; a plain pytree (checkpointable).

  Attributes:
    step: int32 [], number of optimizer updates done.
    params: {<modality>: {'encoder', 'head'}, 'fusion': ...}.
    batch_stats: BatchNorm running statistics ({} when the model has none).
    opt_state: the Optax state.
    balance_state: the method's state across steps (() when it keeps none).
    rng: base PRNG key; step t uses `fold_in(rng, t)`, so resuming is exact.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  balance_state: Any
  rng: jax.Array


def make_init(model, tx: optax.GradientTransformation, method: Method):
  """The jitted `(sample_batch, rng) -> TrainState` of this model, optimizer and method.

  One function per (model, tx, method): every call with batches of the same
  shapes reuses its compilation (a run initialises twice: to train and to
  restore for evaluation; a group of seeds once per seed). See
  `create_train_state` for the arguments.
  """
  modalities = tuple(model.modalities)

  @jax.jit
  def init(sample_batch, rng):
    init_rng, train_rng = jax.random.split(rng)
    variables = model.init({'params': init_rng, 'dropout': init_rng}, sample_batch, train=False)
    params = variables['params']
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=tx.init(params),
        balance_state=method.init_state(modalities),
        rng=train_rng)

  return init


def create_train_state(model, tx: optax.GradientTransformation, method: Method,
                       sample_batch: Mapping[str, Any], rng: jax.Array, *, init=None) -> TrainState:
  """Initialises parameters (from `rng`) on `sample_batch` and the optimizer.

  Args:
    model: a `MultimodalClassifier`.
    tx: the optimizer (see `mlb_jax.optim.make_optimizer`).
    method: the training method (its `init_state`).
    sample_batch: {modality: [B, ...]} used only for shapes.
    rng: PRNG key; split into init and training keys.
    init: `make_init(model, tx, method)`, to reuse its compilation (default: a new one).
  """
  init = init or make_init(model, tx, method)
  return init({m: jnp.asarray(sample_batch[m]) for m in model.modalities}, rng)


def parameter_count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
