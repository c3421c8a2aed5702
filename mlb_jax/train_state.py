"""The explicit training state pytree and its construction."""

from typing import Any

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
    method_state: the training method's state across steps (() when it keeps none).
    rng: base PRNG key; step t uses `fold_in(rng, t)`, so resuming is exact.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any
  rng: jax.Array


def make_init(model, tx: optax.GradientTransformation, method: Method):
  """The pure `(sample_batch, rng) -> TrainState` of this model, optimizer and method.

  `mlb_jax.build` jits it once per run, with the devices' shardings (one seed) or
  vmapped over the seeds' keys.

  Args:
    sample_batch: {modality: [B, ...]} used only for shapes.
    rng: PRNG key; split into init and training keys.
  """

  def init(sample_batch, rng):
    init_rng, train_rng = jax.random.split(rng)
    variables = model.init({'params': init_rng, 'dropout': init_rng}, sample_batch, train=False)
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        method_state=method.init_state({'params': params, 'batch_stats': batch_stats}),
        rng=train_rng)

  return init


def parameter_count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
