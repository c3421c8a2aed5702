"""CPU formulations of the convolutional encoders' operations: `CPU_OPS`.

`config.model.kernels = 'cpu'` (or 'auto' on a CPU backend, see
`mlb_jax.models.resolve_kernels`) builds the ResNet-18 and the small conv/frames
encoders with these functions in place of `ops.PLAIN_OPS`. Each is an exact
reformulation of the plain operation (same values; gradients to float
rounding), tested against `jax.grad` of it (tests/test_resnet.py). They are
ordinary XLA programs and run on any backend; they are faster than the plain
operations only on XLA:CPU, where the gradients of a few pieces are slow:

  * `conv2d` (the ResNet's convolutions): 1x1 kernels as a strided slice and a
    matrix product (autodiff then gives matrix products for both gradients,
    1.2-2x faster than XLA's 1x1 convolution; 14 vs 28 ms on 56 x 56 x 64);
    k x k kernels on small maps with >= 16 input channels as one matrix product
    over explicit patches (`conv_im2col`, selected by `use_im2col`); the other
    k x k convolutions are XLA's own, with its own gradients;
  * `conv_im2col` (the small encoders' 3x3 convolutions, always): under
    `jax.vmap` over per-seed weights (`mlb_jax.multiseed`) a batched matrix
    product, where XLA:CPU would run a grouped convolution 2-3x slower per seed;
  * `max_pool_3x3_s2`: the forward pass records the index of each window's first
    maximum (int8); the backward pass routes the gradient with dense masks, the
    tie rule of XLA's and torch's kernels, instead of XLA's select-and-scatter
    (94 vs 398 ms on the 112 x 112 x 64 stem map of 24 frames);
  * `batch_norm_train`: batch norm, residual add and ReLU as one op that saves
    only its input and output (autodiff keeps the normalised pre-activation
    alive), with a two-pass backward (121 vs 154 ms on the stem map).

XLA's own convolutions are fast on CPU when compiled with the options of
`mlb_jax.compile_options.jit_options('cpu')` (XLA's Eigen convolutions rather
than YNNPACK's); the build passes those to every jitted step along with these
kernels.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mlb_jax.models import ops as plain

# ---------------------------------------------------------------- convolution


def conv_im2col(x, w, stride: int, padding):
  """2-D convolution as one matrix product over explicit patches (im2col).

  The k^2 strided windows of the padded input are concatenated along channels
  into [N, Ho, Wo, k^2 C_in] and multiplied by the kernel reshaped to
  [k^2 C_in, C_out]. Plain autodiff then gives matrix products for both
  gradients (the input gradient: one product, then the k^2 windows padded back
  into place and summed). Cheaper than XLA's CPU convolution and its gradients
  where the map is small and the channels many (layer3/layer4 of ResNet-18 at
  CREMA-D sizes), much dearer where the patch matrix is large; see `use_im2col`.

  Args:
    x: [N, H, W, C_in]; w: [k, k, C_in, C_out]; stride: s.
    padding: p on every side, or ((top, bottom), (left, right)).
  """
  k, _, c_in, c_out = w.shape
  n, h, wd, _ = x.shape
  (top, bottom), (left, right) = ((padding, padding),) * 2 if isinstance(padding, int) else padding
  ho, wo = (h + top + bottom - k) // stride + 1, (wd + left + right - k) // stride + 1
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  cols = [lax.slice(xp, (0, i, j, 0), (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c_in),
                    (1, stride, stride, 1)) for i in range(k) for j in range(k)]
  patches = jnp.concatenate(cols, axis=-1)
  return jnp.dot(patches, w.reshape(k * k * c_in, c_out),
                 preferred_element_type=jnp.float32).astype(x.dtype)


# `conv2d` uses `conv_im2col` when an output map side is at most
# `IM2COL_MAX_SIDE` or the patch matrix has at most `IM2COL_MAX_ROWS` rows
# (N Ho Wo). XLA's CPU convolution falls off a cliff on 2 x 2 outputs: forward and
# both gradients of 3 x 3 x 512 on 2 x 2 maps of 96 frames took 2334 ms against
# 35 ms as im2col (3 x 3 maps: 80 vs 95 ms, the convolution ahead); small
# patch matrices are a little faster as im2col (the 9 x 6 x 512 audio layer4 of
# 8 clips: 39 vs 44 ms); at 7 x 7 x 512 (1176 rows, layer4 of 24 frames at 224 px)
# the convolution is the faster (105 vs 124 ms).
IM2COL_MIN_CHANNELS = 16
IM2COL_MAX_SIDE = 2
IM2COL_MAX_ROWS = 512


def use_im2col(x_shape, kernel: int, c_in: int, stride: int, padding: int) -> bool:
  """Whether `conv2d` computes this k x k convolution as `conv_im2col`: at least
  `IM2COL_MIN_CHANNELS` input channels and a small output map (a side <=
  `IM2COL_MAX_SIDE`, or <= `IM2COL_MAX_ROWS` patch rows N Ho Wo)."""
  if c_in < IM2COL_MIN_CHANNELS:
    return False
  n, h, wd, _ = x_shape
  ho, wo = (h + 2 * padding - kernel) // stride + 1, (wd + 2 * padding - kernel) // stride + 1
  return min(ho, wo) <= IM2COL_MAX_SIDE or n * ho * wo <= IM2COL_MAX_ROWS


def conv2d(x, w, stride: int, padding: int):
  """`ops.conv` formulated per shape for fast CPU gradients.

  * 1x1 kernels without padding: a strided slice and a matrix product;
  * k x k kernels where `use_im2col`: `conv_im2col`, one matrix product;
  * other kernels: XLA's convolution with its own gradients.
  """
  if w.shape[0] == 1 and w.shape[1] == 1 and padding == 0:
    xs = x[:, ::stride, ::stride, :]
    return jnp.dot(xs, w[0, 0], preferred_element_type=jnp.float32).astype(x.dtype)
  if isinstance(padding, int) and use_im2col(x.shape, w.shape[0], w.shape[2], stride, padding):
    return conv_im2col(x, w, stride, padding)
  return plain.conv(x, w, stride, padding)


# ------------------------------------------------------------------- max-pool


def _pool_windows(x):
  """The 9 strided views xpad[:, 2i+di, 2j+dj] of a 3x3/2 pool with padding 1, row-major."""
  n, h, w, c = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return [lax.slice(xp, (0, di, dj, 0), (n, di + 2 * ho - 1, dj + 2 * wo - 1, c), (1, 2, 2, 1))
          for di in range(3) for dj in range(3)], (ho, wo)


def _max_and_argmax(x):
  """Max over the 9 windows and the index (0..8, int8) of the first maximal one."""
  windows, _ = _pool_windows(x)
  best, index = windows[0], jnp.zeros(windows[0].shape, jnp.int8)
  for k in range(1, 9):
    take = windows[k] > best   # strict: ties keep the earlier window
    best = jnp.where(take, windows[k], best)
    index = jnp.where(take, jnp.int8(k), index)
  return best, index


@jax.custom_vjp
def max_pool_3x3_s2(x):
  """`ops.max_pool` (3x3, stride 2, padding 1, NHWC) with a dense argmax gradient.

  The gradient of each output goes to the first maximal element of its window
  in row-major order, as in XLA's select-and-scatter and torch's kernel. The
  forward pass records that element's index (int8), so the backward pass never
  compares floats recomputed in another fusion.
  """
  return _max_and_argmax(x)[0]


def _max_pool_fwd(x):
  y, index = _max_and_argmax(x)
  # An empty [H, W, 0] array carries the input's height and width (residuals
  # must be arrays; the output size alone does not determine them).
  return y, (index, jnp.zeros(x.shape[1:3] + (0,), jnp.int8))


def _max_pool_bwd(res, g):
  index, size = res
  n, ho, wo, c = g.shape
  h, w = size.shape[:2]
  dxp = jnp.zeros((n, h + 2, w + 2, c), g.dtype)
  zero = jnp.zeros((), g.dtype)
  for k in range(9):
    di, dj = divmod(k, 3)
    routed = jnp.where(index == k, g, zero)
    # Place routed[i, j] at xpad[2i + di, 2j + dj]: interior padding 1 spreads
    # the rows/columns to stride 2, edge padding shifts them by the offset.
    dxp = dxp + lax.pad(routed, zero, ((0, 0, 0), (di, h + 2 - di - (2 * ho - 1), 1),
                                       (dj, w + 2 - dj - (2 * wo - 1), 1), (0, 0, 0)))
  return (dxp[:, 1:h + 1, 1:w + 1, :],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


# ----------------------------------------------------------------- batch norm


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def batch_norm_train(x, scale, bias, residual, relu: bool, eps: float):
  """`ops.batch_norm` with a hand-written backward pass.

  Only x and the output (which the next convolution keeps anyway) are saved,
  with the per-channel mean and 1/std: the normalised pre-activation is not
  stored. The backward pass is one reduction pass and one elementwise pass,
  dx = scale/std * (dy - mean(dy) - xhat mean(dy xhat)), dy masked by output > 0
  when `relu`. The statistics outputs carry no gradient (they only update the
  running averages).
  """
  return plain.batch_norm(x, scale, bias, residual, relu, eps)


def _bn_fwd(x, scale, bias, residual, relu, eps):
  mean, var = plain.batch_moments(x)
  rstd = lax.rsqrt(var + eps)
  out = plain.normalize(x, mean, rstd, scale, bias, residual, relu).astype(x.dtype)
  # A scalar of the residual's dtype marks that a residual cotangent is due.
  marker = None if residual is None else jnp.zeros((), residual.dtype)
  return (out, mean, var), (x, mean, rstd, scale, out if relu else None, marker)


def _bn_bwd(relu, eps, res, cotangents):
  del eps
  x, mean, rstd, scale, out, marker = res
  dy = cotangents[0].astype(jnp.float32)
  if relu:
    dy = jnp.where(out > 0, dy, 0.0)
  axes = tuple(range(x.ndim - 1))
  xhat = (x.astype(jnp.float32) - mean) * rstd
  dbias = jnp.sum(dy, axis=axes)
  dscale = jnp.sum(dy * xhat, axis=axes)
  n = x.size // x.shape[-1]
  dx = (scale * rstd) * (dy - dbias / n - xhat * (dscale / n))
  dresidual = None if marker is None else dy.astype(marker.dtype)
  return dx.astype(x.dtype), dscale, dbias, dresidual


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


CPU_OPS = plain.Ops(name='cpu', conv=conv2d, patch_conv=conv_im2col, max_pool=max_pool_3x3_s2,
                    batch_norm=batch_norm_train)
