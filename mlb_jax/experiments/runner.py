"""Runs one configuration over several seeds or folds, one workdir per run.

Layout of an experiment folder (`out`):

    out/experiment.json             {"variants": [names in the order they were run]}
    out/<variant>/<run>/            a `loop.train_and_evaluate` workdir (results.json, ...)

A variant is a configuration (usually one method); a run is one seed or fold
of it. The paper reports 3 runs per setting (docs/methods.md#seeds-and-runs,
docs/methods.md#reporting): CREMA-D folds 0-2 and UCF101 splits 1-3, each with seed
[109, 19, 337][i], and AVE seeds 109, 19, 337 on its fixed split. A run whose
results.json exists is skipped, and a run with a checkpoint but no
results.json resumes from it, so an interrupted experiment continues where it
stopped. With `config.num_seeds = S > 1` the unfinished runs of a variant are
trained S at a time by one vmapped step (`mlb_jax.loop`); each run's
folder and results.json are those of a single run (its config says num_seeds 1).
"""

import json
import os
from typing import Any, Callable, NamedTuple, Sequence

import ml_collections

from mlb_jax import config_diff, loop

EXPERIMENT = 'experiment.json'


class Run(NamedTuple):
  """One member of a seed/fold experiment.

  Attributes:
    name: the workdir name, e.g. 'seed_0' or 'fold_1_seed_19'.
    assignments: {config field path: value}, e.g. {'data.fold': 1, 'seed': 19}.
  """
  name: str
  assignments: dict[str, Any]


def make_runs(*, seeds: Sequence[int] = (), folds: Sequence[int] = (),
              seed_fields: Sequence[str] = ('seed',), fold_field: str = 'data.fold') -> list[Run]:
  """The runs of an experiment: one per seed, one per fold, or seeds and folds paired.

  Args:
    seeds: seed values; each sets every field of `seed_fields`.
    folds: fold (split) values; each sets `fold_field`. When both are given they
      are paired in order (run i: folds[i], seeds[i]), the paper's protocol.
    seed_fields: config fields a seed sets (e.g. ('seed', 'data.seed') to also
      redraw a generated dataset).
    fold_field: the config field a fold sets.

  Returns:
    The runs, in order.
  """
  seeds, folds = [int(s) for s in seeds], [int(f) for f in folds]
  if not seeds and not folds:
    raise ValueError('an experiment needs seeds or folds (e.g. --seeds=0,1,2 or --folds=0,1,2)')
  if seeds and folds and len(seeds) != len(folds):
    raise ValueError(f'seeds and folds are paired run by run and must be equally many, '
                     f'got seeds {seeds} and folds {folds}')
  if not seed_fields and seeds:
    raise ValueError('seeds given but no seed_fields to set')
  runs = []
  for i in range(max(len(seeds), len(folds))):
    parts, assignments = [], {}
    if folds:
      parts.append(f'fold_{folds[i]}')
      assignments[fold_field] = folds[i]
    if seeds:
      parts.append(f'seed_{seeds[i]}')
      assignments.update({field: seeds[i] for field in seed_fields})
    runs.append(Run('_'.join(parts), assignments))
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ValueError(f'runs repeat: {names}')
  return runs


def parse_value(config: ml_collections.ConfigDict, path: str, text: str) -> Any:
  """Converts `text` to the type of the config field at `path` (bool, int, float or str)."""
  current = get_field(config, path)
  if isinstance(current, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f"config field '{path}' is a bool; got '{text}'")
    return text.lower() in ('true', '1')
  try:
    if isinstance(current, int):
      number = float(text)
      if number.is_integer():
        return int(number)
    elif isinstance(current, float):
      return float(text)
    elif isinstance(current, str):
      return text
  except ValueError:
    pass
  if isinstance(current, (int, float)):
    raise ValueError(f"config field '{path}' is {type(current).__name__}; got '{text}'")
  raise ValueError(f"config field '{path}' holds a {type(current).__name__}; only bool, int, float and "
                   'str fields can be set here')


def get_field(config: ml_collections.ConfigDict, path: str) -> Any:
  """The value of the dotted field `path` ('balancing.mlb.alpha'); ValueError naming it if absent."""
  node = config
  for i, part in enumerate(path.split('.')):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = '.'.join(path.split('.')[:i]) or 'the top level'
      raise ValueError(f"config has no field '{path}' ('{part}' is not in {where})")
    node = node[part]
  return node


def with_fields(config: ml_collections.ConfigDict, assignments: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with the dotted fields of `assignments` set (each must exist)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for path, value in assignments.items():
    get_field(config, path)
    section, _, leaf = path.rpartition('.')
    target = get_field(config, section) if section else config
    try:
      target[leaf] = value
    except TypeError as e:  # ConfigDict keeps a field's type
      raise ValueError(f"config field '{path}' cannot take {value!r}: {e}") from None
  return config


def record_variant(out: str, name: str, command: str | None = None) -> None:
  """Adds `name` to out/experiment.json (the order the report lists variants in).

  `command`, the command line that ran the variant, is kept for the report.
  """
  path = os.path.join(out, EXPERIMENT)
  meta = json.load(open(path)) if os.path.exists(path) else {'variants': []}
  if name not in meta['variants']:
    meta['variants'].append(name)
  if command:
    meta.setdefault('commands', {})[name] = command
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, path)


def check_name(name: str) -> str:
  if not name or name != os.path.basename(name) or name.startswith('.'):
    raise ValueError(f"a variant name must be a plain folder name, got '{name}'")
  return name


def run_variant(config: ml_collections.ConfigDict, out: str, name: str, runs: Sequence[Run], *,
                train_many: Callable[[list, list], list[dict]] | None = None,
                on_result: Callable[[str, Run, dict, bool], None] | None = None,
                command: str | None = None) -> list[dict]:
  """Trains `config` once per run in `out/<name>/<run.name>`; finished runs are reused.

  Args:
    config: the variant's configuration; `num_seeds` S > 1 trains the
      unfinished runs S at a time with `train_many`.
    out: the experiment folder (created with its parents if missing).
    name: the variant's folder name (e.g. the method).
    runs: from `make_runs`.
    train_many: `(configs, workdirs) -> [results]`; default `loop.train_and_evaluate_many`
      (a group of one run is the single-run step).
    on_result: called as `(name, run, results, reused)` after each run.
    command: the command line, recorded in experiment.json for the report.

  Returns:
    The results dict of every run, in order.

  Raises:
    ValueError: when a finished run's stored config sets a field to another
      value than the one asked for (reusing it would mix settings); a new
      `out` or variant name avoids it.
  """
  train_many = train_many or loop.train_and_evaluate_many
  check_name(name)
  out = loop.check_workdir(out)
  os.makedirs(os.path.join(out, name), exist_ok=True)
  record_variant(out, name, command)
  group_size = config.num_seeds
  if group_size < 1:
    raise ValueError(f'num_seeds must be >= 1, got {group_size}')
  results, todo = {}, []
  for run in runs:  # finished runs first: a mismatching one fails before anything trains
    run_config = with_fields(config, {**run.assignments, 'num_seeds': 1})
    workdir = os.path.join(out, name, run.name)
    path = os.path.join(workdir, loop.RESULTS)
    if not os.path.exists(path):
      todo.append((run, run_config, workdir))
      continue
    results[run.name] = json.load(open(path))
    diff = config_diff.differences(results[run.name].get('config', {}), run_config)
    if diff:
      raise ValueError(f"'{path}' was trained with another config; use a new --out or variant name, "
                       f'or delete the run. Differences: ' + '; '.join(diff[:10]))
    if on_result is not None:
      on_result(name, run, results[run.name], True)
  for i in range(0, len(todo), group_size):
    group = todo[i:i + group_size]
    trained = train_many([c for _, c, _ in group], [w for _, _, w in group])
    for (run, _, _), r in zip(group, trained):
      results[run.name] = r
      if on_result is not None:
        on_result(name, run, r, False)
  return [results[run.name] for run in runs]
