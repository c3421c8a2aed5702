"""Everything a run computes with, built from a config before any step runs.

`build_training(config, spec)` turns a config and a `DataSpec` (modalities,
per-sample shapes, classes, steps per epoch) into the model, the method, the
optimizer and the jitted init / train / eval / encode steps. It needs no
dataset: the benchmarks use it on random batches and get exactly the step a run
of `config` takes. `build(config)` also loads the dataset and derives the spec.

Devices. One seed (`num_replicas = 1`) is data parallel over every device of
every process (`mlb_jax.sharding`): the batch is split on the `data` axis and
the state is replicated, created in place with those shardings. S seeds
(`num_replicas = S`) are S stacked states trained by one vmapped step, split
over as many local devices as divide S (`shard_map`, no communication); replica
s is the single run of its own seed.

Compile options (`config.model.kernels`, see `mlb_jax.compile_options`) are
chosen here and passed to every `jax.jit`.
"""

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from data_pipelines import common
from mlb_jax import balancing, compile_options, losses, models, optim, runtime, sharding, steps
from mlb_jax.train_state import TrainState, make_init

SEED = 'seed'  # the mesh axis replicas are split on


class DataSpec(NamedTuple):
  """What the build needs to know of the data."""
  modalities: tuple[str, ...]
  sample_shapes: dict            # {modality: per-sample shape}
  num_classes: int
  steps_per_epoch: int


class Training(NamedTuple):
  """The model, method, optimizer and compiled steps of one config.

  Attributes:
    num_replicas: S, seeds trained by `train_step` at once (states stacked on a
      leading axis when S > 1).
    init: `(sample_batch, rngs [S]) -> TrainState` (stacked when S > 1), placed on the devices.
    train_step: `(state, device batch) -> (state, metrics)`; `place_batch` makes
      the device batch from S host batches.
    eval_step: `(state of one replica, host batch) -> {head: logits}`.
    encode_step: `(state of one replica, host batch) -> {modality: features}`.
  """
  config: ml_collections.ConfigDict
  spec: DataSpec
  model: Any
  method: balancing.Method
  tx: Any
  loss_weights: dict[str, float]
  num_replicas: int
  mesh: Mesh | None
  compiler_options: dict
  init: Callable
  train_step: Callable
  eval_step: Callable
  encode_step: Callable

  def place_batch(self, host_batches: Sequence[dict]):
    """The device batch of `train_step` from one host batch per replica (this process's rows)."""
    if self.num_replicas == 1:
      return sharding.shard_batch(host_batches[0], self.mesh)
    stacked = {k: np.stack([b[k] for b in host_batches]) for k in host_batches[0]}
    return stacked if self.mesh is None else jax.device_put(stacked, NamedSharding(self.mesh, P(SEED)))

  def initial_state(self, sample: dict, seeds: Sequence[int]) -> TrainState:
    """The state of seeds `seeds` (one per replica) initialised on one host sample {modality: [...]}."""
    batch = {m: jnp.asarray(np.asarray(sample[m])[None]) for m in self.spec.modalities}
    keys = [jax.random.key(s) for s in seeds]
    return self.init(batch, keys[0] if self.num_replicas == 1 else jnp.stack(keys))


class Experiment(NamedTuple):
  """A config's dataset and its `Training`."""
  config: ml_collections.ConfigDict
  dataset: common.Dataset
  training: Training

  @property
  def modalities(self) -> tuple[str, ...]:
    return self.training.spec.modalities


def validate(config) -> None:
  """Checks every name and number of `config` that needs no data; one ValueError naming the key."""
  balancing.check_name(config.method)
  if config.balancing.apply_to not in optim.APPLY_TO:
    raise ValueError(f"unknown balancing.apply_to '{config.balancing.apply_to}'; "
                     f'expected one of {list(optim.APPLY_TO)}')
  positive = {'num_seeds': config.num_seeds, 'data.batch_size': config.data.batch_size,
              'data.eval_batch_size': config.data.eval_batch_size, 'train.num_steps': config.train.num_steps,
              'train.eval_every': config.train.eval_every, 'train.log_every': config.train.log_every}
  for key, value in positive.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'config.{key} must be a positive integer, got {value!r}')
  if config.train.checkpoint_every_steps < 0:
    raise ValueError(f'config.train.checkpoint_every_steps must be >= 0, got {config.train.checkpoint_every_steps}')
  for key in ('eval_every_epochs', 'patience'):  # 0 turns either off
    value = config.train[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f'config.train.{key} must be an integer >= 0 (0: off), got {value!r}')
  if config.model.fusion != 'auto' and config.model.fusion not in models.FUSIONS:
    raise ValueError(f"unknown model.fusion '{config.model.fusion}'; expected 'auto' or one of {sorted(models.FUSIONS)}")
  models.compute_dtype(config.dtype)
  if config.model.kernels not in ('auto', *models.KERNELS):  # 'auto' is resolved by the build, not here:
    models.resolve_kernels(config.model.kernels)             # asking for the backend would start it
  optim.base_optimizer(config.optimizer)  # names of the optimizer and its schedule
  runtime.parse_profile_steps(config.profile_steps)


def resolve_modalities(config, dataset: common.Dataset) -> tuple[str, ...]:
  """`config.modalities` (or all of the dataset's), checked against the dataset."""
  wanted = tuple(config.modalities) or tuple(dataset.modalities)
  unknown = [m for m in wanted if m not in dataset.modalities]
  if unknown:
    raise ValueError(f'config.modalities names {unknown}, which the dataset '
                     f"'{config.data.name}' does not have; it has {list(dataset.modalities)}")
  if len(wanted) < 2:
    raise ValueError(f'a multimodal model needs at least 2 modalities, got {list(wanted)}')
  return wanted


def data_spec(config, dataset: common.Dataset) -> DataSpec:
  modalities = resolve_modalities(config, dataset)
  return DataSpec(modalities, {m: tuple(dataset.sample_shapes[m]) for m in modalities}, dataset.num_classes,
                  common.steps_per_epoch(len(dataset.splits['train']), config.data.batch_size))


def feature_dims(model, sample_shapes, modalities) -> dict[str, int]:
  """{modality: D}, the encoders' output widths (shape inference only, no compute)."""
  sample = {m: jax.ShapeDtypeStruct((1, *sample_shapes[m]), np.float32) for m in modalities}
  (features, _) = jax.eval_shape(
      lambda b: model.init_with_output({'params': jax.random.key(0)}, b, train=False, method='encode'), sample)
  return {m: int(f.shape[-1]) for m, f in features.items()}


def _model_config(config, fusion: str) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(config.model.to_dict())
  cfg.fusion = fusion
  return cfg


def build_training(config, spec: DataSpec, *, num_replicas: int = 1, mesh: Mesh | None = None,
                   donate: bool = True) -> Training:
  """The `Training` of `config` for data described by `spec`.

  Args:
    num_replicas: seeds trained at once by one vmapped step (1: the single-run step).
    mesh: with one replica, the data mesh (default: every device); with several,
      the replica mesh (default: the most local devices that divide S).
    donate: donate the state to the train step (benchmarks that reuse a state pass False).
  """
  validate(config)
  if config.train.select_head not in (losses.FUSED, *spec.modalities):
    raise ValueError(f"train.select_head '{config.train.select_head}' is not a head; expected one of "
                     f'{[losses.FUSED, *spec.modalities]}')
  modalities = spec.modalities
  # The encoders' widths do not depend on the fusion: any fusion serves the shape inference.
  encoders_only = models.build_model(_model_config(config, balancing.DEFAULT_FUSION), modalities,
                                     spec.sample_shapes, spec.num_classes, dtype=config.dtype)
  ctx = balancing.MethodContext(modalities, spec.steps_per_epoch, spec.num_classes,
                                feature_dims(encoders_only, spec.sample_shapes, modalities))
  method = balancing.make_method(config.method, modalities, config.balancing, ctx)
  fusion = balancing.resolve_fusion(method, config.model.fusion)
  balancing.check_method(method, modalities, fusion)
  model = models.build_model(_model_config(config, fusion), modalities, spec.sample_shapes, spec.num_classes,
                             dtype=config.dtype)
  labels = functools.partial(optim.modality_labels, heads_scaled=method.unimodal_heads == 'trained',
                             kernels_only=method.scaled_params == 'kernels')
  slices = optim.fusion_slices(fusion, modalities, ctx.feature_dims) if method.scales_fusion_slices else None
  tx = optim.make_optimizer(config.optimizer, labels, config.balancing.apply_to, slices=slices)
  weights = losses.loss_weights(config.loss, modalities)
  options = compile_options.jit_options(models.resolve_kernels(config.model.kernels))
  step = functools.partial(steps.train_step, model=model, tx=tx, method=method, loss_weights=dict(weights),
                           skip_nonfinite=config.train.skip_nonfinite)
  donated = (0,) if donate else ()
  init = make_init(model, tx, method)
  eval_fn = functools.partial(steps.eval_step, model=model)
  encode_fn = functools.partial(steps.encode_step, model=model)

  if num_replicas == 1:
    mesh = mesh or sharding.make_mesh()
    for key in ('batch_size', 'eval_batch_size'):
      sharding.check_batch_size(config.data[key], mesh, f'data.{key}')
    replicated, split = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    on_mesh = {'in_shardings': (replicated, split), 'out_shardings': replicated}
    jit_init = jax.jit(init, out_shardings=replicated, compiler_options=options)
    train_step = jax.jit(step, donate_argnums=donated, compiler_options=options, **on_mesh)
    eval_jit = jax.jit(eval_fn, compiler_options=options, **on_mesh)
    encode_jit = jax.jit(encode_fn, compiler_options=options, **on_mesh)
    eval_step = lambda state, batch: eval_jit(state, sharding.shard_global_batch(batch, mesh))
    encode_step = lambda state, batch: encode_jit(state, sharding.shard_global_batch(batch, mesh))
  else:
    if jax.process_count() > 1:
      raise ValueError('several seeds in one step run in one process; with several processes (hosts) '
                       'train the seeds one after another (num_seeds=1)')
    mesh = mesh if mesh is not None else replica_mesh(num_replicas)
    many = jax.vmap(step)
    if mesh is not None:
      many = jax.shard_map(many, mesh=mesh, in_specs=P(SEED), out_specs=P(SEED))
    stacked = {} if mesh is None else {'out_shardings': NamedSharding(mesh, P(SEED))}
    jit_init = jax.jit(jax.vmap(init, in_axes=(None, 0)), compiler_options=options, **stacked)
    train_step = jax.jit(many, donate_argnums=donated, compiler_options=options)
    eval_step = jax.jit(eval_fn, compiler_options=options)
    encode_step = jax.jit(encode_fn, compiler_options=options)
  return Training(config, spec, model, method, tx, weights, num_replicas, mesh, options, jit_init, train_step,
                  eval_step, encode_step)


def replica_mesh(num_replicas: int) -> Mesh | None:
  """A mesh over the most local devices that divide `num_replicas` (None: one device)."""
  devices = jax.local_devices()
  count = max(d for d in range(1, len(devices) + 1) if num_replicas % d == 0)
  return Mesh(np.array(devices[:count]), (SEED,)) if count > 1 else None


def build(config, *, dataset: common.Dataset | None = None, num_replicas: int = 1,
          mesh: Mesh | None = None) -> Experiment:
  """Validates `config`, loads its dataset (unless given) and builds its `Training`.

  Every name in the config (method, pipeline, modality, encoder, fusion,
  optimizer, schedule, score, apply_to) and every count is checked before the
  dataset is read or anything compiles.
  """
  validate(config)
  if dataset is None:
    import data_pipelines  # the registry imports a dataset's module when it is loaded
    dataset = data_pipelines.load(config.data)
  return Experiment(config, dataset, build_training(config, data_spec(config, dataset),
                                                    num_replicas=num_replicas, mesh=mesh))
