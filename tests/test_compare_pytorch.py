"""benchmarks/compare_pytorch.py computes the same step as ours (needs the optional PyTorch)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'benchmarks'))


@pytest.mark.slow
@pytest.mark.parametrize('kernels', ['plain', 'cpu'])
def test_pytorch_reference_takes_the_same_step(kernels):
  torch = pytest.importorskip('torch')
  import compare_pytorch
  # The benchmark's own check, for either model.kernels.
  check = compare_pytorch.check_same_step(torch, 'mlb', frame_size=64, batch=4, kernels=kernels)
  assert abs(check['loss_ours'] - check['loss_torch']) < 1e-4 * abs(check['loss_torch'])
  # Adam's first step is lr * g / (|g| + eps): only gradients at rounding level may flip sign.
  assert check['update_p999_abs_diff'] < 1e-6
  assert check['batch_stats_max_abs_diff'] < 1e-4
