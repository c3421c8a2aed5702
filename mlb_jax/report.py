"""Writes `report.md` for an experiment folder: the mean ± std table and the figures.

    python -m mlb_jax.experiments --mode=report --out=EXPERIMENT_FOLDER

The report reads only what the runs left on disk (results.json,
metrics.jsonl, test_predictions.npz), so it can be regenerated at any time,
e.g. after more variants were added to the folder. Figures go to
`figures/`, the numbers behind them to `report.json`.
"""

import json
import os
from typing import Mapping

import numpy as np

from mlb_jax import analysis, losses, plots
from mlb_jax.experiments import aggregate

REPORT = 'report.md'
SUMMARY = 'report.json'
FIGURES = 'figures'


def _unimodal_logits(run: aggregate.RunResult, labels: np.ndarray, logits: dict, collected,
                     reference: Mapping[str, str], modalities) -> dict[str, np.ndarray] | None:
  """The unimodal predictions paired with `run` (whose test `labels` / `logits` are given).

  Without `reference`: the run's own unimodal heads (None if one was not
  trained). With it: modality m from the same-named run of variant reference[m].
  """
  if not reference:
    trained = aggregate.trained_heads(run.results)
    if any(m not in trained or m not in logits for m in modalities):
      return None
    return {m: logits[m] for m in modalities}
  out = {}
  for m in modalities:
    variant = reference[m]
    match = [r for r in collected[variant] if r.run == run.run]
    if not match:
      raise ValueError(f"reference variant '{variant}' (for {m}) has no finished run '{run.run}'; "
                       f'it has {[r.run for r in collected[variant]]}')
    if m not in aggregate.trained_heads(match[0].results):
      raise ValueError(f"reference variant '{variant}' did not train a {m} head (zero loss weight)")
    ref_labels, ref_logits = aggregate.load_predictions(match[0].workdir)
    if m not in ref_logits or not np.array_equal(ref_labels, labels):
      raise ValueError(f"'{match[0].workdir}' has no {m} logits for the test set of '{run.workdir}'")
    out[m] = ref_logits[m]
  return out


def agreement_analyses(collected, *, reference: Mapping[str, str] | None = None,
                       modalities=None) -> dict[str, analysis.Agreement]:
  """Figure 4 per variant, pooled over its runs.

  Args:
    collected: `aggregate.collect(out)`.
    reference: {modality: variant} whose runs supply the unimodal predictions
      (separately trained unimodal models, as in the paper), paired by run
      name; default each variant's own unimodal heads.
    modalities: the modalities defining the bins; default the reference's,
      else each variant's own.

  Returns:
    {variant: pooled Agreement} for every variant with a trained fused head
    (and, without `reference`, trained heads for those modalities); reference
    variants are left out.
  """
  reference = dict(reference or {})
  unknown = {m: v for m, v in reference.items() if v not in collected}
  if unknown:
    raise ValueError(f'reference variants {unknown} are not in the experiment; it has {list(collected)}')
  result = {}
  for variant, runs in collected.items():
    if variant in reference.values() or losses.FUSED not in aggregate.trained_heads(runs[0].results):
      continue
    names = tuple(modalities or reference or aggregate.modalities_of(runs[0].results))
    analyses = []
    for run in runs:
      labels, logits = aggregate.load_predictions(run.workdir)
      unimodal = _unimodal_logits(run, labels, logits, collected, reference, names)
      if unimodal is None:
        break
      analyses.append(analysis.agreement(labels, logits[losses.FUSED], unimodal, names))
    else:
      result[variant] = sum(analyses[1:], analyses[0])
  return result


def per_class(collected, head: str = losses.FUSED) -> dict[str, list[float]]:
  """{variant: per-class test accuracy of `head`, pooled over runs} for variants that trained it."""
  out = {}
  for variant, runs in collected.items():
    if head not in aggregate.trained_heads(runs[0].results):
      continue
    labels, logits = zip(*(aggregate.load_predictions(run.workdir) for run in runs))
    pooled = analysis.per_class_accuracy(np.concatenate([z[head] for z in logits]), np.concatenate(labels))
    out[variant] = [float(v) for v in pooled]
  return out


def _agreement_table(agreements: Mapping[str, analysis.Agreement]) -> str:
  labels = next(iter(agreements.values())).labels
  lines = ['| variant | ' + ' | '.join(labels) + ' |', '|---|' + '---|' * len(labels)]
  for variant, a in agreements.items():
    cells = [f'{100 * acc:.1f} (n={n})' if n else 'n=0' for acc, n in zip(a.accuracy, a.counts)]
    lines.append(f'| {variant} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _per_class_table(rows: Mapping[str, list[float]]) -> str:
  variants = list(rows)
  lines = ['| class | ' + ' | '.join(variants) + ' |', '|---|' + '---|' * len(variants)]
  for c in range(max(len(v) for v in rows.values())):
    lines.append(f'| {c} | ' + ' | '.join(f'{100 * rows[v][c]:.1f}' if c < len(rows[v]) and np.isfinite(rows[v][c])
                                          else '—' for v in variants) + ' |')
  return '\n'.join(lines)


def _figure(md: list[str], out: str, name: str, alt: str, plot, *args, **kwargs) -> None:
  """Draws `plot(*args, path=out/figures/name, **kwargs)` and links it from the report."""
  plot(*args, path=os.path.join(out, FIGURES, name), **kwargs)
  md.extend([f'![{alt}]({FIGURES}/{name})', ''])


def write_report(out: str, *, std: str = 'population', reference: Mapping[str, str] | None = None,
                 title: str = '', command: str | None = None) -> str:
  """Aggregates `out`, draws the figures and writes `out/report.md`; returns its path.

  Args:
    out: an experiment folder written by `runner.run_variant`.
    std: 'population' (ddof = 0, the paper's) or 'sample' (ddof = 1).
    reference: {modality: variant} for the agreement analysis (see `agreement_analyses`).
    title: the report's heading; default the folder name.
    command: the command line writing the report, listed after the ones that
      trained the variants (recorded in experiment.json).
  """
  collected = aggregate.collect(out)
  if not collected:
    raise FileNotFoundError(f"'{out}' holds no finished run (no <variant>/<run>/results.json)")
  summary = aggregate.summarize_experiment(collected, std)
  os.makedirs(os.path.join(out, FIGURES), exist_ok=True)

  md = [f"# {title or os.path.basename(os.path.abspath(out))}", '']
  md.append('Variants: ' + '; '.join(f"**{v}** (method `{row['method']}`, runs {', '.join(row['runs'])})"
                                     for v, row in summary.items()) + '.')
  recorded = aggregate.commands(out)
  lines = [recorded[v] for v in summary if v in recorded] + ([command] if command else [])
  if lines:
    md += ['', 'Produced by:', '', '```bash', *dict.fromkeys(lines), '```']
  md += ['', '## Test accuracy', '', aggregate.markdown_table(summary, std), '']
  _figure(md, out, 'comparison.png', 'test accuracy per variant and head', plots.plot_comparison, summary,
          title=f'test accuracy, mean ± {std} std')

  md += ['## Calibration', '', 'Expected calibration error of the test predictions (15 equal-width bins '
         'over the max-softmax confidence), mean ± std over runs.', '']
  _figure(md, out, 'ece.png', 'test ECE per variant and head', plots.plot_ece, summary,
          title=f'test ECE, mean ± {std} std')

  agreements = agreement_analyses(collected, reference=reference)
  if agreements:
    source = ('separately trained unimodal models: ' +
              ', '.join(f'{m} from `{v}`' for m, v in reference.items()) + ' (paired by run)'
              if reference else "each variant's own unimodal heads")
    md += ['## Unimodal agreement', '',
           'Fused test accuracy (%) in each bin of unimodal correctness, pooled over runs '
           f'(n = samples in the bin). Unimodal predictions: {source}.', '',
           _agreement_table(agreements), '']
    _figure(md, out, 'agreement.png', 'unimodal agreement', plots.plot_agreement, agreements,
            title='fused accuracy by unimodal agreement')

  classes = per_class(collected)
  if classes:
    md += ['## Per-class accuracy', '', 'Fused test accuracy (%) per class, pooled over runs.', '',
           _per_class_table(classes), '']

  md += ['## Training curves', '', "The first run of each variant; train accuracy is the mean over each "
         "logging window's batches.", '']
  for variant, runs in collected.items():
    first = runs[0]
    history = aggregate.load_history(first.workdir)
    heads = summary[variant]['heads']
    name = f'{variant}_{first.run}'
    md += [f'### {variant} ({first.run})', '']
    _figure(md, out, f'accuracy_{name}.png', f'accuracy over training, {name}', plots.plot_accuracy,
            history, heads, title=f'{variant}, {first.run}')
    modalities = aggregate.modalities_of(first.results)
    if losses.FUSED in heads and plots.has_balancing(history, modalities):
      cfg = first.results['config']['balancing']
      _figure(md, out, f'balancing_{name}.png', f'r_i and k_i over training, {name}', plots.plot_balancing,
              history, modalities, alpha=cfg['mlb']['alpha'], beta_max=cfg['mlb']['beta_max'],
              title=f"{variant}, {first.run} (method {first.results['method']})")

  with open(os.path.join(out, SUMMARY), 'w') as f:
    json.dump(aggregate.json_safe({'std': f'{std} (ddof={aggregate.STD_DDOF[std]})', 'variants': summary,
               'agreement': {v: {'bins': list(a.labels), 'counts': a.counts.tolist(),
                                 'correct': a.correct.tolist()} for v, a in agreements.items()},
               'per_class_accuracy_fused': classes}), f, indent=2)
  path = os.path.join(out, REPORT)
  with open(path, 'w') as f:
    f.write('\n'.join(md))
  return path
