"""Grid or random search over config fields, selected on validation accuracy only.

A search space maps dotted config fields to values:

    balancing.mlb.alpha=0.5,1,2                     listed values (grid or random)
    optimizer.learning_rate=loguniform(1e-4,1e-2)   a range (random search only;
    balancing.mlb.beta_max=uniform(1,4)                 float fields)

Every point is a variant of the experiment folder, trained over the same runs
(seeds/folds). The chosen point maximises the mean validation accuracy of
`config.train.select_head` at each run's best checkpoint; test accuracy is
reported for the chosen point and never used to choose.
"""

import itertools
import json
import math
import os
import re
from typing import Any, Callable, NamedTuple, Sequence

import ml_collections
import numpy as np

from mlb_jax.experiments import aggregate, runner

SWEEP_JSON = 'sweep.json'
SWEEP_MD = 'sweep.md'
_RANGE = re.compile(r'^(uniform|loguniform)\(\s*([^,]+?)\s*,\s*([^)]+?)\s*\)$')


class Choice(NamedTuple):
  values: tuple


class Range(NamedTuple):
  low: float
  high: float
  log: bool


def parse_space(config: ml_collections.ConfigDict, specs: Sequence[str]) -> dict[str, Choice | Range]:
  """{field: Choice | Range} from 'field=v1,v2,...' or 'field=[log]uniform(lo,hi)' strings."""
  space = {}
  for spec in specs:
    field, sep, text = spec.partition('=')
    field, text = field.strip(), text.strip()
    if not sep or not field or not text:
      raise ValueError(f"sweep spec '{spec}' must be 'field=v1,v2,...' or 'field=uniform(lo,hi)'")
    if field in space:
      raise ValueError(f"sweep field '{field}' is given twice")
    current = runner.get_field(config, field)
    match = _RANGE.match(text)
    if match:
      if not isinstance(current, float):
        raise ValueError(f"sweep range '{spec}': '{field}' is {type(current).__name__}, ranges need a float field")
      kind, low, high = match.group(1), float(match.group(2)), float(match.group(3))
      if not low < high or (kind == 'loguniform' and low <= 0):
        raise ValueError(f"sweep range '{spec}' needs low < high{' and low > 0' if kind == 'loguniform' else ''}")
      space[field] = Range(low, high, kind == 'loguniform')
    else:
      values = tuple(runner.parse_value(config, field, v.strip()) for v in text.split(','))
      if len(set(values)) != len(values):
        raise ValueError(f"sweep spec '{spec}' repeats a value")
      space[field] = Choice(values)
  if not space:
    raise ValueError('a sweep needs at least one field (e.g. --grid=balancing.mlb.alpha=0.5,1,2)')
  return space


def grid_points(space: dict[str, Choice | Range]) -> list[dict[str, Any]]:
  """Every combination of the listed values, first field varying slowest."""
  ranges = [f for f, s in space.items() if isinstance(s, Range)]
  if ranges:
    raise ValueError(f'a grid search needs listed values; {ranges} are ranges (use random search)')
  fields = list(space)
  return [dict(zip(fields, combo)) for combo in itertools.product(*(space[f].values for f in fields))]


def random_points(space: dict[str, Choice | Range], num: int, seed: int) -> list[dict[str, Any]]:
  """`num` points drawn with `np.random.default_rng(seed)`.

  With listed values only, points are drawn from the grid without replacement
  (at most the grid's size); ranges are sampled uniformly (log-uniformly).
  """
  if num < 1:
    raise ValueError(f'random search needs num >= 1, got {num}')
  rng = np.random.default_rng(seed)
  if all(isinstance(s, Choice) for s in space.values()):
    grid = grid_points(space)
    return [grid[i] for i in sorted(rng.choice(len(grid), size=min(num, len(grid)), replace=False))]
  points = []
  for _ in range(num):
    point = {}
    for field, s in space.items():
      if isinstance(s, Choice):
        point[field] = s.values[int(rng.integers(len(s.values)))]
      elif s.log:
        point[field] = float(math.exp(rng.uniform(math.log(s.low), math.log(s.high))))
      else:
        point[field] = float(rng.uniform(s.low, s.high))
    points.append(point)
  return points


def point_name(point: dict[str, Any]) -> str:
  """A folder name: 'alpha=2,beta_max=4' (leaf names; full paths where leaves clash)."""
  leaves = [f.rpartition('.')[2] for f in point]
  keys = leaves if len(set(leaves)) == len(leaves) else list(point)
  return ','.join(f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}' for k, v in zip(keys, point.values()))


def run_sweep(config: ml_collections.ConfigDict, out: str, points: Sequence[dict[str, Any]],
              runs: Sequence[runner.Run], *, std: str = 'population',
              train_many: Callable[[Sequence[ml_collections.ConfigDict], Sequence[str]], list] | None = None,
              on_result: Callable[[str, runner.Run, dict, bool], None] | None = None,
              command: str | None = None) -> dict:
  """Trains every point over `runs`, picks the best mean validation accuracy, writes sweep.json/.md.

  Args:
    config: the base configuration.
    out: the experiment folder; each point is the variant `point_name(point)`.
    points: from `grid_points` or `random_points`.
    runs: from `runner.make_runs`.
    std: 'population' or 'sample' (see `aggregate.mean_std`).
    train_many, on_result, command: as for `runner.run_variant`.

  Returns:
    {'select_head', 'runs', 'points': [{'name', 'point', 'val', 'test'}], 'chosen': one of points}
    with 'val'/'test' as {'mean', 'std', 'values'} accuracy of the selected head.
  """
  head = config.train.select_head
  rows = []
  for point in points:
    name = point_name(point)
    results = runner.run_variant(runner.with_fields(config, point), out, name, runs, train_many=train_many,
                                 on_result=on_result, command=command)
    row = {'name': name, 'point': point}
    for split in ('val', 'test'):
      values = [r[split][head]['accuracy'] for r in results]
      mean, spread = aggregate.mean_std(values, std)
      row[split] = {'mean': mean, 'std': spread, 'values': values}
    rows.append(row)
  chosen = max(rows, key=lambda r: r['val']['mean'])  # the first of equals: grid order
  summary = {'select_head': head, 'std': f'{std} (ddof={aggregate.STD_DDOF[std]})',
             'runs': [r.name for r in runs], 'points': rows, 'chosen': chosen}
  with open(os.path.join(out, SWEEP_JSON), 'w') as f:
    json.dump(aggregate.json_safe(summary), f, indent=2)
  with open(os.path.join(out, SWEEP_MD), 'w') as f:
    f.write(sweep_markdown(summary))
  return summary


def _pct(stat: dict) -> str:
  if math.isnan(stat['std']):
    return f"{100 * stat['mean']:.2f}"
  return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def sweep_markdown(summary: dict) -> str:
  """The sweep table (validation only) and the chosen point with its test accuracy."""
  head, chosen = summary['select_head'], summary['chosen']
  lines = ['# Sweep', '',
           f"Selection: mean validation accuracy of the `{head}` head at each run's best checkpoint, over runs "
           f"{', '.join(summary['runs'])} (mean ± std, {summary['std']}, %). Test accuracy is shown for the "
           'chosen point only.', '', '| point | val accuracy |', '|---|---|']
  for row in summary['points']:
    mark = ' **(chosen)**' if row['name'] == chosen['name'] else ''
    lines.append(f"| {row['name']}{mark} | {_pct(row['val'])} |")
  lines += ['', f"Chosen: **{chosen['name']}** — validation {_pct(chosen['val'])}, "
            f"test {_pct(chosen['test'])}.", '']
  return '\n'.join(lines)
