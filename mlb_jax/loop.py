"""The training driver: one loop for one seed or many, from build to results.json.

    train_and_evaluate(config, workdir)          config.num_seeds seeds; one seed trains in
                                                 `workdir`, S > 1 in `<workdir>/seed_<seed>/`
    train_and_evaluate_many(configs, workdirs)   runs that differ only in seed and data, trained
                                                 together (the experiment runner's variants)
    evaluate(config, workdir, split=...)         the best checkpoint(s) again

One seed runs the single-run step (data parallel over every device); S seeds run
one vmapped step over S stacked states (`mlb_jax.build`). The loop is the same
for both: every replica has its own data order, epoch updates, validation,
checkpoints and files, exactly those of its own single run (the vmapped program
sums in another order, so results agree to float rounding).

This is the only library module that touches files, clocks and loggers; the
math lives in pure functions (`balancing`, `losses`, `optim`, `steps`).
"""

import contextlib
import dataclasses
import json
import math
import os
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from data_pipelines import common
from mlb_jax import (balancing, build as build_lib, checkpointing, config_diff, console, distributed, losses, metrics,
                     runtime, summary, workdir as workdir_lib)
from mlb_jax.build import Experiment
from mlb_jax.train_state import TrainState, parameter_count

RESULTS = 'results.json'
HISTORY = 'metrics.jsonl'  # one JSON object per log/eval event; a resume drops the rows after the restored step
PREDICTIONS = 'test_predictions.npz'  # logits of every head and labels, best checkpoint
PROFILE = 'profile'  # profiler traces of config.profile_steps
PREREQUISITES = 'prerequisites'  # <workdir>/prerequisites/<name>/: the method's prerequisite runs
SPLITS = ('train', 'val', 'test')
MAY_DIFFER = ('seed', 'num_seeds', 'data')  # config fields the runs of one vmapped step may set differently
SINCE_BEST = 'validations_since_best'  # checkpoint metadata: validations without improvement (train.patience)
STOPPED_EARLY = 'stopped_early'  # checkpoint metadata and results.json: {'step', 'patience'} of an early stop


class Preempted(Exception):
  """Training stopped on request (SIGTERM, or Ctrl-C) after saving `checkpoints/last` at `step`."""

  def __init__(self, step: int, directory: str, signal_name: str = 'SIGTERM'):
    super().__init__(f'stopped by {signal_name} at step {step}; saved {directory}; '
                     'run the same command again to resume')
    self.step = step
    self.signal_name = signal_name


def check_workdir(workdir: str) -> str:
  """The absolute workdir; it must be a directory if it exists."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f"workdir '{workdir}' exists and is not a directory")
  return path


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


def run_workdirs(config, workdir: str) -> list[str]:
  """Where each seed of `config` writes: `workdir` for one seed, `<workdir>/seed_<seed>/` for several."""
  if config.num_seeds == 1:
    return [check_workdir(workdir)]
  return [seed_workdir(check_workdir(workdir), c.seed) for c in replica_configs(config)]


# ----------------------------------------------------------------------------------------------
# Replicas: one state, or S stacked ones.


def stack(trees: Sequence):
  """[S, ...] leaves from S pytrees of the same structure."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, index: int):
  """Replica `index` of a stacked pytree."""
  return jax.tree.map(lambda x: x[index], tree)


def split_replicas(training: build_lib.Training, state) -> list:
  return [state] if training.num_replicas == 1 else [unstack(state, s) for s in range(training.num_replicas)]


def join_replicas(training: build_lib.Training, states: Sequence):
  if training.num_replicas == 1:
    return states[0]
  stacked = stack(states)
  return stacked if training.mesh is None else jax.device_put(stacked, NamedSharding(training.mesh, P(build_lib.SEED)))


def replica_history(history: Sequence[Mapping], index: int, num_replicas: int) -> list[dict[str, float]]:
  """Replica `index`'s scalars of the step metrics (scalars, or [S] arrays when S > 1)."""
  if num_replicas == 1:
    return [{k: float(v) for k, v in m.items()} for m in history]
  return [{k: float(np.asarray(v)[index]) for k, v in m.items()} for m in history]


def check_replicas(exps: Sequence[Experiment]) -> None:
  """Raises ValueError unless one compiled step serves every run.

  Their configs may differ only in `MAY_DIFFER`; the datasets must give the
  same modalities, shapes, classes and steps per epoch (epoch windows of the
  methods are steps compiled into the step).
  """
  def key(exp):
    c = exp.config.to_dict()
    return ({k: v for k, v in c.items() if k not in MAY_DIFFER}, build_lib.data_spec(exp.config, exp.dataset),
            exp.config.data.batch_size)

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


# ----------------------------------------------------------------------------------------------
# Evaluation and files.


def evaluate_split(eval_step, state: TrainState, source, *, batch_size: int, heads, ece_bins: int):
  """{head: {'accuracy', 'ece', 'loss', 'macro_f1'}} over a whole split, plus the raw arrays."""
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


def epoch_context(exp: Experiment, epoch: int, step: int) -> balancing.EpochContext:
  """The host services a method's `epoch_update` may use (never the test split)."""
  config, training = exp.config, exp.training

  def evaluate_for_method(state, split, heads):
    if split not in ('train', 'val'):
      raise ValueError(f"a method may evaluate the 'train' or 'val' split, not '{split}'")
    out, _, _ = evaluate_split(training.eval_step, state, exp.dataset.splits[split],
                               batch_size=config.data.eval_batch_size, heads=tuple(heads),
                               ece_bins=config.train.ece_bins)
    return out

  def encode(state, num_batches: int, seed: int):
    it = common.train_batches(exp.dataset.splits['train'], batch_size=config.data.batch_size, seed=seed)
    try:
      for _ in range(num_batches):
        batch = next(it)
        yield training.encode_step(state, {m: batch[m] for m in exp.modalities}), batch[common.LABEL]
    finally:
      if hasattr(it, 'close'):
        it.close()

  def held_out(num_samples: int):
    source = exp.dataset.splits['val']
    if not 1 <= num_samples <= len(source):
      raise ValueError(f'a method asked for {num_samples} held-out samples; the validation split has {len(source)}')
    batch = next(iter(common.eval_batches(source, batch_size=num_samples)))
    batch.pop(common.MASK)
    return batch

  return balancing.EpochContext(epoch=epoch, step=step, steps_per_epoch=training.spec.steps_per_epoch,
                                num_classes=training.spec.num_classes, seed=config.seed,
                                evaluate=evaluate_for_method, encode=encode, held_out=held_out,
                                model=training.model)


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
                  split: str = 'test', checkpoint: str | None = None, trained_with: dict | None = None,
                  stopped_early: dict | None = None) -> dict:
  """The results payload ({split: metrics of every head}); process 0 writes it to `results_name(split)`.

  `trained_with`: the config stored with the evaluated checkpoint, when it differs from `config` in
  fields evaluation may change (data, schedule). `stopped_early`: {'step', 'patience'} when training
  stopped early (`train.patience`).
  """
  payload = {'method': config.method, 'best_step': int(best_step)}
  if stopped_early is not None:
    payload[STOPPED_EARLY] = {'step': int(stopped_early['step']), 'patience': int(stopped_early['patience'])}
  payload.update({split: evaluated, 'config': config.to_dict()})
  if trained_with is not None:
    payload['trained_with'] = trained_with
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


def metric_writer(workdir: str, config, *, start: int) -> summary.SummaryWriter:
  """The TensorBoard writer of `workdir` (only process 0 writes files). A fresh run (`start` 0)
  records `config` as hparams; a resumed one marks the restart so TensorBoard shows each step once."""
  writer = summary.SummaryWriter(workdir, enabled=jax.process_index() == 0)
  if start == 0:
    writer.write_hparams(_flat(config.to_dict()))
  else:
    writer.restart(start + 1)
  return writer


def eval_period(cfg, steps_per_epoch: int) -> int:
  """Steps between validations: `eval_every_epochs` epochs of `steps_per_epoch` steps when that
  is > 0, else `eval_every` steps."""
  if cfg.eval_every_epochs > 0:
    if steps_per_epoch < 1:
      raise ValueError(f'train.eval_every_epochs needs at least one step per epoch, got {steps_per_epoch}')
    return cfg.eval_every_epochs * steps_per_epoch
  return cfg.eval_every


def step_schedule(cfg, step: int, steps_per_epoch: int) -> tuple[bool, bool, bool]:
  """(log, evaluate, save) after train step `step`, from `config.train` and the run's steps per epoch:
  a log line every `log_every`; validation every `eval_every` steps, or with `eval_every_epochs` = E > 0
  after the last step of every E-th epoch (the steps that are multiples of E * `steps_per_epoch`);
  `checkpoints/last` at every validation and every `checkpoint_every_steps`; all three after the last step."""
  last = step == cfg.num_steps
  log = step % cfg.log_every == 0 or last
  evaluate_now = step % eval_period(cfg, steps_per_epoch) == 0 or last
  save = evaluate_now or (cfg.checkpoint_every_steps > 0 and step % cfg.checkpoint_every_steps == 0)
  return log, evaluate_now, save


@dataclasses.dataclass
class Selection:
  """Model selection of one run, stored in the metadata of its checkpoints.

  Attributes:
    best: {'step', 'accuracy'}: the validation with the best `train.select_head` accuracy so far
      (step -1 before the first validation).
    since_best: validations since `best` that did not improve on it (strictly), for `train.patience`.
    stopped_early: {'step', 'patience'} once training stopped early, else None.
  """
  best: dict = dataclasses.field(default_factory=lambda: {'step': -1, 'accuracy': -1.0})
  since_best: int = 0
  stopped_early: dict | None = None

  def update(self, step: int, accuracy: float) -> bool:
    """Counts the validation of `step`; True when it is the new best (strictly better)."""
    if accuracy > self.best['accuracy']:
      self.best, self.since_best = {'step': step, 'accuracy': accuracy}, 0
      return True
    self.since_best += 1
    return False

  def exhausted(self, patience: int) -> bool:
    """Whether `patience` (> 0) validations in a row have not improved on the best."""
    return patience > 0 and self.since_best >= patience

  def meta(self) -> dict:
    out = {'best': dict(self.best), SINCE_BEST: self.since_best}
    if self.stopped_early is not None:
      out[STOPPED_EARLY] = dict(self.stopped_early)
    return out

  @classmethod
  def from_meta(cls, meta: Mapping) -> 'Selection':
    """The selection a checkpoint's metadata stores (a checkpoint of a version without the count: 0)."""
    stopped = meta.get(STOPPED_EARLY)
    return cls(dict(meta['best']), int(meta.get(SINCE_BEST, 0)), None if stopped is None else dict(stopped))


def write_train_means(writer, workdir: str, step: int, means: Mapping[str, float]) -> None:
  """A log window's means to TensorBoard (`train/<name>`) and metrics.jsonl."""
  writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
  _append_history(workdir, {'step': step, 'split': 'train', **means})


def write_val(writer, workdir: str, step: int, val: Mapping[str, Mapping[str, float]]) -> None:
  """Validation metrics ({head: {name: value}}) to TensorBoard (`val/<name>_<head>`) and metrics.jsonl."""
  flat = {f'{k}_{h}': v for h, d in val.items() for k, v in d.items()}
  writer.write_scalars(step, {f'val/{k}': v for k, v in flat.items()})
  _append_history(workdir, {'step': step, 'split': 'val', **flat})


def window_means(history: list[Mapping[str, float]]) -> dict[str, float]:
  """Each metric's mean over the steps of a log window that were not skipped;
  `skipped` (with `train.skip_nonfinite`) counts the skipped ones."""
  kept = [m for m in history if not m.get('skipped', 0.0)] or history
  means = {k: float(np.mean([m[k] for m in kept])) for k in history[0]}
  if 'skipped' in means:
    means['skipped'] = float(sum(m['skipped'] for m in history))
  return means


# ----------------------------------------------------------------------------------------------
# Training.


def train_and_evaluate(config, workdir: str, *, allow_changed: Sequence[str] = (),
                       progress: Callable[[dict], None] | None = None) -> list[dict]:
  """Trains the `config.num_seeds` seeds of `config` (seed, seed + 1, ...) and returns their results.

  One seed trains in `workdir`; several in `<workdir>/seed_<seed>/`, by one vmapped step.
  Resumes from the last checkpoints when there are any. See `train_and_evaluate_many`.
  """
  build_lib.validate(config)
  return train_and_evaluate_many(replica_configs(config), run_workdirs(config, workdir),
                                 allow_changed=allow_changed, progress=progress)


def train_and_evaluate_many(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str], *,
                            allow_changed: Sequence[str] = (),
                            progress: Callable[[dict], None] | None = None) -> list[dict]:
  """Trains the single-run `configs` together, run s in `workdirs[s]`; their results dicts.

  Data parallel over every device of every process with one run (`data.batch_size`
  is the global batch, process p reads shard p of the training split); several
  runs share one vmapped step in one process. Every workdir gets TensorBoard
  scalars, `metrics.jsonl`, `checkpoints/{last,best}` and `results.json` (test
  metrics of the best-validation checkpoint); only process 0 writes logs and
  results. An unfinished group resumes from its runs' last checkpoints. With
  `train.patience` a run stops early (each run of a group on its own count); a run
  that stopped is finished, and resuming it trains no further step.

  Args:
    allow_changed: dotted config fields (or sections) that may differ from the
      config stored with a checkpoint when resuming (e.g. 'train.num_steps' to
      extend a run); any other difference is refused, listing every field.
    progress: called with every `progress_events` event (default: log lines).

  Raises:
    Preempted: on SIGTERM or Ctrl-C, after saving `checkpoints/last` at the next step boundary.
    FloatingPointError: at the first non-finite loss or gradient (unless
      `train.skip_nonfinite`); the non-finite state is never saved.
    ValueError: resuming under a config that differs from the stored one.
    workdir.WorkdirBusy: another training holds a workdir.
  """
  if len(configs) != len(workdirs) or not configs:
    raise ValueError(f'need one workdir per config, got {len(configs)} configs and {len(workdirs)} workdirs')
  bad = [c.num_seeds for c in configs if c.num_seeds != 1]
  if bad:
    raise ValueError(f'each run config is a single run (num_seeds=1), got num_seeds {bad}')
  for c in configs:
    build_lib.validate(c)
  workdirs = [check_workdir(w) for w in workdirs]
  for w in workdirs:
    os.makedirs(w, exist_ok=True)
  with contextlib.ExitStack() as held:
    for w in workdirs:
      held.enter_context(workdir_lib.locked(w, enabled=jax.process_index() == 0))
    return _train_and_evaluate_locked(configs, workdirs, allow_changed, progress or log_progress)


def _train_and_evaluate_locked(configs, workdirs, allow_changed, progress) -> list[dict]:
  datasets = []
  for c in configs:  # runs that draw the same data share one copy of it
    same = next((d for d, other in zip(datasets, configs) if other.data == c.data), None)
    datasets.append(same or _load(c))
  first = build_lib.build(configs[0], dataset=datasets[0], num_replicas=len(configs))
  exps = [Experiment(c, d, first.training) for c, d in zip(configs, datasets)]
  check_replicas(exps)

  training = first.training
  batch_size = configs[0].data.batch_size // jax.process_count()
  iters = [common.train_batches(e.dataset.splits['train'], batch_size=batch_size, seed=e.config.seed,
                                shard=(jax.process_index(), jax.process_count())) for e in exps]
  lasts = [checkpointing.manager(w, checkpointing.LAST) for w in workdirs]
  bests = [checkpointing.manager(w, checkpointing.BEST) for w in workdirs]
  finished_apart = False
  try:
    states = split_replicas(training, initial_state(exps))
    if training.method.prerequisites is not None and not all(m.all_steps() for m in lasts):
      prerequisites = prerequisite_states(exps, workdirs, allow_changed, progress)
      states = [training.method.adopt(s, p) for s, p in zip(states, prerequisites)]
    selections = [Selection() for _ in exps]
    if any(m.all_steps() for m in lasts):
      for m, e, w in zip(lasts, exps, workdirs):  # before any state is read: a state of another config may not fit
        if m.all_steps():
          check_stored_config(checkpointing.restore_meta(m), e.config, w, m.latest_step(), allow_changed)
      restored = [checkpointing.restore_latest(m, s, it) if m.all_steps() else (s, Selection().meta(), 0)
                  for m, s, it in zip(lasts, states, iters)]
      if len({r[2] for r in restored}) > 1:
        logging.warning('the seeds stopped at different steps %s; finishing them one at a time',
                        [r[2] for r in restored])
        finished_apart = True
      else:
        states, selections = [r[0] for r in restored], [Selection.from_meta(r[1]) for r in restored]
        for w in workdirs:
          if jax.process_index() == 0:
            workdir_lib.truncate_history(os.path.join(w, HISTORY), restored[0][2])
        progress({'event': 'resumed', 'step': restored[0][2], 'best': [sel.best for sel in selections]})
    if not finished_apart:
      with distributed.PreemptionWatch() as watch:
        _train(exps, workdirs, join_replicas(training, states), selections, iters, lasts, bests, watch, progress)
  finally:
    for it in iters:
      if hasattr(it, 'close'):
        it.close()
    for m in lasts + bests:
      m.close()
  if finished_apart:
    return [_train_and_evaluate_locked([c], [w], allow_changed, progress)[0] for c, w in zip(configs, workdirs)]
  single = [Experiment(e.config, e.dataset, _single(e.training)) for e in exps]
  return [evaluate_checkpoint(e, w, allow_changed=allow_changed) for e, w in zip(single, workdirs)]


def prerequisite_states(exps: Sequence[Experiment], workdirs: Sequence[str], allow_changed, progress) -> list[dict]:
  """Trains (or resumes, or reuses) the method's prerequisite runs of every run and returns, per run,
  {name: the best state of its prerequisite `name`}; run s's prerequisite `name` lives in
  `<workdirs[s]>/prerequisites/<name>/` and has run s's seed."""
  method = exps[0].training.method
  wanted = [method.prerequisites(e.config) for e in exps]
  out = [{} for _ in exps]
  for name in wanted[0]:
    configs = [w[name] for w in wanted]
    dirs = [os.path.join(w, PREREQUISITES, name) for w in workdirs]

    def named(event, name=name):
      progress({**event, 'runs': [f'{name} {r}' for r in event['runs']]} if 'runs' in event else event)

    train_and_evaluate_many(configs, dirs, allow_changed=allow_changed, progress=named)
    # the runs differ only in seed and data: one build gives every run's restore template
    template = initial_state([build_lib.build(configs[0], dataset=exps[0].dataset)])
    for s, d in enumerate(dirs):
      mngr = checkpointing.manager(d, checkpointing.BEST)
      try:
        out[s][name], _, _ = checkpointing.restore_latest(mngr, template)
      finally:
        mngr.close()
  return out


def check_stored_config(meta: dict, config, where: str, step: int, allow_changed: Sequence[str] = ()) -> None:
  """Raises ValueError when the config stored in a checkpoint's `meta` differs from `config`
  in a field that changes what is computed (not in `allow_changed`)."""
  stored = meta.get('config')
  if stored is None:
    logging.warning("the checkpoint of '%s' (step %d) stores no config; it cannot be checked", where, step)
    return
  diff = config_diff.differences(stored, config, ignore=allow_changed)
  if diff:
    raise ValueError(f"'{where}' holds a run (step {step}) of another config; use another --workdir, or "
                     f"allow the fields that may change with --allow_changed. Differences: {'; '.join(diff)}")


def _load(config):
  import data_pipelines  # the dataset registry imports every pipeline
  return data_pipelines.load(config.data)


def initial_state(exps: Sequence[Experiment]) -> TrainState:
  """The initial state of every run (stacked when several), from each run's `seed`, placed on the devices."""
  sample = exps[0].dataset.splits['train'][0]
  return exps[0].training.initial_state(sample, [e.config.seed for e in exps])


def _single(training: build_lib.Training) -> build_lib.Training:
  """A one-replica view of `training` for evaluating runs one at a time (its eval step is per replica)."""
  if training.num_replicas == 1:
    return training
  return build_lib.build_training(training.config, training.spec, num_replicas=1)._replace(
      eval_step=training.eval_step, encode_step=training.encode_step)


def log_progress(event: dict) -> None:
  """The default `progress`: the lines of `mlb_jax.console.Console`, as INFO log records."""
  kind, several = event['event'], event.get('group_size', len(event.get('runs', ()))) > 1
  if kind == 'start':
    logging.info('training %s: %s', event['runs'], event['what'])
  elif kind == 'resumed':
    logging.info('resumed from step %d', event['step'])
  elif kind == 'train':
    for run, means in zip(event['runs'], event['means']):
      logging.info('%s%s', f'{run}: ' if several else '',
                   console.train_line(event['step'], event['total'], means, event['steps_per_sec'], None))
  elif kind == 'val':
    for run, val, best in zip(event['runs'], event['val'], event['best']):
      logging.info('%s%s', f'{run}: ' if several else '', console.val_line(event['step'], val, best))
  elif kind == 'stopped':
    for run, best in zip(event['runs'], event['best']):
      logging.info('%s%s', f'{run}: ' if several else '',
                   console.stopped_line(event['step'], event['patience'], event['head'], best))


def _train(exps: Sequence[Experiment], workdirs: Sequence[str], state, selections: list[Selection], iters, lasts,
           bests, watch: distributed.PreemptionWatch, progress: Callable[[dict], None]) -> None:
  """The step loop of `train_and_evaluate_many`, from the restored step to `train.num_steps`, or until
  every run has stopped early (`train.patience`); `selections` (one per run) is updated in place.

  Calls `progress` with {'event': 'start' | 'train' | 'val' | 'stopped', 'step', 'total', 'runs': [names],
  ...}: 'train' events carry each run's window `means` and `steps_per_sec`; 'val' events each run's
  validation metrics `val` and `best` {'step', 'accuracy'}; 'stopped' events (a run stopped early) the
  `patience`, `head`, each run's `best` and how many runs are `remaining`. A run that stopped early
  while others train on in the same vmapped step writes nothing more: its state is still stepped (one
  compiled step serves all runs) but never validated, logged or saved again, and the events leave it out.
  """
  exp0 = exps[0]
  config, cfg, training = exp0.config, exp0.config.train, exp0.training
  num, method = len(exps), training.method
  heads = (losses.FUSED, *exp0.modalities)
  spe = training.spec.steps_per_epoch
  start = saved = int(jax.device_get(state.step).reshape(-1)[0])
  runs = [os.path.basename(w) if num > 1 else f'seed {e.config.seed}' for e, w in zip(exps, workdirs)]
  base = dict(total=cfg.num_steps, group_size=num)  # events name the runs they concern; the group has `num`

  def stopped_event(step, which):
    progress({'event': 'stopped', 'step': step, **base, 'runs': [runs[s] for s in which], 'patience': cfg.patience,
              'head': cfg.select_head, 'best': [selections[s].best for s in which],
              'remaining': sum(active)})

  # A run restored with its patience used up (it stopped early, or a resume lowered train.patience) trains
  # no further; a raised or disabled patience lets a stopped run go on.
  replicas, stopped_before = None, []
  for s, (e, sel) in enumerate(zip(exps, selections)):
    if not sel.exhausted(cfg.patience):
      sel.stopped_early = None
    elif start < cfg.num_steps:
      stopped_before.append(s)
      record = {'step': start, 'patience': cfg.patience}
      if sel.stopped_early != record:  # the metadata of checkpoints/last records the stop
        sel.stopped_early = record
        replicas = replicas or split_replicas(training, state)
        checkpointing.save(lasts[s], start, replicas[s], _meta(e.config, sel), iters[s])
  active = [s not in stopped_before for s in range(num)]
  if stopped_before:
    stopped_event(start, stopped_before)
  if not any(active):
    return

  writers = [metric_writer(w, e.config, start=start) if a else None for e, w, a in zip(exps, workdirs, active)]
  progress({'event': 'start', 'step': start, **base, 'runs': [r for r, a in zip(runs, active) if a], 'what': (
      f'{config.method}, {parameter_count(split_replicas(training, state)[0].params):,} parameters, modalities '
      f'{list(exp0.modalities)}, ' + (f'{jax.device_count()} device(s) in {jax.process_count()} process(es)'
                                      if num == 1 else f'{num} seeds in one vmapped step'))})

  # Metrics of the steps since the last log, how many were checked, and the clock of the window; the
  # first window's clock starts after the first step, whose call includes compiling the step.
  pending, checked, t0, timed_from = [], 0, time.time(), 0
  profile = runtime.ProfileWindow(config.profile_steps, os.path.join(workdirs[0], PROFILE))
  try:
    for step in range(start + 1, cfg.num_steps + 1):
      if not any(active):
        break
      live = [s for s in range(num) if active[s]]
      if method.epoch_update is not None and (step - 1) % spe == 0:
        replicas = split_replicas(training, state)
        replicas = [method.epoch_update(epoch_context(e, (step - 1) // spe, step - 1), r) if active[s] else r
                    for s, (e, r) in enumerate(zip(exps, replicas))]
        state = join_replicas(training, replicas)
      batch = training.place_batch([next(it) for it in iters])
      profile.before(step)
      state, step_metrics = training.train_step(state, batch)
      if step == start + 1:
        t0, timed_from = time.time(), 1
      profile.after(step, step_metrics)
      pending.append(step_metrics)
      stop = watch.requested(step)
      log, evaluate_now, save = step_schedule(cfg, step, spe)
      save = save or stop
      if log or save:  # per run: nothing non-finite is ever logged as a mean or saved
        pending = jax.device_get(pending)
        for s in live:
          try:
            check_finite(step - len(pending) + 1 + checked, replica_history(pending[checked:], s, num), saved)
          except FloatingPointError as e:
            raise (FloatingPointError(f"seed {exps[s].config.seed} ('{workdirs[s]}'): {e}") if num > 1 else e) from None
        checked = len(pending)
      now = time.time()
      if evaluate_now or save:
        replicas = split_replicas(training, state)
      vals, stopping = {}, []
      if evaluate_now:  # computed here, written after this step's log row
        for s in live:
          e = exps[s]
          val, _, _ = evaluate_split(training.eval_step, replicas[s], e.dataset.splits['val'],
                                     batch_size=e.config.data.eval_batch_size, heads=heads, ece_bins=cfg.ece_bins)
          vals[s] = (val, selections[s].update(step, val[cfg.select_head]['accuracy']))
          if selections[s].exhausted(cfg.patience) and step < cfg.num_steps:
            selections[s].stopped_early = {'step': step, 'patience': cfg.patience}
            stopping.append(s)
      # A run that stops early logs its last window, as a run does after its last step; the others keep theirs.
      logged = live if log else stopping
      if logged:
        timed = len(pending) - timed_from
        rate = timed / max(now - t0, 1e-9) if timed > 0 else 0.0
        all_means = []
        for s in logged:
          means = window_means(replica_history(pending, s, num))
          means['steps_per_sec'] = rate
          write_train_means(writers[s], workdirs[s], step, means)
          all_means.append(means)
        progress({'event': 'train', 'step': step, **base, 'runs': [runs[s] for s in logged], 'means': all_means,
                  'steps_per_sec': rate})
      if log:
        pending, checked, t0, timed_from = [], 0, now, 0
      if evaluate_now:
        for s, (val, improved) in vals.items():
          write_val(writers[s], workdirs[s], step, val)
          if improved:
            checkpointing.save(bests[s], step, replicas[s], _meta(exps[s].config, selections[s], val=val))
        progress({'event': 'val', 'step': step, **base, 'runs': [runs[s] for s in vals],
                  'val': [v for v, _ in vals.values()], 'best': [selections[s].best for s in vals]})
      if save:
        for s in live:
          checkpointing.save(lasts[s], step, replicas[s], _meta(exps[s].config, selections[s]), iters[s])
        saved = step
      if stopping:
        for s in stopping:
          active[s] = False
        stopped_event(step, stopping)
      if stop:
        raise Preempted(step, os.path.join(str(lasts[live[0]].directory), str(step)), watch.signal_name)
  finally:
    profile.close()
    for writer in writers:
      if writer is not None:
        writer.flush()
        writer.close()


def _meta(config, selection: Selection, **extra) -> dict:
  """A checkpoint's metadata: the model selection so far (best validation, validations since it, an early
  stop) and the config it was trained with."""
  return {**selection.meta(), 'config': config_diff.comparable(config), **extra}


# ----------------------------------------------------------------------------------------------
# Evaluation of checkpoints.


def evaluate(config, workdir: str, *, split: str = 'test', checkpoint_dir: str | None = None,
             allow_changed: Sequence[str] = ()) -> list[dict]:
  """`evaluate_checkpoint` of every seed of `train_and_evaluate(config, workdir)`; one build for all."""
  build_lib.validate(config)
  if checkpoint_dir is not None and config.num_seeds > 1:
    raise ValueError('--checkpoint_dir names one checkpoint; evaluate several seeds from their workdirs')
  out, training, datasets = [], None, {}
  for c, w in zip(replica_configs(config), run_workdirs(config, workdir)):
    key = json.dumps(c.data.to_dict(), sort_keys=True)
    if key not in datasets:
      datasets[key] = _load(c)
    if training is None:
      training = build_lib.build(c, dataset=datasets[key]).training
    out.append(evaluate_checkpoint(Experiment(c, datasets[key], training), w, split=split,
                                   checkpoint_dir=checkpoint_dir, allow_changed=allow_changed))
  return out


def evaluate_checkpoint(exp: Experiment, workdir: str, *, split: str = 'test',
                        checkpoint_dir: str | None = None, allow_changed: Sequence[str] = ()) -> dict:
  """Restores the best checkpoint of `workdir` (best `train.select_head` validation
  accuracy), evaluates val and `split`, and rewrites `results_name(split)` in `workdir`
  (with `stopped_early` when the training recorded in `workdir/checkpoints/last` stopped early).

  Args:
    exp: the built one-replica experiment of the config the checkpoint was trained
      with (its data fields may point at another copy or split of the dataset).
    workdir: where results (and, without `checkpoint_dir`, the checkpoint) live.
    split: 'test' (results.json), 'val' or 'train' (results_<split>.json).
    checkpoint_dir: another workdir (its best checkpoint) or a directory of
      numbered steps, e.g. copied from another machine; any device count works,
      whatever the checkpoint was trained on.
    allow_changed: config fields besides `data.*` that may differ from the
      config stored with the checkpoint (any other difference is refused).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split '{split}'; expected one of {list(SPLITS)}")
  workdir = check_workdir(workdir)
  config = exp.config
  if checkpoint_dir is None:
    path = checkpointing.directory(workdir, checkpointing.BEST)
    if not os.path.isdir(path) or not any(name.isdigit() for name in os.listdir(path)):
      raise FileNotFoundError(f"no checkpoint under '{path}'; train first (--mode=train)")
  else:
    path = checkpointing.resolve(checkpoint_dir)
  os.makedirs(workdir, exist_ok=True)
  mngr = checkpointing.manager_at(path, read_only=True)
  try:
    # What the model computes must match; the data may be another copy or split, the schedule of the
    # training that produced the checkpoint does not matter to its evaluation.
    stored = checkpointing.restore_meta(mngr).get('config')
    check_stored_config({'config': stored}, config, path, mngr.latest_step(), ('data', 'train', *allow_changed))
    state, _, step = checkpointing.restore_latest(mngr, initial_state([exp]))
  finally:
    mngr.close()
  # The config the checkpoint was trained with, kept in the results where it differs from `config`.
  trained_with = stored if stored is not None and config_diff.differences(stored, config) else None
  heads = (losses.FUSED, *exp.modalities)
  kwargs = dict(batch_size=config.data.eval_batch_size, heads=heads, ece_bins=config.train.ece_bins)
  val, logits, labels = evaluate_split(exp.training.eval_step, state, exp.dataset.splits['val'], **kwargs)
  evaluated = val
  if split != 'val':
    evaluated, logits, labels = evaluate_split(exp.training.eval_step, state, exp.dataset.splits[split], **kwargs)
  if jax.process_index() == 0:
    name = PREDICTIONS if split == 'test' else f'{split}_predictions.npz'
    tmp = os.path.join(workdir, 'tmp_' + name)
    np.savez(tmp, label=labels, **{f'logits_{h}': z for h, z in logits.items()})
    os.replace(tmp, os.path.join(workdir, name))
  results = write_results(workdir, config, step, evaluated, val, split=split,
                          checkpoint=None if checkpoint_dir is None else os.path.join(path, str(step)),
                          trained_with=trained_with,
                          stopped_early=stopped_early_record(workdir) if checkpoint_dir is None else None)
  logging.info('%s accuracy (checkpoint step %d): %s', split, step,
               {h: round(d['accuracy'], 4) for h, d in evaluated.items()})
  return results


def stopped_early_record(workdir: str) -> dict | None:
  """{'step', 'patience'} when the training of `workdir` stopped early (from the metadata of the newest
  readable `checkpoints/last` step), else None."""
  path = checkpointing.directory(workdir, checkpointing.LAST)
  if not os.path.isdir(path) or not any(name.isdigit() for name in os.listdir(path)):
    return None
  mngr = checkpointing.manager_at(path, read_only=True)
  try:
    for step in sorted(mngr.all_steps(), reverse=True):
      try:
        return checkpointing.restore_meta(mngr, step).get(STOPPED_EARLY)
      except Exception as e:  # noqa: BLE001 -- an unreadable step falls back to the previous one, as a resume does
        logging.warning("the metadata of '%s' could not be read (%s: %.300s)", os.path.join(path, str(step)),
                        type(e).__name__, e)
    return None
  finally:
    mngr.close()


def _flat(d: Mapping, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
