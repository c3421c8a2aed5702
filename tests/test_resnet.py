"""ResNet-18 encoders (docs/methods.md, ResNet-18 encoders); the CPU kernels
(mlb_jax/models/cpu_kernels.py) against the plain operations (mlb_jax/models/ops.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mlb_jax.models import cpu_kernels, ops, resnet
from tests.tree_asserts import assert_trees_all_close, assert_trees_all_equal

OPS = {'plain': ops.PLAIN_OPS, 'cpu': cpu_kernels.CPU_OPS}


def parameter_count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


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


@pytest.mark.parametrize('kernels', sorted(OPS))
def test_parameter_count_equals_torchvision_resnet18_without_fc(kernels):
  # torchvision: resnet18() has 11,689,512 parameters, fc = 512 * 1000 + 1000.
  assert torchvision_resnet18_without_fc(3) == 11_689_512 - 513_000 == 11_176_512
  assert torchvision_resnet18_without_fc(1) == 11_176_512 - 64 * 2 * 49 == 11_170_240
  enc = resnet.ResNet18Encoder(width=64, ops=OPS[kernels])
  plain = resnet.ResNet18Encoder(width=64)
  for shape, expected in (((1, 257, 188), 11_170_240), ((1, 3, 224, 224, 3), 11_176_512)):
    variables = jax.eval_shape(lambda x: enc.init(jax.random.key(0), x, train=False), jnp.zeros(shape))
    assert parameter_count(variables['params']) == expected
    # The same tree (names, shapes) whatever the kernels.
    assert variables == jax.eval_shape(lambda x: plain.init(jax.random.key(0), x, train=False), jnp.zeros(shape))
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


@pytest.mark.parametrize('kernels', sorted(OPS))
def test_bfloat16_compute(kernels):
  enc = resnet.ResNet18Encoder(width=8, dtype=jnp.bfloat16, ops=OPS[kernels])
  x = jnp.ones((2, 32, 32, 3))
  variables = jax.jit(lambda x: enc.init(jax.random.key(0), x, train=False))(x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables['params']))
  out = jax.jit(lambda v, x: enc.apply(v, x, train=True, mutable=['batch_stats'])[0])(variables, x)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(out))


# ------------------------------------------- CPU kernels against the plain ops

# Tolerances of a CPU formulation against the plain op computing in the same dtype:
# float32 differs by summation order only; bfloat16 by rounding (8 mantissa bits).
TOL = {'float32': dict(rtol=1e-5, atol=1e-4), 'bfloat16': dict(rtol=2e-2, atol=5e-2)}


def _as(x, dtype):
  return jnp.asarray(x, jnp.dtype(dtype))


def _f32(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float32), tree)


def _scaled(tol, ref):
  """`tol` with atol relative to the largest |value| of the reference tree."""
  big = max(float(np.max(np.abs(np.asarray(x, np.float32)))) for x in jax.tree.leaves(ref))
  return dict(rtol=tol['rtol'], atol=tol['atol'] * max(big, 1.0))


def test_the_two_op_sets():
  assert (ops.PLAIN_OPS.name, cpu_kernels.CPU_OPS.name) == ('plain', 'cpu')
  assert ops.PLAIN_OPS._fields == cpu_kernels.CPU_OPS._fields
  assert repr(cpu_kernels.CPU_OPS) == "Ops('cpu')"
  assert resnet.ResNet18Encoder().ops is ops.PLAIN_OPS   # the modules' default


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_max_pool_forward_and_gradient_match_xla_with_ties(dtype):
  rng = np.random.default_rng(0)
  cases = [np.maximum(rng.standard_normal((2, 9, 7, 5)), 0),         # ReLU zeros: ties
           rng.integers(0, 3, (2, 8, 8, 4)).astype(np.float64),     # integer values: many ties
           rng.standard_normal((1, 32, 31, 3))]
  pool = jax.jit(cpu_kernels.max_pool_3x3_s2)
  for x in cases:
    x = _as(x, dtype)
    y = ops.max_pool(x)
    np.testing.assert_array_equal(_f32(pool(x)), _f32(y))
    g = _as(rng.standard_normal(y.shape), dtype)
    ours = jax.jit(lambda x, g: jax.vjp(cpu_kernels.max_pool_3x3_s2, x)[1](g)[0])(x, g)
    ref = jax.vjp(ops.max_pool, x)[1](g)[0]
    assert ours.dtype == ref.dtype == x.dtype
    # The same routing; bfloat16 only rounds where overlapping windows add up.
    np.testing.assert_allclose(_f32(ours), _f32(ref), **({'rtol': 1e-6, 'atol': 1e-6} if dtype == 'float32'
                                                          else {'rtol': 1e-2, 'atol': 1e-2}))


def test_stem_gradient_under_jit_matches_plain_autodiff():
  # conv -> BN + ReLU -> max-pool, jitted as one program: the pooling gradient
  # must not depend on floats that XLA recomputes in another fusion.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((7, 7, 3, 16)) * 0.1, jnp.float32)
  t = jnp.asarray(rng.standard_normal((4, 8, 8, 16)), jnp.float32)
  ones, zeros = jnp.ones(16), jnp.zeros(16)

  def stem(o):
    def loss(w):
      y = o.batch_norm(o.conv(x, w, 2, 3), ones, zeros, None, True, 1e-5)[0]
      return jnp.sum(o.max_pool(y) * t)
    return loss

  np.testing.assert_allclose(jax.jit(jax.grad(stem(cpu_kernels.CPU_OPS)))(w), jax.grad(stem(ops.PLAIN_OPS))(w),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('kernel,stride,padding,c_in', [
    (1, 2, 0, 16),    # strided slice + matrix product
    (1, 1, 0, 16),
    (3, 2, 1, 16),    # im2col (small map)
    (7, 2, 3, 3)])    # XLA's convolution (the 3-channel stem)
def test_conv2d_matches_plain_convolution(kernel, stride, padding, c_in, dtype):
  rng = np.random.default_rng(kernel + c_in)
  x = _as(rng.standard_normal((2, 10, 9, c_in)), dtype)
  w = _as(rng.standard_normal((kernel, kernel, c_in, 8)) / np.sqrt(kernel * kernel * c_in), dtype)
  t = _as(rng.standard_normal(ops.conv(x, w, stride, padding).shape), dtype)
  loss = lambda conv: lambda x, w: jnp.sum((conv(x, w, stride, padding) * t).astype(jnp.float32))
  ours = jax.jit(jax.value_and_grad(loss(cpu_kernels.conv2d), argnums=(0, 1)))(x, w)
  ref = jax.value_and_grad(loss(ops.conv), argnums=(0, 1))(x, w)
  assert jax.tree.map(jnp.dtype, ours) == jax.tree.map(jnp.dtype, ref)
  assert_trees_all_close(_f32(ours), _f32(ref), **_scaled(TOL[dtype], ref))
  assert cpu_kernels.conv2d(x, w, stride, padding).dtype == x.dtype


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('kernel,stride,padding', [(3, 1, 1), (3, 2, 1), (7, 2, 3), (2, 2, 0),
                                                   (3, 2, ((0, 1), (1, 1)))])   # SAME on an even side
def test_im2col_matches_plain_convolution(kernel, stride, padding, dtype):
  """`conv_im2col` (small maps; the small encoders' convolutions): value and both gradients."""
  rng = np.random.default_rng(kernel + stride)
  x = _as(rng.standard_normal((2, 9, 8, 16)), dtype)
  w = _as(rng.standard_normal((kernel, kernel, 16, 8)) / np.sqrt(kernel * kernel * 16), dtype)
  t = _as(rng.standard_normal(ops.conv(x, w, stride, padding).shape), dtype)
  loss = lambda conv: lambda x, w: jnp.sum((conv(x, w, stride, padding) * t).astype(jnp.float32))
  ours = jax.jit(jax.value_and_grad(loss(cpu_kernels.conv_im2col), argnums=(0, 1)))(x, w)
  ref = jax.value_and_grad(loss(ops.conv), argnums=(0, 1))(x, w)
  assert_trees_all_close(_f32(ours), _f32(ref), **_scaled(TOL[dtype], ref))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('relu,with_residual', [(False, False), (True, False), (True, True)])
def test_batch_norm_matches_plain_autodiff(relu, with_residual, dtype):
  rng = np.random.default_rng(int(relu) + 2 * int(with_residual))
  x = _as(rng.standard_normal((4, 5, 3, 6)) * 3 + 1, dtype)
  scale = jnp.asarray(rng.standard_normal(6), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(6), jnp.float32)
  residual = _as(rng.standard_normal(x.shape), dtype) if with_residual else None
  t = _as(rng.standard_normal(x.shape), dtype)

  def loss(fn):
    def f(x, scale, bias, residual):
      out, mean, var = fn(x, scale, bias, residual, relu, 1e-5)
      return jnp.sum((out * t).astype(jnp.float32)), (mean, var)
    return f

  argnums = (0, 1, 2, 3) if with_residual else (0, 1, 2)
  grad = lambda fn: jax.value_and_grad(loss(fn), argnums, has_aux=True)
  (v1, stats1), g1 = jax.jit(grad(cpu_kernels.batch_norm_train))(x, scale, bias, residual)
  (v2, stats2), g2 = grad(ops.batch_norm)(x, scale, bias, residual)
  assert jax.tree.map(jnp.dtype, g1) == jax.tree.map(jnp.dtype, g2)
  tol = TOL[dtype]
  np.testing.assert_allclose(v1, v2, **_scaled(tol, v2))
  assert_trees_all_close(stats1, stats2, rtol=1e-5, atol=1e-6)   # float32 statistics of the same input
  assert_trees_all_close(_f32(g1), _f32(g2), **_scaled({'rtol': 1e-4, 'atol': 1e-5} if dtype == 'float32'
                                                        else tol, g2))
  flat = np.asarray(x, np.float64).reshape(-1, 6)
  np.testing.assert_allclose(stats1[0], flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats1[1], flat.var(0), rtol=1e-4)


def test_conv2d_picks_im2col_only_for_small_maps():
  use = cpu_kernels.use_im2col
  assert use((96, 2, 2, 512), 3, 512, 1, 1)        # 2 x 2 outputs, any batch
  assert use((96, 4, 4, 256), 3, 512, 2, 1)        # strided down to 2 x 2
  assert use((8, 9, 6, 512), 3, 512, 1, 1)         # audio layer4: 432 rows
  assert not use((24, 7, 7, 512), 3, 512, 1, 1)    # layer4 at 224 px: 1176 rows
  assert not use((96, 3, 3, 512), 3, 512, 1, 1)    # 3 x 3 outputs, 864 rows
  assert not use((24, 56, 56, 64), 3, 64, 1, 1)    # layer1
  assert not use((24, 224, 224, 3), 7, 3, 2, 3)    # the stem (3 channels)
  assert not use((2, 2, 2, 8), 3, 8, 1, 1)         # fewer than 16 input channels


# --------------------------------------- the whole network with either op set


# Shapes where layer1 keeps XLA's convolution and layers 2-4 use im2col (CPU_OPS), with
# enough positions per BatchNorm channel that float32 rounding is not amplified (with
# 2 clips of 64 x 47 one layer3 channel turns float32 rounding into 1 % gradient
# differences between any two summation orders, float64 included).
NETWORK_INPUTS = {'video': (2, 2, 64, 64, 3),   # 4 frames: layer1 16 x 16 ... layer4 2 x 2
                  'audio': (4, 64, 47)}         # 1-channel stem, odd width, layer4 2 x 2


def _assert_leaves_close(a, b, rel: float):
  """Every leaf of `a` within `rel` of the same leaf of `b`, relative to that leaf's largest |value|."""
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=10 * rel, atol=rel * float(np.max(np.abs(y))),
                               err_msg=f'leaf {jax.tree_util.keystr(path)}')


@pytest.mark.parametrize('modality', [m if m == 'audio' else pytest.param(m, marks=pytest.mark.slow)  # slow: 2nd stem
                                      for m in sorted(NETWORK_INPUTS)])
def test_resnet18_with_cpu_kernels_equals_plain(modality):
  """A full ResNet-18 (w = 64), train-mode forward and backward: `CPU_OPS` computes
  `PLAIN_OPS`'s features, parameter gradients and BatchNorm statistics, with
  identical parameter trees."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal(NETWORK_INPUTS[modality]), jnp.float32)
  t = jnp.asarray(np.random.default_rng(1).standard_normal((x.shape[0], 512)), jnp.float32)
  encoders = {name: resnet.ResNet18Encoder(width=64, ops=o) for name, o in OPS.items()}
  init = lambda e: lambda x: e.init(jax.random.key(0), x, train=False)
  assert jax.eval_shape(init(encoders['cpu']), x) == jax.eval_shape(init(encoders['plain']), x)
  variables = jax.jit(init(encoders['plain']))(x)
  assert parameter_count(variables['params']) == torchvision_resnet18_without_fc(x.shape[-1] if x.ndim == 5 else 1)

  def step(e):
    def loss(params):
      pooled, new = e.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=True,
                            mutable=['batch_stats'])
      return jnp.sum(pooled * t), (pooled, new['batch_stats'])
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])

  (loss_cpu, (pooled_cpu, stats_cpu)), grads_cpu = step(encoders['cpu'])
  (loss_plain, (pooled_plain, stats_plain)), grads_plain = step(encoders['plain'])
  np.testing.assert_allclose(pooled_cpu, pooled_plain, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(loss_cpu, loss_plain, rtol=1e-4)
  assert_trees_all_close(stats_cpu, stats_plain, rtol=1e-4, atol=1e-5)
  assert jax.tree.structure(grads_cpu) == jax.tree.structure(grads_plain)
  _assert_leaves_close(grads_cpu, grads_plain, 1e-4)   # observed: <= 7e-6
