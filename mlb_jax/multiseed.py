"""Several seeds of one configuration trained together by one jitted, vmapped step.

The paper trains every setting 3 times; on a small model one run leaves most of
an accelerator idle. Here S replicas (a `TrainState` each, with its own
parameters, optimizer and balancing state) are stacked along a leading axis
and `steps.train_step` is `jax.vmap`-ed over (state, batch): one compiled step
trains all of them, each on its own batches.

Replica s is the single run of its own config: the same initial state
(`loop.initial_state`, from its `seed`), the same data order (its own
`train_batches` iterator, from its `seed` and its `data.*` fields, so a seed
that also redraws the synthetic data gets its own dataset), the same epoch-level
inputs (MSLR validation accuracy, PMR prototypes, computed per replica), the
same validation, checkpoints and files in its own workdir. Results agree with
separate runs to float rounding (the vmapped program sums in another order).

  * `config.num_seeds = S` (run.py): seeds `seed, ..., seed + S - 1`, each in
    `<workdir>/seed_<seed>/` (`train_and_evaluate_seeds`);
  * the experiment runner trains the runs of a variant S at a time
    (`train_and_evaluate_many`, any runs that differ only in `seed` and `data.*`).

Devices: with several local devices (e.g. `JAX_NUM_CPU_DEVICES=2` on a
2-core CPU, or several GPUs) the replicas are split over as many of them as
divide S (`shard_map`, no communication); multi-process runs are refused.
A resumed group whose replicas stopped at different steps is finished one
replica at a time by `loop.train_and_evaluate`.
"""

import functools
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from data_pipelines import common
from mlb_jax import checkpointing, compile_options, loop, losses, runtime, steps
from mlb_jax.train_state import TrainState

SEED = 'seed'  # the mesh axis replicas are split on
MAY_DIFFER = ('seed', 'num_seeds', 'data')  # config fields replicas of one step may set differently


def seed_workdir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f'seed_{seed}')


def replica_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The single-run configs of `config.num_seeds` seeds: seed + s, num_seeds = 1."""
  out = []
  for s in range(config.num_seeds):
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed, c.num_seeds = config.seed + s, 1
    out.append(c)
  return out


def check_replicas(exps: Sequence[loop.Experiment]) -> None:
  """Raises ValueError unless one compiled step serves every replica.

  Their configs may differ only in `MAY_DIFFER`; the datasets must give the
  same modalities, shapes, classes and steps per epoch (epoch windows of the
  methods are steps compiled into the step).
  """
  def key(exp):
    c = exp.config.to_dict()
    train = exp.dataset.splits['train']
    return ({k: v for k, v in c.items() if k not in MAY_DIFFER},
            exp.modalities, exp.dataset.num_classes, exp.dataset.sample_shapes,
            common.steps_per_epoch(len(train), exp.config.data.batch_size), exp.config.data.batch_size)

  first = key(exps[0])
  for exp in exps[1:]:
    other = key(exp)
    if other != first:
      fields = sorted(k for k in set(first[0]) | set(other[0]) if first[0].get(k) != other[0].get(k))
      raise ValueError(
          'the seeds of one vmapped step must share everything but '
          f'{list(MAY_DIFFER)}; seed {exp.config.seed} differs from seed {exps[0].config.seed} in '
          f"{fields or 'its data (modalities, shapes, classes, batch size or steps per epoch)'}; "
          'train them with num_seeds=1')


def stack(trees: Sequence) -> TrainState:
  """[S, ...] leaves from S pytrees of the same structure."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, index: int):
  """Replica `index` of a stacked pytree."""
  return jax.tree.map(lambda x: x[index], tree)


def replica_mesh(num_replicas: int) -> Mesh | None:
  """A mesh over the most local devices that divide `num_replicas` (None: one device)."""
  devices = jax.local_devices()
  count = max(d for d in range(1, len(devices) + 1) if num_replicas % d == 0)
  return Mesh(np.array(devices[:count]), (SEED,)) if count > 1 else None


def place(tree, mesh: Mesh | None):
  """`tree` split over `mesh` along the replica axis (as is without a mesh)."""
  return tree if mesh is None else jax.device_put(tree, NamedSharding(mesh, P(SEED)))


def make_multi_train_step(*, model, tx, method, loss_weights, skip_nonfinite: bool = False,
                          mesh: Mesh | None = None, donate: bool = True):
  """`steps.train_step` vmapped over stacked states and batches [S, B, ...], jitted once.

  Returns `(state, batch) -> (state, metrics)` with every metric [S]. With a
  `mesh` each device steps its own S / devices replicas.
  """
  fn = jax.vmap(functools.partial(steps.train_step, model=model, tx=tx, method=method,
                                  loss_weights=dict(loss_weights), skip_nonfinite=skip_nonfinite))
  if mesh is not None:
    fn = jax.shard_map(fn, mesh=mesh, in_specs=P(SEED), out_specs=P(SEED))
  return jax.jit(fn, donate_argnums=(0,) if donate else (), compiler_options=compile_options.jit_options())


def train_and_evaluate_seeds(config, workdir: str) -> list[dict]:
  """`config.num_seeds` seeds (seed, seed + 1, ...) in `<workdir>/seed_<seed>/`; their results."""
  configs = replica_configs(config)
  workdir = loop.check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  return train_and_evaluate_many(configs, [seed_workdir(workdir, c.seed) for c in configs])


def evaluate_seeds(config, workdir: str, **kwargs) -> list[dict]:
  """`loop.evaluate_checkpoint` of every seed of `train_and_evaluate_seeds`."""
  return [loop.evaluate_checkpoint(c, seed_workdir(workdir, c.seed), **kwargs) for c in replica_configs(config)]


def train_and_evaluate_many(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]) -> list[dict]:
  """Trains the single-run `configs` together, run s in `workdirs[s]`; their results dicts.

  Every workdir ends up as `loop.train_and_evaluate` leaves it (checkpoints,
  TensorBoard scalars, metrics.jsonl, results.json); an unfinished group
  resumes from the replicas' last checkpoints.
  """
  if len(configs) != len(workdirs) or not configs:
    raise ValueError(f'need one workdir per config, got {len(configs)} configs and {len(workdirs)} workdirs')
  if jax.process_count() > 1:
    raise ValueError('several seeds in one step run in one process; with several processes (hosts) '
                     'train the seeds one after another (num_seeds=1)')
  bad = [c.num_seeds for c in configs if c.num_seeds != 1]
  if bad:
    raise ValueError(f'each replica config is a single run (num_seeds=1), got num_seeds {bad}')
  workdirs = [loop.check_workdir(w) for w in workdirs]
  exps = []
  for c in configs:  # seeds that draw the same data share one copy of it
    same = next((e.dataset for e in exps if e.config.data == c.data), None)
    exps.append(loop.build(c, dataset=same))
  check_replicas(exps)
  exps = [e._replace(init=exps[0].init) for e in exps]  # one compiled initialiser for all
  for w in workdirs:
    os.makedirs(w, exist_ok=True)
  iters = [common.train_batches(e.dataset.splits['train'], batch_size=e.config.data.batch_size,
                                seed=e.config.seed) for e in exps]
  lasts = [checkpointing.manager(w, checkpointing.LAST) for w in workdirs]
  bests = [checkpointing.manager(w, checkpointing.BEST) for w in workdirs]
  eval_step = steps.make_eval_step(model=exps[0].model)  # validation and test of every seed: compiled once
  try:
    states, best = [loop.initial_state(e) for e in exps], [{'step': -1, 'accuracy': -1.0} for _ in exps]
    if any(m.all_steps() for m in lasts):
      restored = [checkpointing.restore_latest(m, s, it) if m.all_steps() else (s, {'best': b}, 0)
                  for m, s, it, b in zip(lasts, states, iters, best)]
      if len({r[2] for r in restored}) > 1:
        logging.warning('the seeds stopped at different steps %s; finishing them one at a time',
                        [r[2] for r in restored])
        states = None
      else:
        states, best = [r[0] for r in restored], [r[1]['best'] for r in restored]
        logging.info('resumed %d seeds from step %d', len(exps), restored[0][2])
    if states is not None:
      _train(exps, workdirs, states, best, iters, lasts, bests, eval_step)
  finally:
    for it in iters:
      if hasattr(it, 'close'):
        it.close()
    for m in lasts + bests:
      m.close()
  if states is None:
    return [loop.train_and_evaluate(c, w) for c, w in zip(configs, workdirs)]
  return [loop.evaluate_checkpoint(e.config, w, exp=e, eval_step=eval_step) for e, w in zip(exps, workdirs)]


def _train(exps, workdirs, states, best, iters, lasts, bests, eval_step) -> None:
  """The step loop of `train_and_evaluate_many`: `loop._train`'s schedule, per replica."""
  exp0, num = exps[0], len(exps)
  config, cfg = exp0.config, exp0.config.train
  heads = (losses.FUSED, *exp0.modalities)
  mesh = replica_mesh(num)
  train_step = make_multi_train_step(model=exp0.model, tx=exp0.tx, method=exp0.method,
                                     loss_weights=exp0.loss_weights, skip_nonfinite=cfg.skip_nonfinite,
                                     mesh=mesh)
  encode_step = steps.make_encode_step(model=exp0.model)
  spe = common.steps_per_epoch(len(exp0.dataset.splits['train']), config.data.batch_size)
  start = saved = int(states[0].step)
  writers = [loop.metric_writer(w, e.config, fresh=start == 0) for e, w in zip(exps, workdirs)]
  logging.info('training %d seeds %s in one vmapped step%s', num, [e.config.seed for e in exps],
               f' over {mesh.devices.size} devices' if mesh is not None else '')
  state = place(stack(states), mesh)
  pending, checked, t0 = [], 0, time.time()
  profile = runtime.ProfileWindow(config.profile_steps, os.path.join(workdirs[0], loop.PROFILE))
  try:
    for step in range(start + 1, cfg.num_steps + 1):
      if exp0.method.epoch_update is not None and (step - 1) % spe == 0:
        replicas = [unstack(state, s) for s in range(num)]
        for s, e in enumerate(exps):
          inputs = loop.epoch_inputs(e, replicas[s], (step - 1) // spe, eval_step, encode_step)
          if inputs is not None:
            replicas[s] = replicas[s].replace(balance_state=e.method.epoch_update(replicas[s].balance_state,
                                                                                 inputs))
        state = place(stack(replicas), mesh)
      batch = {k: np.stack(vs) for k, vs in _transpose([next(it) for it in iters]).items()}
      profile.before(step)
      state, step_metrics = train_step(state, batch)
      profile.after(step, step_metrics)
      pending.append(step_metrics)
      log, evaluate_now, save = loop.step_schedule(cfg, step)
      if log or save:  # per replica, as loop._train: nothing non-finite is logged or saved
        pending = jax.device_get(pending)
        for s, w in enumerate(workdirs):
          try:
            loop.check_finite(step - len(pending) + 1 + checked, _replica_history(pending[checked:], s), saved)
          except FloatingPointError as e:
            raise FloatingPointError(f"seed {exps[s].config.seed} ('{w}'): {e}") from None
        checked = len(pending)
      if log:
        rate = len(pending) / max(time.time() - t0, 1e-9)
        for s, (w, writer) in enumerate(zip(workdirs, writers)):
          means = loop.window_means(_replica_history(pending, s))
          means['steps_per_sec'] = rate
          loop.write_train_means(writer, w, step, means)
        logging.info('step %d/%d  loss per seed %s', step, cfg.num_steps,
                     [round(float(np.mean([m['loss'][s] for m in pending])), 4) for s in range(num)])
        pending, checked, t0 = [], 0, time.time()
      if evaluate_now:
        for s, (e, w, writer) in enumerate(zip(exps, workdirs, writers)):
          replica = unstack(state, s)
          val, _, _ = loop.evaluate(eval_step, replica, e.dataset.splits['val'],
                                    batch_size=e.config.data.eval_batch_size, heads=heads, ece_bins=cfg.ece_bins)
          loop.write_val(writer, w, step, val)
          if val[cfg.select_head]['accuracy'] > best[s]['accuracy']:
            best[s] = {'step': step, 'accuracy': val[cfg.select_head]['accuracy']}
            checkpointing.save(bests[s], step, replica, {'best': best[s], 'val': val})
        logging.info('step %d  best val acc per seed %s', step, [round(b['accuracy'], 4) for b in best])
      if save:
        for s in range(num):
          checkpointing.save(lasts[s], step, unstack(state, s), {'best': best[s]}, iters[s])
        saved = step
  finally:
    profile.close()
    for writer in writers:
      writer.flush()
      writer.close()


def _transpose(batches: Sequence[dict]) -> dict[str, list]:
  return {k: [b[k] for b in batches] for k in batches[0]}


def _replica_history(history: Sequence[dict], index: int) -> list[dict[str, float]]:
  """Replica `index`'s scalars of stacked step metrics ({name: [S]} per step)."""
  return [{k: float(np.asarray(v)[index]) for k, v in m.items()} for m in history]
