"""`model.torch_init` (the paper preset): PyTorch's default Linear initialisation, U(+-1/sqrt(fan_in)),
for the unimodal heads and the fusion layers, with the Late-Linear / Mid-MLP input rows drawn per
modality slice as the authors' separate `fc_i_lin` layers; the default keeps Flax's."""

import jax
import numpy as np
import pytest

from configs import synthetic as synthetic_config
from configs import cremad_mlb
from mlb_jax import models

DIMS = {'audio': 48, 'video': 12}   # unequal widths: the per-slice bounds differ by a factor 2


def init_params(fusion, torch_init, seed=0):
  cfg = synthetic_config.get_config('smoke').model
  cfg.fusion, cfg.torch_init = fusion, torch_init
  cfg.encoders = {'audio': 'mlp', 'video': 'mlp'}
  cfg.mid_mlp.hidden = 64
  model = models.build_model(cfg, ('audio', 'video'), {'audio': (5,), 'video': (7,)}, 10)
  feats = {'audio': np.ones((1, 5), np.float32), 'video': np.ones((1, 7), np.float32)}
  params = model.init(jax.random.key(seed), feats, train=False)['params']
  return model, params


def within(x, bound):
  x = np.asarray(x)
  return float(np.abs(x).max()) <= bound + 1e-7 and float(np.abs(x).max()) > 0.5 * bound


@pytest.mark.parametrize('fusion', ['late_linear', 'mid_mlp'])
def test_structure_is_the_same_with_either_init(fusion):
  _, a = init_params(fusion, False)
  _, b = init_params(fusion, True)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert jax.tree.map(np.shape, a) == jax.tree.map(np.shape, b)


def test_heads_get_the_torch_bounds_only_with_the_option():
  _, params = init_params('late_linear', True)
  d = params['audio']['head']['kernel'].shape[0]     # the encoder's output width
  bound = 1 / np.sqrt(d)
  assert within(params['audio']['head']['kernel'], bound) and within(params['audio']['head']['bias'], bound)
  _, flax_params = init_params('late_linear', False)
  assert np.all(np.asarray(flax_params['audio']['head']['bias']) == 0)   # Flax: zero bias, LeCun-normal kernel
  assert np.abs(np.asarray(flax_params['audio']['head']['kernel'])).max() > bound


def test_late_linear_rows_follow_each_modality_slice():
  _, params = init_params('late_linear', True)
  d = params['audio']['head']['kernel'].shape[0]
  kernel = np.asarray(params['fusion']['kernel'])
  assert kernel.shape[0] == 2 * d
  assert within(kernel[:d], 1 / np.sqrt(d)) and within(kernel[d:], 1 / np.sqrt(d))
  assert within(params['fusion']['bias'], 1 / np.sqrt(d))
  # the default is one Linear over the concatenation: the bound of 2d inputs
  _, plain = init_params('late_linear', False)
  assert within(plain['fusion']['kernel'], 1 / np.sqrt(2 * d))


def test_sliced_init_bounds_with_unequal_widths():
  from mlb_jax.models import fusion
  kernel = np.asarray(fusion._torch_sliced_init((DIMS['audio'], DIMS['video']))(jax.random.key(0), (60, 200)))
  assert within(kernel[:48], 1 / np.sqrt(48)) and within(kernel[48:], 1 / np.sqrt(12))


def test_mid_mlp_layers_get_torch_bounds():
  _, params = init_params('mid_mlp', True)
  f = params['fusion']
  d = params['audio']['head']['kernel'].shape[0]
  assert within(f['Dense_0']['kernel'][:d], 1 / np.sqrt(d)) and within(f['Dense_0']['bias'], 1 / np.sqrt(d))
  assert within(f['Dense_1']['kernel'], 1 / np.sqrt(64)) and within(f['Dense_2']['bias'], 1 / np.sqrt(64))


def test_paper_preset_uses_torch_init():
  assert cremad_mlb.get_config('paper').model.torch_init
  assert not cremad_mlb.get_config().model.torch_init
