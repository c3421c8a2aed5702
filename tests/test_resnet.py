"""ResNet-18 encoders (METHODS.md §4.1) and their custom-gradient pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mlb_jax.models import resnet
from mlb_jax.train_state import parameter_count
from tests.tree_asserts import assert_trees_all_close


def torchvision_resnet18_without_fc(in_channels: int) -> int:
  """Parameters of torchvision's resnet18() minus `fc`, counted from its architecture."""
  conv = lambda cin, cout, k: cin * cout * k * k
  bn = lambda c: 2 * c
  total = conv(in_channels, 64, 7) + bn(64)
  cin = 64
  for cout in (64, 128, 256, 512):
    for b in range(2):
      stride2 = cout != 64 and b == 0
      total += conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + bn(cout)
      if stride2:
        total += conv(cin, cout, 1) + bn(cout)
      cin = cout
  return total


def test_parameter_count_equals_torchvision_resnet18_without_fc():
  # torchvision: resnet18() has 11,689,512 parameters, fc = 512 * 1000 + 1000.
  assert torchvision_resnet18_without_fc(3) == 11_689_512 - 513_000 == 11_176_512
  assert torchvision_resnet18_without_fc(1) == 11_176_512 - 64 * 2 * 49 == 11_170_240
  enc = resnet.ResNet18Encoder(width=64)
  for shape, expected in (((1, 257, 188), 11_170_240), ((1, 3, 224, 224, 3), 11_176_512)):
    variables = jax.eval_shape(lambda x: enc.init(jax.random.key(0), x, train=False), jnp.zeros(shape))
    assert parameter_count(variables['params']) == expected
    # Running statistics (torch's buffers) live in batch_stats: mean and var per BN channel.
    bn_params = sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(
        variables['params']) if path[-1].key in ('scale', 'bias'))
    assert parameter_count(variables['batch_stats']) == bn_params


@pytest.fixture(scope='module')
def small():
  """A width-8 encoder initialised on a 2-clip batch of 3 frames of 32 x 32."""
  enc = resnet.ResNet18Encoder(width=8)
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.standard_normal((2, 3, 32, 32, 3)), jnp.float32)
  variables = jax.jit(lambda x: enc.init(jax.random.key(0), x, train=False))(video)
  return enc, variables, video


def test_output_shapes_and_tokens(small):
  enc, variables, video = small
  pooled, tokens = jax.jit(lambda v, x: enc.apply(v, x, train=False, return_tokens=True))(variables, video)
  assert pooled.shape == (2, 64) and pooled.dtype == jnp.float32
  assert tokens.shape == (2, 3 * 1 * 1, 64)   # 32 px -> 1 x 1 layer4 map per frame
  audio = jnp.zeros((2, 64, 47))               # [B, F, T]: 1-channel stem
  a_vars = jax.eval_shape(lambda x: enc.init(jax.random.key(0), x, train=False), audio)
  out = jax.eval_shape(lambda v, x: enc.apply(v, x, train=False, return_tokens=True), a_vars, audio)
  assert out[0].shape == (2, 64) and out[1].shape == (2, 2 * 2, 64)   # 64 x 47 -> 2 x 2
  assert a_vars['params']['resnet']['conv1']['kernel'].shape == (7, 7, 1, 8)
  with pytest.raises(ValueError, match=r'ResNet18Encoder expects'):
    enc.apply(variables, jnp.zeros((2, 3)), train=False)


def test_temporal_pooling_is_one_mean_over_frames_and_positions(small):
  enc, variables, _ = small
  rng = np.random.default_rng(1)
  video = jnp.asarray(rng.standard_normal((2, 3, 64, 64, 3)), jnp.float32)  # 2 x 2 maps per frame
  apply = jax.jit(lambda x: enc.apply(variables, x, train=False, return_tokens=True))
  pooled, tokens = apply(video)
  assert tokens.shape == (2, 3 * 4, 64)
  np.testing.assert_allclose(pooled, tokens.mean(axis=1), rtol=1e-5, atol=1e-6)
  # Inference mode is per-frame: the clip feature is the mean of the per-frame features.
  per_frame = jnp.stack([apply(video[:, t:t + 1])[0] for t in range(3)], axis=1)
  np.testing.assert_allclose(pooled, per_frame.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_init_matches_the_authors():
  enc = resnet.ResNet18Encoder(width=32)
  params = jax.jit(lambda x: enc.init(jax.random.key(3), x, train=False))(jnp.zeros((1, 32, 32, 3)))
  p = params['params']['resnet']
  kernel = np.asarray(p['layer4_1']['conv2']['kernel'])          # 3 x 3 x 256 x 256
  np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (256 * 9)), rtol=0.01)
  assert abs(kernel.mean()) < 1e-3 and np.abs(kernel).max() > 4.5 * kernel.std()   # not truncated
  scales = np.concatenate([np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(p)
                           if path[-1].key == 'scale'])
  np.testing.assert_allclose(scales.mean(), 1.0, atol=0.003)
  np.testing.assert_allclose(scales.std(), 0.02, rtol=0.1)
  biases = [x for path, x in jax.tree_util.tree_leaves_with_path(p) if path[-1].key == 'bias']
  assert all(np.all(np.asarray(b) == 0) for b in biases)
  stats = params['batch_stats']['resnet']['bn1']
  np.testing.assert_array_equal(stats['mean'], 0.0)
  np.testing.assert_array_equal(stats['var'], 1.0)


def test_batch_stats_update_in_train_and_stay_frozen_in_eval(small):
  enc, variables, video = small
  train = jax.jit(lambda v, x: enc.apply(v, x, train=True, mutable=['batch_stats']))
  evaluate = jax.jit(lambda v, x: enc.apply(v, x, train=False, mutable=['batch_stats']))
  _, new = train(variables, video)
  # torch semantics: running = 0.9 running + 0.1 batch stat, the variance unbiased.
  kernel = variables['params']['resnet']['conv1']['kernel']
  conv1 = lax.conv_general_dilated(video.reshape(6, 32, 32, 3), kernel, (2, 2), [(3, 3)] * 2,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  flat = np.asarray(conv1, np.float64).reshape(-1, 8)
  stats = new['batch_stats']['resnet']['bn1']
  np.testing.assert_allclose(stats['mean'], 0.1 * flat.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-4)
  for a, b in zip(jax.tree.leaves(new['batch_stats']), jax.tree.leaves(variables['batch_stats'])):
    assert not np.allclose(a, b)
  out, frozen = evaluate(variables, video)
  assert_trees_all_close(frozen['batch_stats'], variables['batch_stats'], rtol=0)
  # Inference uses the running averages: a clip's features do not depend on the batch.
  alone, _ = evaluate(variables, video[:1])
  np.testing.assert_allclose(alone, out[:1], rtol=1e-5, atol=1e-6)
  trained, _ = train(variables, video)
  assert not np.allclose(trained[:1], train(variables, video[:1])[0])


def test_bfloat16_compute():
  enc = resnet.ResNet18Encoder(width=8, dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = jax.jit(lambda x: enc.init(jax.random.key(0), x, train=False))(x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables['params']))
  out = jax.jit(lambda v, x: enc.apply(v, x, train=True, mutable=['batch_stats'])[0])(variables, x)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(out))


# ------------------------------------------------------------ custom gradients


def test_max_pool_forward_and_gradient_match_xla_with_ties():
  rng = np.random.default_rng(0)
  cases = [np.maximum(rng.standard_normal((2, 9, 7, 5)), 0),         # ReLU zeros: ties
           rng.integers(0, 3, (2, 8, 8, 4)).astype(np.float64),     # integer values: many ties
           rng.standard_normal((1, 32, 31, 3))]
  pool = jax.jit(resnet.max_pool_3x3_s2)
  for x in cases:
    x = jnp.asarray(x, jnp.float32)
    y = resnet.max_pool_reference(x)
    np.testing.assert_array_equal(pool(x), y)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    ours = jax.jit(lambda x, g: jax.vjp(resnet.max_pool_3x3_s2, x)[1](g)[0])(x, g)
    ref = jax.vjp(resnet.max_pool_reference, x)[1](g)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_stem_gradient_under_jit_matches_plain_autodiff():
  # conv -> BN + ReLU -> max-pool, jitted as one program: the pooling gradient
  # must not depend on floats that XLA recomputes in another fusion.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((7, 7, 3, 16)) * 0.1, jnp.float32)
  t = jnp.asarray(rng.standard_normal((4, 8, 8, 16)), jnp.float32)
  ones, zeros = jnp.ones(16), jnp.zeros(16)

  def ours(w):
    y = resnet.batch_norm_train(resnet._conv(x, w, 2, 3), ones, zeros, None, True, 1e-5)[0]
    return jnp.sum(resnet.max_pool_3x3_s2(y) * t)

  def plain(w):
    y = resnet.batch_norm_reference(resnet._conv(x, w, 2, 3), ones, zeros, relu=True)[0]
    return jnp.sum(resnet.max_pool_reference(y) * t)

  np.testing.assert_allclose(jax.jit(jax.grad(ours))(w), jax.grad(plain)(w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kernel,stride,padding,c_in', [
    (1, 2, 0, 16),    # strided slice + matrix product
    (1, 1, 0, 16),
    (3, 2, 1, 16),    # im2col (small map on CPU)
    (7, 2, 3, 3)])    # XLA's convolution (the 3-channel stem)
def test_conv2d_gradients_match_plain_convolution(kernel, stride, padding, c_in):
  rng = np.random.default_rng(kernel + c_in)
  x = jnp.asarray(rng.standard_normal((2, 10, 9, c_in)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, c_in, 8)), jnp.float32)
  t = jnp.asarray(rng.standard_normal(resnet._conv(x, w, stride, padding).shape), jnp.float32)
  loss = lambda conv: lambda x, w: jnp.sum(conv(x, w, stride, padding) * t)
  ours = jax.jit(jax.value_and_grad(loss(resnet.conv2d), argnums=(0, 1)))(x, w)
  ref = jax.value_and_grad(loss(resnet._conv), argnums=(0, 1))(x, w)
  assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('relu,with_residual', [(False, False), (True, False), (True, True)])
def test_batch_norm_matches_plain_autodiff(relu, with_residual):
  rng = np.random.default_rng(int(relu) + 2 * int(with_residual))
  x = jnp.asarray(rng.standard_normal((4, 5, 3, 6)) * 3 + 1, jnp.float32)
  scale = jnp.asarray(rng.standard_normal(6), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(6), jnp.float32)
  residual = jnp.asarray(rng.standard_normal(x.shape), jnp.float32) if with_residual else None
  t = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

  def loss(fn):
    def f(x, scale, bias, residual):
      out, mean, var = fn(x, scale, bias, residual)
      return jnp.sum(out * t), (mean, var)
    return f

  ours = loss(lambda *a: resnet.batch_norm_train(*a, relu, 1e-5))
  ref = loss(lambda *a: resnet.batch_norm_reference(*a, relu=relu, eps=1e-5))
  argnums = (0, 1, 2, 3) if with_residual else (0, 1, 2)
  (v1, stats1), g1 = jax.jit(jax.value_and_grad(ours, argnums, has_aux=True))(x, scale, bias, residual)
  (v2, stats2), g2 = jax.value_and_grad(ref, argnums, has_aux=True)(x, scale, bias, residual)
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  assert_trees_all_close(stats1, stats2, rtol=1e-5, atol=1e-6)
  assert_trees_all_close(g1, g2, rtol=1e-4, atol=1e-5)
  flat = np.asarray(x, np.float64).reshape(-1, 6)
  np.testing.assert_allclose(stats1[0], flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats1[1], flat.var(0), rtol=1e-4)


@pytest.mark.parametrize('kernel,stride,padding', [(3, 1, 1), (3, 2, 1), (7, 2, 3), (2, 2, 0)])
def test_im2col_matches_plain_convolution(kernel, stride, padding):
  """`conv_im2col` (small maps on CPU): value and both gradients."""
  rng = np.random.default_rng(kernel + stride)
  x = jnp.asarray(rng.standard_normal((2, 9, 8, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 16, 8)), jnp.float32)
  t = jnp.asarray(rng.standard_normal(resnet._conv(x, w, stride, padding).shape), jnp.float32)
  loss = lambda conv: lambda x, w: jnp.sum(conv(x, w, stride, padding) * t)
  ours = jax.jit(jax.value_and_grad(loss(resnet.conv_im2col), argnums=(0, 1)))(x, w)
  ref = jax.value_and_grad(loss(resnet._conv), argnums=(0, 1))(x, w)
  assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-4)


def test_conv2d_picks_im2col_only_for_small_maps_on_cpu():
  if jax.default_backend() != 'cpu':
    assert not resnet._use_im2col((24, 4, 4, 512), 3, 512, 1, 1)
    return
  assert resnet._use_im2col((96, 2, 2, 512), 3, 512, 1, 1)        # 2 x 2 outputs, any batch
  assert resnet._use_im2col((96, 4, 4, 256), 3, 512, 2, 1)        # strided down to 2 x 2
  assert resnet._use_im2col((8, 9, 6, 512), 3, 512, 1, 1)         # audio layer4: 432 rows
  assert not resnet._use_im2col((24, 7, 7, 512), 3, 512, 1, 1)    # layer4 at 224 px: 1176 rows
  assert not resnet._use_im2col((96, 3, 3, 512), 3, 512, 1, 1)    # 3 x 3 outputs, 864 rows
  assert not resnet._use_im2col((24, 56, 56, 64), 3, 64, 1, 1)    # layer1
  assert not resnet._use_im2col((24, 224, 224, 3), 7, 3, 2, 3)    # the stem (3 channels)
