"""The training driver: sequences build, step, evaluate, checkpoint and log.

This is the only library module that touches files, clocks and loggers; the
math lives in pure functions (`balancing`, `losses`, `optim`, `steps`).
"""

import functools
import json
import math
import os
import time
from typing import Any, Mapping, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

import data_pipelines
from data_pipelines import common
from mlb_jax import (balancing, checkpointing, distributed, losses, metrics, models, optim, runtime, sharding,
                     steps)
from mlb_jax import train_state as train_state_lib
from mlb_jax.train_state import TrainState, create_train_state, parameter_count

RESULTS = 'results.json'
HISTORY = 'metrics.jsonl'  # one JSON object per log/eval event (after a resume a step may repeat: last wins)
PREDICTIONS = 'test_predictions.npz'  # logits of every head and labels, best checkpoint
PROFILE = 'profile'  # profiler traces of config.profile_steps
SPLITS = ('train', 'val', 'test')


class Preempted(Exception):
  """Training stopped on request (SIGTERM) after saving `checkpoints/last` at `step`."""

  def __init__(self, step: int, directory: str):
    super().__init__(f'stopped by SIGTERM at step {step}; saved {directory}; '
                     'run the same command again to resume')
    self.step = step


class Experiment(NamedTuple):
  """Everything built from a config, before any step runs."""
  config: ml_collections.ConfigDict
  dataset: common.Dataset
  modalities: tuple[str, ...]
  model: Any
  method: balancing.Method
  tx: Any
  loss_weights: dict[str, float]
  init: Any = None   # train_state.make_init(model, tx, method): compiled once, used by `initial_state`


def check_workdir(workdir: str) -> str:
  """The absolute workdir; its parent must exist (it is created itself)."""
  path = os.path.abspath(workdir)
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"workdir parent '{parent}' does not exist (workdir '{workdir}')")
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f"workdir '{workdir}' exists and is not a directory")
  return path


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


def build(config, *, dataset: common.Dataset | None = None) -> Experiment:
  """Validates `config` and builds dataset, model, method and optimizer.

  Every name in the config (method, pipeline, modality, encoder, fusion,
  optimizer, schedule, score, apply_to) is checked here, before training.
  `dataset`: the already loaded dataset of `config.data` (e.g. shared by seeds
  that draw the same data), instead of loading it again.
  """
  if config.method not in balancing.METHODS:
    raise ValueError(f"unknown method '{config.method}'; expected one of {sorted(balancing.METHODS)}")
  if config.balancing.apply_to not in optim.APPLY_TO:
    raise ValueError(f"unknown balancing.apply_to '{config.balancing.apply_to}'; "
                     f'expected one of {list(optim.APPLY_TO)}')
  if config.num_seeds < 1:
    raise ValueError(f'num_seeds must be >= 1, got {config.num_seeds}')
  runtime.parse_profile_steps(config.profile_steps)
  dataset = dataset or data_pipelines.load(config.data)
  modalities = resolve_modalities(config, dataset)
  if config.train.select_head not in (losses.FUSED, *modalities):
    raise ValueError(f"train.select_head '{config.train.select_head}' is not a head; expected one of "
                     f'{[losses.FUSED, *modalities]}')
  model, method, tx, weights = build_training(
      config, modalities, dataset.sample_shapes, dataset.num_classes,
      common.steps_per_epoch(len(dataset.splits['train']), config.data.batch_size))
  return Experiment(config, dataset, modalities, model, method, tx, weights,
                    init=train_state_lib.make_init(model, tx, method))


def build_training(config, modalities, sample_shapes, num_classes: int, steps_per_epoch: int):
  """(model, method, optimizer, loss weights) of `config` for data of these shapes.

  The part of `build` that needs no dataset: benchmarks on random batches use it
  to get exactly the step a run of `config` takes.
  """
  model = models.build_model(config.model, modalities, sample_shapes, num_classes, dtype=config.dtype)
  ctx = balancing.MethodContext(steps_per_epoch=steps_per_epoch, num_classes=num_classes,
                                feature_dims=feature_dims(model, sample_shapes, modalities),
                                fusion=config.model.fusion)
  method = balancing.make_method(config.method, modalities, config.balancing, ctx)
  labels = functools.partial(optim.modality_labels, heads_scaled=not method.detach_unimodal,
                             kernels_only=method.scale_kernels_only)
  tx = optim.make_optimizer(config.optimizer, labels, config.balancing.apply_to)
  return model, method, tx, losses.loss_weights(config.loss, modalities)


def feature_dims(model, sample_shapes, modalities) -> dict[str, int]:
  """{modality: D}, the encoders' output widths (shape inference only, no compute)."""
  sample = {m: jax.ShapeDtypeStruct((1, *sample_shapes[m]), np.float32) for m in modalities}
  (features, _) = jax.eval_shape(
      lambda b: model.init_with_output({'params': jax.random.key(0)}, b, train=False, method='encode'), sample)
  return {m: int(f.shape[-1]) for m, f in features.items()}


def epoch_inputs(exp: Experiment, state: TrainState, epoch: int, eval_step, encode_step) -> dict | None:
  """What `method.epoch_update` needs at the start of `epoch` (None: nothing to do).

  'val_accuracy' (MSLR): [M] validation accuracy of each modality's share of the
  fused logits after the previous epoch. 'prototypes' (PMR): per-class sums [M, C, D]
  and counts [M, C] of batch-normalised inference-mode features over training
  batches (epoch 0: all; later: floor(n * fraction) + 1 batches of a fresh shuffle).
  """
  config, kind = exp.config, exp.method.epoch_input
  if kind == 'val_accuracy':
    if epoch == 0:
      return None
    heads = [f'contribution_{m}' for m in exp.modalities]
    val, _, _ = evaluate(eval_step, state, exp.dataset.splits['val'], batch_size=config.data.eval_batch_size,
                         heads=heads, ece_bins=config.train.ece_bins)
    return {'epoch': epoch, 'accuracy': np.array([val[h]['accuracy'] for h in heads], np.float32)}
  if kind == 'prototypes':
    from mlb_jax.balancing import pmr
    train = exp.dataset.splits['train']
    batches = common.steps_per_epoch(len(train), config.data.batch_size)
    if epoch > 0:
      batches = min(batches, int(batches * config.balancing.pmr.fraction) + 1)
    it = common.train_batches(train, batch_size=config.data.batch_size, seed=config.seed * 7919 + epoch)
    sums, counts = 0.0, 0.0
    try:
      for _ in range(batches):
        batch = next(it)
        features = encode_step(state, {m: batch[m] for m in exp.modalities})
        per = [pmr.prototype_sums(features[m], batch[common.LABEL], exp.dataset.num_classes)
               for m in exp.modalities]
        sums = sums + np.stack([np.asarray(p[0]) for p in per])
        counts = counts + np.stack([np.asarray(p[1]) for p in per])
    finally:
      if hasattr(it, 'close'):
        it.close()
    return {'epoch': epoch, 'sums': sums, 'counts': counts}
  raise ValueError(f"unknown epoch_input '{kind}' of method '{exp.method.name}'")


def initial_state(exp: Experiment) -> TrainState:
  sample = exp.dataset.splits['train'][0]
  batch = {m: np.asarray(sample[m])[None] for m in exp.modalities}
  return create_train_state(exp.model, exp.tx, exp.method, batch, jax.random.key(exp.config.seed),
                            init=exp.init)


def evaluate(eval_step, state: TrainState, source, *, batch_size: int, heads, ece_bins: int):
  """{head: {'accuracy', 'ece', 'loss'}} over a whole split, plus the raw arrays."""
  logits = {h: [] for h in heads}
  labels = []
  for batch in common.eval_batches(source, batch_size=batch_size):
    mask = batch.pop(common.MASK)
    out = jax.device_get(eval_step(state, batch))
    for h in heads:
      logits[h].append(np.asarray(out[h])[mask])
    labels.append(batch[common.LABEL][mask])
  labels = np.concatenate(labels)
  logits = {h: np.concatenate(v) for h, v in logits.items()}
  return {h: metrics.head_metrics(z, labels, ece_bins) for h, z in logits.items()}, logits, labels


def nonfinite_description(values: Mapping[str, float]) -> str | None:
  """Which heads' losses, which parameter groups' gradients and which other metrics
  of one step are not finite (None when all are)."""
  bad = sorted(k for k, v in values.items() if not math.isfinite(v))
  if not bad:
    return None
  heads = [k[len('loss_'):] for k in bad if k.startswith('loss_')]
  grads = [k[len('grad_norm_'):] for k in bad if k.startswith('grad_norm_')]
  other = [k for k in bad if not k.startswith(('loss_', 'grad_norm_'))]
  parts = ([f'loss of head {heads}'] if heads else []) + ([f'gradient of {grads}'] if grads else [])
  return '; '.join(parts + ([f'metrics {other}'] if other else []))


def check_finite(first_step: int, history: list[Mapping[str, float]], last_saved: int) -> None:
  """Raises FloatingPointError naming the first step of `history` (steps first_step, first_step + 1, ...)
  with a non-finite value; steps the train step skipped (`skipped` = 1) are warned about instead."""
  for step, values in enumerate(history, first_step):
    what = nonfinite_description(values)
    if what is None:
      continue
    if values.get('skipped', 0.0) > 0:
      logging.warning('step %d skipped (train.skip_nonfinite): non-finite %s', step, what)
      continue
    raise FloatingPointError(
        f'non-finite {what} at step {step}; training stopped, the last checkpoint (step {last_saved}) '
        'is kept. train.skip_nonfinite=True skips such steps instead')


def _write_json_atomic(path: str, payload: dict) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=False)
  os.replace(tmp, path)


def results_name(split: str) -> str:
  """results.json for the test split, results_<split>.json for another one."""
  return RESULTS if split == 'test' else f'results_{split}.json'


def write_results(workdir: str, config, best_step: int, evaluated: dict, val: dict | None, *,
                  split: str = 'test', checkpoint: str | None = None) -> dict:
  """The results payload ({split: metrics of every head}); process 0 writes it to `results_name(split)`."""
  payload = {'method': config.method, 'best_step': int(best_step), split: evaluated,
             'config': config.to_dict()}
  if val is not None:
    payload['val'] = val
  if checkpoint is not None:
    payload['checkpoint'] = checkpoint
  if jax.process_index() == 0:
    _write_json_atomic(os.path.join(workdir, results_name(split)), payload)
  return payload


def _append_history(workdir: str, record: dict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, HISTORY), 'a') as f:
      f.write(json.dumps(record) + '\n')


def metric_writer(workdir: str, config, *, fresh: bool):
  """The CLU writer of `workdir` (only process 0 writes files); a `fresh` run
  (step 0) also records `config` as TensorBoard hparams."""
  from clu import metric_writers  # imports TensorFlow: only where logs are written
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if fresh:
    writer.write_hparams({k: str(v) for k, v in _flat(config.to_dict()).items()})
  return writer


def step_schedule(cfg, step: int) -> tuple[bool, bool, bool]:
  """(log, evaluate, save) after train step `step`, from `config.train`: a log line every
  `log_every`, validation every `eval_every`, `checkpoints/last` at every validation and
  every `checkpoint_every_steps`; all three after the last step."""
  last = step == cfg.num_steps
  log = step % cfg.log_every == 0 or last
  evaluate_now = step % cfg.eval_every == 0 or last
  save = evaluate_now or (cfg.checkpoint_every_steps > 0 and step % cfg.checkpoint_every_steps == 0)
  return log, evaluate_now, save


def write_train_means(writer, workdir: str, step: int, means: Mapping[str, float]) -> None:
  """A log window's means to TensorBoard (`train/<name>`) and metrics.jsonl."""
  writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
  _append_history(workdir, {'step': step, 'split': 'train', **means})


def write_val(writer, workdir: str, step: int, val: Mapping[str, Mapping[str, float]]) -> None:
  """Validation metrics ({head: {name: value}}) to TensorBoard (`val/<name>_<head>`) and metrics.jsonl."""
  flat = {f'{k}_{h}': v for h, d in val.items() for k, v in d.items()}
  writer.write_scalars(step, {f'val/{k}': v for k, v in flat.items()})
  _append_history(workdir, {'step': step, 'split': 'val', **flat})


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its last checkpoint if any.

  Data parallel over every device of every process (`mlb_jax.sharding`):
  `data.batch_size` is the global batch, process p reads shard p of the training
  split. Writes TensorBoard scalars, `checkpoints/{last,best}` and `results.json`
  (test metrics of the best-validation checkpoint); only process 0 writes logs
  and results. Returns the results dict.

  Raises:
    Preempted: on SIGTERM, after saving `checkpoints/last` at the next step boundary.
    FloatingPointError: at the first non-finite loss or gradient (unless
      `train.skip_nonfinite`); the non-finite state is never saved.
  """
  if config.num_seeds != 1:
    raise ValueError(f'num_seeds={config.num_seeds} trains several seeds: use '
                     'mlb_jax.multiseed.train_and_evaluate_seeds (run.py does), or num_seeds=1 here')
  workdir = check_workdir(workdir)
  exp = build(config)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.data.batch_size, mesh, 'data.batch_size')
  sharding.check_batch_size(config.data.eval_batch_size, mesh, 'data.eval_batch_size')
  os.makedirs(workdir, exist_ok=True)

  state = sharding.replicate(initial_state(exp), mesh)
  logging.info('model: %d parameters; modalities %s; method %s; %d devices in %d processes',
               parameter_count(state.params), exp.modalities, config.method, mesh.devices.size,
               jax.process_count())
  data_iter = common.train_batches(exp.dataset.splits['train'],
                                   batch_size=config.data.batch_size // jax.process_count(),
                                   seed=config.seed, shard=(jax.process_index(), jax.process_count()))
  last_mngr = checkpointing.manager(workdir, checkpointing.LAST)
  best_mngr = checkpointing.manager(workdir, checkpointing.BEST)
  eval_step = steps.make_eval_step(model=exp.model, mesh=mesh)  # validation and test: compiled once
  try:
    with distributed.PreemptionWatch() as watch:
      _train(exp, mesh, state, data_iter, last_mngr, best_mngr, workdir, watch, eval_step)
  finally:
    if hasattr(data_iter, 'close'):
      data_iter.close()
    last_mngr.close()
    best_mngr.close()
  return evaluate_checkpoint(config, workdir, exp=exp, mesh=mesh, eval_step=eval_step)


def _on_mesh(step_fn, mesh):
  """`step_fn(state, batch)` fed a host batch that every process holds whole (evaluation, prototypes)."""
  return lambda state, batch: step_fn(state, sharding.shard_global_batch(batch, mesh))


def window_means(history: list[Mapping[str, float]]) -> dict[str, float]:
  """Each metric's mean over the steps of a log window that were not skipped;
  `skipped` (with `train.skip_nonfinite`) counts the skipped ones."""
  kept = [m for m in history if not m.get('skipped', 0.0)] or history
  means = {k: float(np.mean([m[k] for m in kept])) for k in history[0]}
  if 'skipped' in means:
    means['skipped'] = float(sum(m['skipped'] for m in history))
  return means


def _train(exp: Experiment, mesh, state: TrainState, data_iter, last_mngr, best_mngr, workdir: str,
           watch: distributed.PreemptionWatch, eval_step) -> None:
  """The step loop of `train_and_evaluate`, from `checkpoints/last` (if any) to `train.num_steps`."""
  config, cfg = exp.config, exp.config.train
  heads = (losses.FUSED, *exp.modalities)
  best = {'step': -1, 'accuracy': -1.0}
  if last_mngr.all_steps():
    state, meta, _ = checkpointing.restore_latest(last_mngr, state, data_iter)
    best = meta['best']
    logging.info('resumed from step %d (best val accuracy %.4f at step %d)',
                 int(state.step), best['accuracy'], best['step'])

  train_step = steps.make_train_step(model=exp.model, tx=exp.tx, method=exp.method,
                                     loss_weights=exp.loss_weights, skip_nonfinite=cfg.skip_nonfinite,
                                     mesh=mesh)
  eval_step = _on_mesh(eval_step, mesh)
  encode_step = _on_mesh(steps.make_encode_step(model=exp.model, mesh=mesh), mesh)
  spe = common.steps_per_epoch(len(exp.dataset.splits['train']), config.data.batch_size)
  start = saved = int(state.step)
  writer = metric_writer(workdir, config, fresh=start == 0)

  pending, checked, t0 = [], 0, time.time()  # metrics of the steps since the last log; how many were checked
  profile = runtime.ProfileWindow(config.profile_steps, os.path.join(workdir, PROFILE))
  try:
    for step in range(start + 1, cfg.num_steps + 1):
      if exp.method.epoch_update is not None and (step - 1) % spe == 0:
        inputs = epoch_inputs(exp, state, (step - 1) // spe, eval_step, encode_step)
        if inputs is not None:
          state = state.replace(balance_state=exp.method.epoch_update(state.balance_state, inputs))
      profile.before(step)
      state, step_metrics = train_step(state, sharding.shard_batch(next(data_iter), mesh))
      profile.after(step, step_metrics)
      pending.append(step_metrics)
      stop = watch.requested(step)
      log, evaluate_now, save = step_schedule(cfg, step)
      save = save or stop
      if log or save:  # nothing non-finite is ever logged as a mean or saved
        pending = jax.device_get(pending)
        check_finite(step - len(pending) + 1 + checked, pending[checked:], saved)
        checked = len(pending)
      if log:
        means = window_means(pending)
        means['steps_per_sec'] = len(pending) / max(time.time() - t0, 1e-9)
        write_train_means(writer, workdir, step, means)
        logging.info('step %d/%d  loss %.4f  acc fused %.3f  %s', step, cfg.num_steps, means['loss'],
                     means[f'acc_{losses.FUSED}'],
                     '  '.join(f"k_{m} {means[f'scale_{m}']:.3f}" for m in exp.modalities
                               if f'scale_{m}' in means))
        pending, checked, t0 = [], 0, time.time()
      if evaluate_now:
        val, _, _ = evaluate(eval_step, state, exp.dataset.splits['val'],
                             batch_size=config.data.eval_batch_size, heads=heads, ece_bins=cfg.ece_bins)
        write_val(writer, workdir, step, val)
        if val[cfg.select_head]['accuracy'] > best['accuracy']:
          best = {'step': step, 'accuracy': val[cfg.select_head]['accuracy']}
          checkpointing.save(best_mngr, step, state, {'best': best, 'val': val})
        logging.info('step %d  val acc %s  (best %.4f at step %d)', step,
                     {h: round(d['accuracy'], 4) for h, d in val.items()}, best['accuracy'], best['step'])
      if save:
        checkpointing.save(last_mngr, step, state, {'best': best}, data_iter)
        saved = step
      if stop:
        raise Preempted(step, os.path.join(str(last_mngr.directory), str(step)))
  finally:
    profile.close()
    writer.flush()
    writer.close()


def evaluate_checkpoint(config, workdir: str, *, exp: Experiment | None = None, split: str = 'test',
                        checkpoint_dir: str | None = None, mesh=None, eval_step=None) -> dict:
  """Restores the best checkpoint of `workdir` (best `train.select_head` validation
  accuracy), evaluates val and `split`, and rewrites `results_name(split)` in `workdir`.

  Args:
    config: the config the checkpoint was trained with (its data fields may
      point at another copy or split of the dataset).
    workdir: where results (and, without `checkpoint_dir`, the checkpoint) live.
    exp: the built experiment, when the caller has it.
    split: 'test' (results.json), 'val' or 'train' (results_<split>.json).
    checkpoint_dir: another workdir (its best checkpoint) or a directory of
      numbered steps, e.g. copied from another machine.
    mesh: the devices to evaluate on (default: all); any count works, whatever
      the checkpoint was trained on.
    eval_step: a `steps.make_eval_step` of `exp.model` (without a mesh, or
      with this `mesh`) to reuse: the training's validation and evaluations of
      several checkpoints of one model then compile it once.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split '{split}'; expected one of {list(SPLITS)}")
  workdir = check_workdir(workdir)
  exp = exp or build(config)
  mesh = mesh or sharding.make_mesh()
  sharding.check_batch_size(config.data.eval_batch_size, mesh, 'data.eval_batch_size')
  if checkpoint_dir is None:
    path = checkpointing.directory(workdir, checkpointing.BEST)
    if not os.path.isdir(path) or not any(name.isdigit() for name in os.listdir(path)):
      raise FileNotFoundError(f"no checkpoint under '{path}'; train first (--mode=train)")
  else:
    path = checkpointing.resolve(checkpoint_dir)
  os.makedirs(workdir, exist_ok=True)
  mngr = checkpointing.manager_at(path, read_only=True)
  try:
    state, _, step = checkpointing.restore_latest(mngr, sharding.replicate(initial_state(exp), mesh))
  finally:
    mngr.close()
  eval_step = _on_mesh(eval_step or steps.make_eval_step(model=exp.model, mesh=mesh), mesh)
  heads = (losses.FUSED, *exp.modalities)
  kwargs = dict(batch_size=config.data.eval_batch_size, heads=heads, ece_bins=config.train.ece_bins)
  val, logits, labels = evaluate(eval_step, state, exp.dataset.splits['val'], **kwargs)
  evaluated = val
  if split != 'val':
    evaluated, logits, labels = evaluate(eval_step, state, exp.dataset.splits[split], **kwargs)
  if jax.process_index() == 0:
    name = PREDICTIONS if split == 'test' else f'{split}_predictions.npz'
    tmp = os.path.join(workdir, 'tmp_' + name)
    np.savez(tmp, label=labels, **{f'logits_{h}': z for h, z in logits.items()})
    os.replace(tmp, os.path.join(workdir, name))
  results = write_results(workdir, config, step, evaluated, val, split=split,
                          checkpoint=None if checkpoint_dir is None else os.path.join(path, str(step)))
  logging.info('%s accuracy (checkpoint step %d): %s', split, step,
               {h: round(d['accuracy'], 4) for h, d in evaluated.items()})
  return results


def _flat(d: Mapping, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
