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
from mlb_jax import balancing, checkpointing, losses, metrics, models, optim, steps
from mlb_jax.train_state import TrainState, create_train_state, parameter_count

RESULTS = 'results.json'
HISTORY = 'metrics.jsonl'  # one JSON object per log/eval event (after a resume a step may repeat: last wins)
PREDICTIONS = 'test_predictions.npz'  # logits of every head and labels, best checkpoint


class Experiment(NamedTuple):
  """Everything built from a config, before any step runs."""
  config: ml_collections.ConfigDict
  dataset: common.Dataset
  modalities: tuple[str, ...]
  model: Any
  method: balancing.Method
  tx: Any
  loss_weights: dict[str, float]


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


def build(config) -> Experiment:
  """Validates `config` and builds dataset, model, method and optimizer.

  Every name in the config (method, pipeline, modality, encoder, fusion,
  optimizer, schedule, score, apply_to) is checked here, before training.
  """
  if config.method not in balancing.METHODS:
    raise ValueError(f"unknown method '{config.method}'; expected one of {sorted(balancing.METHODS)}")
  if config.balancing.apply_to not in optim.APPLY_TO:
    raise ValueError(f"unknown balancing.apply_to '{config.balancing.apply_to}'; "
                     f'expected one of {list(optim.APPLY_TO)}')
  dataset = data_pipelines.load(config.data)
  modalities = resolve_modalities(config, dataset)
  if config.train.select_head not in (losses.FUSED, *modalities):
    raise ValueError(f"train.select_head '{config.train.select_head}' is not a head; expected one of "
                     f'{[losses.FUSED, *modalities]}')
  model = models.build_model(config.model, modalities, dataset.sample_shapes, dataset.num_classes)
  ctx = balancing.MethodContext(
      steps_per_epoch=common.steps_per_epoch(len(dataset.splits['train']), config.data.batch_size),
      num_classes=dataset.num_classes, feature_dims=feature_dims(model, dataset, modalities),
      fusion=config.model.fusion)
  method = balancing.make_method(config.method, modalities, config.balancing, ctx)
  labels = functools.partial(optim.modality_labels, heads_scaled=not method.detach_unimodal,
                             kernels_only=method.scale_kernels_only)
  tx = optim.make_optimizer(config.optimizer, labels, config.balancing.apply_to)
  weights = losses.loss_weights(config.loss, modalities)
  return Experiment(config, dataset, modalities, model, method, tx, weights)


def feature_dims(model, dataset: common.Dataset, modalities) -> dict[str, int]:
  """{modality: D}, the encoders' output widths (shape inference only, no compute)."""
  sample = {m: jax.ShapeDtypeStruct((1, *dataset.sample_shapes[m]), np.float32) for m in modalities}
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
    for _ in range(batches):
      batch = next(it)
      features = encode_step(state, {m: batch[m] for m in exp.modalities})
      per = [pmr.prototype_sums(features[m], batch[common.LABEL], exp.dataset.num_classes) for m in exp.modalities]
      sums = sums + np.stack([np.asarray(p[0]) for p in per])
      counts = counts + np.stack([np.asarray(p[1]) for p in per])
    return {'epoch': epoch, 'sums': sums, 'counts': counts}
  raise ValueError(f"unknown epoch_input '{kind}' of method '{exp.method.name}'")


def initial_state(exp: Experiment) -> TrainState:
  sample = exp.dataset.splits['train'][0]
  batch = {m: np.asarray(sample[m])[None] for m in exp.modalities}
  return create_train_state(exp.model, exp.tx, exp.method, batch, jax.random.key(exp.config.seed))


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


def _check_finite(step: int, values: Mapping[str, float]) -> None:
  bad = sorted(k for k, v in values.items() if not math.isfinite(v))
  if bad:
    raise FloatingPointError(f'non-finite training metrics at step {step}: {bad}')


def _write_json_atomic(path: str, payload: dict) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=False)
  os.replace(tmp, path)


def write_results(workdir: str, config, best_step: int, test: dict, val: dict | None) -> dict:
  payload = {'method': config.method, 'best_step': int(best_step), 'test': test,
             'config': config.to_dict()}
  if val is not None:
    payload['val'] = val
  _write_json_atomic(os.path.join(workdir, RESULTS), payload)
  return payload


def _append_history(workdir: str, record: dict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, HISTORY), 'a') as f:
      f.write(json.dumps(record) + '\n')


def _metric_writer(workdir: str):
  from clu import metric_writers  # imports TensorFlow: only where logs are written
  return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its last checkpoint if any.

  Writes TensorBoard scalars, `checkpoints/{last,best}` and `results.json`
  (test metrics of the best-validation checkpoint). Returns the results dict.
  """
  workdir = check_workdir(workdir)
  exp = build(config)
  os.makedirs(workdir, exist_ok=True)
  cfg = config.train
  heads = (losses.FUSED, *exp.modalities)
  select = cfg.select_head

  state = initial_state(exp)
  logging.info('model: %d parameters; modalities %s; method %s',
               parameter_count(state.params), exp.modalities, config.method)
  data_iter = common.train_batches(exp.dataset.splits['train'], batch_size=config.data.batch_size,
                                   seed=config.seed)
  last_mngr = checkpointing.manager(workdir, checkpointing.LAST)
  best_mngr = checkpointing.manager(workdir, checkpointing.BEST)
  best = {'step': -1, 'accuracy': -1.0}
  if last_mngr.latest_step() is not None:
    state, meta = checkpointing.restore(last_mngr, state, data_iter)
    best = meta['best']
    logging.info('resumed from step %d (best val accuracy %.4f at step %d)',
                 int(state.step), best['accuracy'], best['step'])

  train_step = steps.make_train_step(model=exp.model, tx=exp.tx, method=exp.method,
                                     loss_weights=exp.loss_weights)
  eval_step = steps.make_eval_step(model=exp.model)
  encode_step = steps.make_encode_step(model=exp.model)
  spe = common.steps_per_epoch(len(exp.dataset.splits['train']), config.data.batch_size)
  writer = _metric_writer(workdir)
  start = int(state.step)
  if start == 0:
    writer.write_hparams({k: str(v) for k, v in _flat(config.to_dict()).items()})

  pending, t0 = [], time.time()
  for step in range(start + 1, cfg.num_steps + 1):
    if exp.method.epoch_update is not None and (step - 1) % spe == 0:
      inputs = epoch_inputs(exp, state, (step - 1) // spe, eval_step, encode_step)
      if inputs is not None:
        state = state.replace(balance_state=exp.method.epoch_update(state.balance_state, inputs))
    state, step_metrics = train_step(state, next(data_iter))
    pending.append(step_metrics)
    if step % cfg.log_every == 0 or step == cfg.num_steps:
      means = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
      _check_finite(step, means)
      means['steps_per_sec'] = len(pending) / max(time.time() - t0, 1e-9)
      writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
      _append_history(workdir, {'step': step, 'split': 'train', **means})
      logging.info('step %d/%d  loss %.4f  acc fused %.3f  %s', step, cfg.num_steps, means['loss'],
                   means[f'acc_{losses.FUSED}'],
                   '  '.join(f"k_{m} {means[f'scale_{m}']:.3f}" for m in exp.modalities if f'scale_{m}' in means))
      pending, t0 = [], time.time()
    if step % cfg.eval_every == 0 or step == cfg.num_steps:
      val, _, _ = evaluate(eval_step, state, exp.dataset.splits['val'],
                           batch_size=config.data.eval_batch_size, heads=heads, ece_bins=cfg.ece_bins)
      writer.write_scalars(step, {f'val/{k}_{h}': v for h, d in val.items() for k, v in d.items()})
      _append_history(workdir, {'step': step, 'split': 'val', **{f'{k}_{h}': v for h, d in val.items()
                                                                   for k, v in d.items()}})
      if val[select]['accuracy'] > best['accuracy']:
        best = {'step': step, 'accuracy': val[select]['accuracy']}
        checkpointing.save(best_mngr, step, state, {'best': best, 'val': val})
      checkpointing.save(last_mngr, step, state, {'best': best}, data_iter)
      logging.info('step %d  val acc %s  (best %.4f at step %d)', step,
                   {h: round(d['accuracy'], 4) for h, d in val.items()}, best['accuracy'], best['step'])
  writer.flush()
  writer.close()
  last_mngr.close()
  best_mngr.close()
  return evaluate_checkpoint(config, workdir, exp=exp)


def evaluate_checkpoint(config, workdir: str, *, exp: Experiment | None = None) -> dict:
  """Restores the best checkpoint of `workdir` (best `train.select_head` validation
  accuracy), evaluates val and test, and rewrites results.json."""
  workdir = check_workdir(workdir)
  exp = exp or build(config)
  mngr = checkpointing.manager(workdir, checkpointing.BEST)
  if mngr.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint under '{os.path.join(workdir, 'checkpoints', 'best')}'; "
                            'train first (--mode=train)')
  state, meta = checkpointing.restore(mngr, initial_state(exp))
  mngr.close()
  eval_step = steps.make_eval_step(model=exp.model)
  heads = (losses.FUSED, *exp.modalities)
  kwargs = dict(batch_size=config.data.eval_batch_size, heads=heads, ece_bins=config.train.ece_bins)
  val, _, _ = evaluate(eval_step, state, exp.dataset.splits['val'], **kwargs)
  test, logits, labels = evaluate(eval_step, state, exp.dataset.splits['test'], **kwargs)
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, 'tmp_' + PREDICTIONS)
    np.savez(tmp, label=labels, **{f'logits_{h}': z for h, z in logits.items()})
    os.replace(tmp, os.path.join(workdir, PREDICTIONS))
  results = write_results(workdir, config, meta['best']['step'], test, val)
  logging.info('test accuracy (best step %d): %s', meta['best']['step'],
               {h: round(d['accuracy'], 4) for h, d in test.items()})
  return results


def _flat(d: Mapping, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
