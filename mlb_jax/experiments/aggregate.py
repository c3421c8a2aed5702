"""Reads an experiment folder (see `runner`) and aggregates its runs into mean ± std.

The paper reports the mean and the population standard deviation (`np.std`,
ddof = 0) of the test metrics at the best-validation checkpoint over its 3 runs
(docs/methods.md#reporting); `std='sample'` gives ddof = 1 instead.
"""

import json
import math
import os
import re
from typing import NamedTuple, Sequence

import ml_collections
import numpy as np

from mlb_jax import loop, losses
from mlb_jax.experiments import runner

STD_DDOF = {'population': 0, 'sample': 1}
METRICS = ('accuracy', 'ece', 'loss', 'macro_f1')  # a metric some run's results.json lacks is left out


class RunResult(NamedTuple):
  variant: str
  run: str
  workdir: str
  results: dict


def mean_std(values: Sequence[float], std: str = 'population') -> tuple[float, float]:
  """Mean and standard deviation of `values`.

  Args:
    values: at least one number.
    std: 'population' (ddof = 0, the paper's `np.std`) or 'sample' (ddof = 1;
      nan for a single value).
  """
  if std not in STD_DDOF:
    raise ValueError(f"std must be one of {sorted(STD_DDOF)}, got '{std}'")
  values = np.asarray(values, np.float64)
  if values.size == 0:
    raise ValueError('mean_std needs at least one value')
  ddof = STD_DDOF[std]
  spread = float(np.std(values, ddof=ddof)) if values.size > ddof else math.nan
  return float(np.mean(values)), spread


def natural_key(name: str):
  """Sort key that orders 'seed_2' before 'seed_10'."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def load_results(path: str) -> dict:
  """A results.json, checked for the fields the aggregation reads."""
  try:
    with open(path) as f:
      results = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"'{path}' is not valid JSON: {e}") from None
  missing = [k for k in ('method', 'test', 'config') if k not in results]
  if missing or losses.FUSED not in results.get('test', {}):
    raise ValueError(f"'{path}' lacks {missing or ['test.fused']}; expected the results.json written by "
                     'mlb_jax.loop')
  return results


def commands(out: str) -> dict[str, str]:
  """{variant: the command line that ran it}, as recorded in experiment.json."""
  path = os.path.join(out, runner.EXPERIMENT)
  return json.load(open(path)).get('commands', {}) if os.path.exists(path) else {}


def collect(out: str) -> dict[str, list[RunResult]]:
  """{variant: finished runs} of an experiment folder.

  Variants come in the order of `experiment.json`, then any other folder in
  name order; runs in natural name order. Runs without results.json
  (unfinished) and variants without a finished run are left out.
  """
  if not os.path.isdir(out):
    raise FileNotFoundError(f"experiment folder '{out}' does not exist")
  meta_path = os.path.join(out, runner.EXPERIMENT)
  listed = json.load(open(meta_path))['variants'] if os.path.exists(meta_path) else []
  found = sorted((d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))), key=natural_key)
  collected = {}
  for variant in [*listed, *(d for d in found if d not in listed)]:
    vdir = os.path.join(out, variant)
    if not os.path.isdir(vdir):
      continue
    runs = []
    for run in sorted(os.listdir(vdir), key=natural_key):
      path = os.path.join(vdir, run, loop.RESULTS)
      if os.path.isfile(path):
        runs.append(RunResult(variant, run, os.path.join(vdir, run), load_results(path)))
    if runs:
      collected[variant] = runs
  return collected


def modalities_of(results: dict) -> tuple[str, ...]:
  return tuple(h for h in results['test'] if h != losses.FUSED)


def trained_heads(results: dict) -> tuple[str, ...]:
  """Heads with a non-zero loss weight (Eq. 3); a zero-weight head was never trained.

  Joint Training's unimodal heads count: they are trained as probes.
  """
  loss_config = ml_collections.ConfigDict(results['config']['loss'])
  weights = losses.loss_weights(loss_config, modalities_of(results))
  return tuple(h for h in results['test'] if weights[h] > 0)


def summarize(runs: Sequence[RunResult], std: str = 'population') -> dict:
  """Mean ± std over the runs of one variant.

  Returns:
    {'runs': [names], 'method', 'select_head', 'heads': trained heads,
     'test': {head: {metric: {'mean', 'std', 'values'}}}, 'val': same (when stored),
     'best_step': {'mean', 'std', 'values'}}. A metric of `METRICS` is summarized where every
    run has it (results.json written before `macro_f1` existed have not).
  """
  first = runs[0].results
  heads = [h for h in trained_heads(first) if all(h in r.results['test'] for r in runs)]
  summary = {'runs': [r.run for r in runs], 'method': first['method'],
             'select_head': first['config']['train']['select_head'], 'heads': heads}
  for split in ('test', 'val'):
    if not all(split in r.results for r in runs):
      continue
    summary[split] = {}
    for head in heads:
      summary[split][head] = {}
      for metric in METRICS:
        if not all(metric in r.results[split][head] for r in runs):
          continue
        values = [r.results[split][head][metric] for r in runs]
        m, s = mean_std(values, std)
        summary[split][head][metric] = {'mean': m, 'std': s, 'values': values}
  steps = [r.results['best_step'] for r in runs]
  m, s = mean_std(steps, std)
  summary['best_step'] = {'mean': m, 'std': s, 'values': steps}
  return summary


def summarize_experiment(collected: dict[str, list[RunResult]], std: str = 'population') -> dict:
  """{variant: `summarize(runs)`} for every variant of `collect(out)`."""
  return {variant: summarize(runs, std) for variant, runs in collected.items()}


def _cell(stat: dict | None, scale: float = 100.0) -> str:
  if stat is None:
    return '—'
  if math.isnan(stat['std']):
    return f"{scale * stat['mean']:.2f}"
  return f"{scale * stat['mean']:.2f} ± {scale * stat['std']:.2f}"


def all_heads(summary: dict) -> list[str]:
  """Fused first, then every modality in the order the variants name them."""
  heads = [losses.FUSED]
  for row in summary.values():
    heads += [h for h in row['heads'] if h not in heads]
  return heads


def markdown_table(summary: dict, std: str = 'population') -> str:
  """Test accuracy per head, fused ECE and macro-F1 and the selected head's val accuracy, in %, as
  mean ± std.

  A '—' marks a head the variant never trained (zero loss weight), or a metric its runs lack.
  """
  heads = all_heads(summary)
  header = (['variant', 'runs'] + [f'test acc {h}' for h in heads] + ['test ECE fused', 'test macro-F1 fused',
                                                                     'val acc (selected head)'])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for variant, row in summary.items():
    test = row['test']
    cells = [variant, str(len(row['runs']))]
    cells += [_cell(test[h]['accuracy']) if h in test else '—' for h in heads]
    fused = test.get(losses.FUSED, {})
    cells += [_cell(fused.get('ece')), _cell(fused.get('macro_f1'))]
    val = row.get('val', {}).get(row['select_head'])
    cells.append(f"{_cell(val['accuracy'])} ({row['select_head']})" if val else '—')
    lines.append('| ' + ' | '.join(cells) + ' |')
  ddof = STD_DDOF[std]
  lines.append('')
  lines.append(f'Mean ± {std} standard deviation (ddof = {ddof}) over the runs, in %; test metrics of the '
               'checkpoint with the best validation accuracy of the selected head. '
               '— : head not trained (zero loss weight), or a metric its runs do not have.')
  return '\n'.join(lines)


def json_safe(value):
  """`value` with nan/inf (a sample std of one run, an empty class) as None: strict JSON."""
  if isinstance(value, float) and not np.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def load_history(workdir: str) -> dict[str, list[dict]]:
  """metrics.jsonl as {'train': [...], 'val': [...]}, sorted by step.

  A resume drops the rows after the restored step, so each step is logged once; a file that
  holds a step twice anyway (written by hand, or by older versions) keeps its last record.
  """
  path = os.path.join(workdir, loop.HISTORY)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no training history '{path}'")
  by_key = {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        by_key[(record['split'], int(record['step']))] = record
      except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"'{path}' line {number}: expected a JSON object with 'split' and 'step' "
                         f'({type(e).__name__}: {e})') from None
  history = {'train': [], 'val': []}
  for (split, _), record in sorted(by_key.items(), key=lambda kv: kv[0][1]):
    history.setdefault(split, []).append(record)
  return history


def load_predictions(workdir: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(labels [N], {head: logits [N, C]}) from test_predictions.npz."""
  path = os.path.join(workdir, loop.PREDICTIONS)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no test predictions '{path}'")
  with np.load(path) as data:
    if 'label' not in data:
      raise ValueError(f"'{path}' has no 'label' array; keys {sorted(data.files)}")
    logits = {k[len('logits_'):]: data[k] for k in data.files if k.startswith('logits_')}
    return data['label'], logits
