"""Every plot writes a non-empty PNG of the documented size, with its axis labels."""

import struct

import numpy as np
import pytest

from mlb_jax import plots
from mlb_jax.analysis import agreement
from mlb_jax.balancing import coefficients_from_ratios
from tests.test_analysis import two_modality_case


def png_size(path) -> tuple[int, int]:
  """(width, height) in pixels from the PNG header."""
  with open(path, 'rb') as f:
    header = f.read(24)
  assert header[:8] == b'\x89PNG\r\n\x1a\n', f'{path} is not a PNG'
  return struct.unpack('>II', header[16:24])


def check_png(path, figsize):
  assert path.stat().st_size > 5000  # a real figure, not an empty canvas
  assert png_size(path) == (round(figsize[0] * plots.DPI), round(figsize[1] * plots.DPI))


def history(steps=20):
  rng = np.random.default_rng(0)
  train, val = [], []
  for step in range(5, 5 * steps + 1, 5):
    r_audio = 0.6 + 0.02 * step / 5 + 0.01 * rng.standard_normal()
    k = np.asarray(coefficients_from_ratios(np.array([r_audio, 1 / r_audio]), alpha=2.0, beta_max=4.0))
    train.append({'step': step, 'split': 'train', 'acc_fused': step / 120, 'acc_audio': step / 110,
                  'acc_video': step / 200, 'ratio_audio': r_audio, 'ratio_video': 1 / r_audio,
                  'scale_audio': float(k[0]), 'scale_video': float(k[1])})
    if step % 25 == 0:
      val.append({'step': step, 'split': 'val', 'accuracy_fused': step / 130, 'accuracy_audio': step / 120,
                  'accuracy_video': step / 210})
  return {'train': train, 'val': val}


def summary():
  def stat(mean, std):
    return {'mean': mean, 'std': std, 'values': [mean - std, mean + std]}

  def row(base):
    return {'heads': ['fused', 'audio', 'video'], 'runs': ['seed_0', 'seed_1'],
            'test': {h: {'accuracy': stat(base + d, 0.02), 'ece': stat(0.1 - d / 2, 0.01)}
                     for h, d in (('fused', 0.1), ('audio', 0.05), ('video', 0.0))}}

  out = {'joint': row(0.5), 'mlb': row(0.6)}
  out['video_alone'] = {'heads': ['video'], 'runs': ['seed_0'],
                        'test': {'video': {'accuracy': stat(0.55, float('nan')), 'ece': stat(0.05, float('nan'))}}}
  return out


def test_plot_balancing(tmp_path):
  path = tmp_path / 'balancing.png'
  fig = plots.plot_balancing(history(), ('audio', 'video'), alpha=2.0, beta_max=4.0, path=str(path), title='mlb')
  check_png(path, (13.0, 3.8))
  ax_r, ax_k, ax_curve = fig.axes
  assert ax_r.get_xlabel() == ax_k.get_xlabel() == 'training step'
  assert ax_r.get_ylabel().startswith('performance ratio r_i')
  assert ax_k.get_ylabel() == 'balancing coefficient k_i'
  assert (ax_curve.get_xlabel(), ax_curve.get_ylabel()) == ('performance ratio r', 'coefficient k(r)')
  # the analytic curve is Eq. 7 for the given alpha / beta_max: k(0) = 1 - tanh(2), k(1) = 1, k -> 4
  curve = [line for line in ax_curve.get_lines() if line.get_label().startswith('MLB k(r), Eq. 7, α=2')][0]
  r, k = curve.get_data()
  np.testing.assert_allclose(k[0], 1 - np.tanh(2.0), rtol=1e-5)
  np.testing.assert_allclose(np.interp(1.0, r, k), 1.0, atol=0.05)
  np.testing.assert_allclose(k[-1], 1 + 3 * np.tanh(2.0 * (r[-1] - 1)), rtol=1e-5)
  assert [line.get_label() for line in ax_r.get_lines()][:2] == ['audio', 'video']


def test_plot_balancing_needs_logged_ratios(tmp_path):
  no_ratios = {'train': [{'step': 1, 'acc_fused': 0.1}], 'val': []}
  assert not plots.has_balancing(no_ratios, ('audio', 'video'))
  with pytest.raises(ValueError, match='no ratio_<m> records'):
    plots.plot_balancing(no_ratios, ('audio', 'video'), alpha=1.0, beta_max=2.0, path=str(tmp_path / 'x.png'))


def test_plot_accuracy(tmp_path):
  path = tmp_path / 'accuracy.png'
  fig = plots.plot_accuracy(history(), ('fused', 'audio', 'video'), path=str(path))
  check_png(path, (7.0, 4.2))
  ax = fig.axes[0]
  assert (ax.get_xlabel(), ax.get_ylabel()) == ('training step', 'accuracy (%)')
  labels = [line.get_label() for line in ax.get_lines()]
  assert labels == ['fused train', 'fused val', 'audio train', 'audio val', 'video train', 'video val']
  steps, acc = ax.get_lines()[1].get_data()
  np.testing.assert_allclose(acc, 100 * np.asarray(steps) / 130)  # val in %


@pytest.mark.parametrize('fn, ylabel', [(plots.plot_comparison, 'test accuracy (%)'),
                                        (plots.plot_ece, 'test ECE (%), lower is better')])
def test_grouped_bars(tmp_path, fn, ylabel):
  path = tmp_path / 'bars.png'
  fig = fn(summary(), path=str(path))
  check_png(path, (8.0, 4.5))
  ax = fig.axes[0]
  assert (ax.get_xlabel(), ax.get_ylabel()) == ('variant', ylabel)
  assert [t.get_text() for t in ax.get_xticklabels()] == ['joint', 'mlb', 'video_alone']
  heights = [p.get_height() for p in ax.patches]
  assert len(heights) == 9  # 3 heads x 3 variants (nan bars where a head is absent)
  metric = 'accuracy' if fn is plots.plot_comparison else 'ece'
  assert heights[1] == pytest.approx(100 * summary()['mlb']['test']['fused'][metric]['mean'])


def test_plot_agreement(tmp_path):
  a = agreement(*two_modality_case())
  path = tmp_path / 'agreement.png'
  fig = plots.plot_agreement({'joint': a, 'mlb': a + a}, path=str(path))
  check_png(path, (8.0, 3.5))
  ax = fig.axes[0]
  assert (ax.get_xlabel(), ax.get_ylabel()) == ('unimodal predictions', 'variant')
  assert [t.get_text() for t in ax.get_xticklabels()] == list(a.labels)
  assert [t.get_text() for t in ax.get_yticklabels()] == ['joint', 'mlb']
  assert fig.axes[1].get_ylabel() == 'fused accuracy (%)'  # the colour bar
  texts = [t.get_text() for t in ax.texts]
  assert '33.3\n(n=3)' in texts and '100.0\n(n=4)' in texts
