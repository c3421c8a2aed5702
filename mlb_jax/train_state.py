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


def create_train_state(model, tx: optax.GradientTransformation, method: Method,
                       sample_batch: Mapping[str, Any], rng: jax.Array) -> TrainState:
  """Initialises parameters (from `rng`) on `sample_batch` and the optimizer.

  Args:
    model: a `MultimodalClassifier`.
    tx: the optimizer (see `mlb_jax.optim.make_optimizer`).
    method: the training method (its `init_state`).
    sample_batch: {modality: [B, ...]} used only for shapes.
    rng: PRNG key; split into init and training keys.
  """
  init_rng, train_rng = jax.random.split(rng)

  @jax.jit
  def init(batch):
    variables = model.init({'params': init_rng, 'dropout': init_rng}, batch, train=False)
    return variables['params'], variables.get('batch_stats', {})

  params, batch_stats = init({m: jnp.asarray(sample_batch[m]) for m in model.modalities})
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      balance_state=method.init_state(tuple(model.modalities)),
      rng=train_rng)


def parameter_count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
