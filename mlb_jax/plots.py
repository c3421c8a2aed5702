"""The paper's figures for your own runs, as PNG files (matplotlib, headless).

Figures are built with `matplotlib.figure.Figure` and its Agg canvas, never
pyplot, so no display or global figure state is involved. Every function saves
to `path` at a fixed size (`figsize` inches x `DPI`) and returns the Figure.

* `plot_balancing`   r_i and k_i over training, and the analytic k(r) of Eqs. 6-7
                     for the config's alpha / beta_max (Figure 2) with the observed points
* `plot_accuracy`    train and validation accuracy of every head over training
* `plot_comparison`  test accuracy per variant and head, mean ± std (Figure 3)
* `plot_ece`         test ECE per variant and head, mean ± std (Figure 5)
* `plot_agreement`   fused accuracy per unimodal agreement bin (Figure 4)
"""

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from mlb_jax.analysis import Agreement
from mlb_jax.balancing import coefficients_from_ratios

DPI = 100


def _save(fig: Figure, path: str) -> Figure:
  fig.savefig(path, dpi=DPI, format='png')
  return fig


def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  pairs = [(r['step'], r[key]) for r in records if key in r]
  if not pairs:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*pairs)
  return np.asarray(steps), np.asarray(values, np.float64)


def has_balancing(history: Mapping[str, list], modalities: Sequence[str]) -> bool:
  """Whether the training history logs r_i (`ratio_<m>`) for every modality (every method logs it;
  k_i, `scale_<m>`, only methods that scale: the others train every modality at k_i = 1)."""
  train = history.get('train', [])
  return bool(train) and all(f'ratio_{m}' in train[0] for m in modalities)


def plot_balancing(history: Mapping[str, list], modalities: Sequence[str], *, alpha: float, beta_max: float,
                   path: str, title: str = '', figsize=(13.0, 3.8)) -> Figure:
  """r_i (Eq. 5) and k_i over training, and k(r) of Eqs. 6-7 with the observed (r_i, k_i).

  The history holds means over each logging window, and the mean of k is not
  k of the mean r, so the observed points sit near the curve, on it only
  where r_i changes little within a window (or with `train.log_every = 1`).

  Args:
    history: `aggregate.load_history(workdir)`; reads the train records'
      `ratio_<m>` and `scale_<m>`.
    modalities: which modalities to draw.
    alpha, beta_max: the config's `balancing.mlb.alpha` / `balancing.mlb.beta_max`;
      the analytic curve is `mlb_jax.balancing.coefficients_from_ratios`.
    path: the PNG to write.
    title: figure title (e.g. the variant and run).
  """
  if not has_balancing(history, modalities):
    raise ValueError(f'the history has no ratio_<m> records for {list(modalities)}')
  fig = Figure(figsize=figsize, layout='constrained')
  ax_r, ax_k, ax_curve = fig.subplots(1, 3)
  observed_r, observed_k = [], []
  for m in modalities:
    steps, r = _series(history['train'], f'ratio_{m}')
    _, k = _series(history['train'], f'scale_{m}')
    if not k.size:  # a method that scales nothing: k_i = 1 throughout
      k = np.ones_like(r)
    ax_r.plot(steps, r, label=m)
    ax_k.plot(steps, k, label=m)
    ax_curve.scatter(r, k, s=8, alpha=0.5, label=f'{m} (logged means)')
    observed_r.append(r)
    observed_k.append(k)
  for ax in (ax_r, ax_k):
    ax.axhline(1.0, color='grey', lw=0.8, ls=':')
    ax.set_xlabel('training step')
    ax.legend(fontsize=8)
  ax_r.set_ylabel('performance ratio r_i (Eq. 5)')
  ax_k.set_ylabel('balancing coefficient k_i')
  r_obs = np.concatenate(observed_r)
  r_max = max(3.0, float(np.nanmax(r_obs[np.isfinite(r_obs)], initial=0.0)) * 1.05)
  grid = np.linspace(0.0, r_max, 400)
  curve = np.asarray(coefficients_from_ratios(grid, alpha=alpha, beta_max=beta_max))
  ax_curve.plot(grid, curve, color='black', lw=1.5, label=f'MLB k(r), Eq. 7, α={alpha:g}, β_max={beta_max:g}')
  ax_curve.axhline(1.0, color='grey', lw=0.8, ls=':')
  ax_curve.axvline(1.0, color='grey', lw=0.8, ls=':')
  ax_curve.set_xlabel('performance ratio r')
  ax_curve.set_ylabel('coefficient k(r)')
  ax_curve.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def plot_accuracy(history: Mapping[str, list], heads: Sequence[str], *, path: str, title: str = '',
                  figsize=(7.0, 4.2)) -> Figure:
  """Train (batch mean, solid) and validation (dashed, markers) accuracy of each head, in %."""
  fig = Figure(figsize=figsize, layout='constrained')
  ax = fig.subplots()
  colors = [f'C{i}' for i in range(len(heads))]
  for head, color in zip(heads, colors):
    steps, acc = _series(history.get('train', []), f'acc_{head}')
    if steps.size:
      ax.plot(steps, 100 * acc, color=color, lw=1.0, alpha=0.8, label=f'{head} train')
    steps, acc = _series(history.get('val', []), f'accuracy_{head}')
    if steps.size:
      ax.plot(steps, 100 * acc, color=color, ls='--', marker='o', ms=3, label=f'{head} val')
  ax.set_xlabel('training step')
  ax.set_ylabel('accuracy (%)')
  ax.legend(fontsize=8, ncol=2)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def _grouped_bars(summary: Mapping[str, dict], metric: str, ylabel: str, path: str, title: str,
                  figsize) -> Figure:
  variants = list(summary)
  heads = []
  for row in summary.values():
    heads += [h for h in row['heads'] if h not in heads]
  fig = Figure(figsize=figsize, layout='constrained')
  ax = fig.subplots()
  width = 0.8 / max(len(heads), 1)
  x = np.arange(len(variants))
  for i, head in enumerate(heads):
    means = [100 * summary[v]['test'][head][metric]['mean'] if head in summary[v]['test'] else np.nan
             for v in variants]
    stds = [100 * summary[v]['test'][head][metric]['std'] if head in summary[v]['test'] else np.nan
            for v in variants]
    stds = np.nan_to_num(np.asarray(stds, np.float64))  # a single run has no spread to draw
    ax.bar(x + (i - (len(heads) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=head)
  ax.set_xticks(x, variants, rotation=20 if len(variants) > 4 else 0)
  ax.set_xlabel('variant')
  ax.set_ylabel(ylabel)
  ax.legend(title='head', fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def plot_comparison(summary: Mapping[str, dict], *, path: str, title: str = '', figsize=(8.0, 4.5)) -> Figure:
  """Figure 3: test accuracy of every variant and head, bars at the mean with ± std error bars.

  Args:
    summary: `aggregate.summarize_experiment(...)`.
    path: the PNG to write.
  """
  return _grouped_bars(summary, 'accuracy', 'test accuracy (%)', path, title, figsize)


def plot_ece(summary: Mapping[str, dict], *, path: str, title: str = '', figsize=(8.0, 4.5)) -> Figure:
  """Figure 5: test expected calibration error (15 bins) per variant and head, mean ± std."""
  return _grouped_bars(summary, 'ece', 'test ECE (%), lower is better', path, title, figsize)


def plot_agreement(agreements: Mapping[str, Agreement], *, path: str, title: str = '',
                   figsize=(8.0, 3.5)) -> Figure:
  """Figure 4: fused accuracy (%) in each unimodal agreement bin, one row per variant.

  Args:
    agreements: {variant: `analysis.agreement(...)`} over the same bins
      (pool runs with `+`).
    path: the PNG to write.
  """
  variants = list(agreements)
  if not variants:
    raise ValueError('no agreement analyses to plot')
  labels = agreements[variants[0]].labels
  for v in variants:
    if agreements[v].labels != labels:
      raise ValueError(f"variant '{v}' has bins {agreements[v].labels}, expected {labels}")
  acc = np.stack([100 * agreements[v].accuracy for v in variants])
  fig = Figure(figsize=(figsize[0], max(figsize[1], 1.2 + 0.6 * len(variants))), layout='constrained')
  ax = fig.subplots()
  image = ax.imshow(np.ma.masked_invalid(acc), cmap='viridis', vmin=0, vmax=100, aspect='auto')
  for i, v in enumerate(variants):
    for j in range(len(labels)):
      n = int(agreements[v].counts[j])
      text = f'{acc[i, j]:.1f}\n(n={n})' if n else 'n=0'
      ax.text(j, i, text, ha='center', va='center', fontsize=8,
              color='white' if n and acc[i, j] < 60 else 'black')
  ax.set_xticks(np.arange(len(labels)), labels, rotation=15 if len(labels) > 4 else 0, fontsize=8)
  ax.set_yticks(np.arange(len(variants)), variants)
  ax.set_xlabel('unimodal predictions')
  ax.set_ylabel('variant')
  fig.colorbar(image, ax=ax, label='fused accuracy (%)')
  if title:
    ax.set_title(title)
  return _save(fig, path)
