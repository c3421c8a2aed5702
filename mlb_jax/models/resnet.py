"""ResNet-18 encoders of the paper (METHODS.md §4.1), channels-last.

The backbone is torchvision's ResNet-18 without the final pooling and FC:
conv1 7x7/2 (no bias) -> BN -> ReLU -> max-pool 3x3/2 -> four stages of two
BasicBlocks (widths w, 2w, 4w, 8w; w = 64 is the standard model) -> the layer4
feature map. `ResNet18Encoder` applies it to

  * a spectrogram [B, F, T] (a channel axis is added; frequency is the height)
    or an image [B, H, W, C]: global average pooling of the map, and
  * frames [B, T, H, W, C]: the same 2-D ResNet on every frame, then one mean
    over all frames and positions jointly (the authors' `adaptive_avg_pool3d`).

Both give 8w features (512 for w = 64). With w = 64 the parameter count equals
torchvision's `resnet18()` minus its `fc` layer: 11,176,512 for 3 input channels
and 11,170,240 for the 1-channel audio stem (BatchNorm running statistics are
`batch_stats`, not parameters, as torch's buffers are not parameters).

Initialisation (the authors' backbone): conv weights kaiming-normal with fan_out
and ReLU gain, std = sqrt(2 / (C_out k^2)); BatchNorm scale ~ N(1, 0.02) and
bias 0; BN momentum 0.1 in torch terms (0.9 here) and eps 1e-5.

Speed. On CPU, XLA's gradients of two pieces are slow: the max-pool gradient
(select-and-scatter plus index bookkeeping) and batch norm followed by ReLU
(autodiff keeps the normalised pre-activation alive). Each has an exact
reformulation with a custom VJP, tested against `jax.grad` of the plain
operation:

  * `max_pool_3x3_s2`: the forward pass records the index of each window's
    first maximum (int8); the backward pass routes the gradient with dense
    masks (the tie rule of XLA's and torch's kernels);
  * `batch_norm_train`: batch norm, residual add and ReLU as one op that saves
    only its input and output, with a two-pass backward.

1x1 convolutions are a strided slice and a matrix product; on CPU, k x k
convolutions on small maps (layer3/layer4 at small frame sizes) are one matrix
product over explicit patches (`conv_im2col`, see `conv2d`); the other k x k
convolutions and their gradients are XLA's own. On CPU they are fast when
compiled with `mlb_jax.compile_options.jit_options()` (XLA's Eigen
convolutions rather than YNNPACK's; the library's steps do this). They are
ordinary XLA programs, so they run unchanged on GPU. The per-step scratch
buffer that XLA's CPU runtime allocates afresh (and page-faults in) every step
is a process-level matter: see `mlb_jax/cpu_malloc.py` (opt-in).
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DIMS = ('NHWC', 'HWIO', 'NHWC')


def kaiming_normal_fan_out(key, shape, dtype=jnp.float32):
  """torch `kaiming_normal_(mode='fan_out', nonlinearity='relu')` for an HWIO kernel."""
  fan_out = shape[-1] * int(np.prod(shape[:-2]))
  return jax.random.normal(key, shape, dtype) * np.sqrt(2.0 / fan_out).astype(dtype)


def bn_scale_init(key, shape, dtype=jnp.float32):
  """BatchNorm weight ~ N(1, 0.02), the authors' backbone init."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


# ---------------------------------------------------------------- convolution


def _conv(x, w, stride: int, padding: int):
  return lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                  dimension_numbers=_DIMS)


def conv_im2col(x, w, stride: int, padding):
  """2-D convolution as one matrix product over explicit patches (im2col).

  The k^2 strided windows of the padded input are concatenated along channels
  into [N, Ho, Wo, k^2 C_in] and multiplied by the kernel reshaped to
  [k^2 C_in, C_out]. Plain autodiff then gives matrix products for both
  gradients (the input gradient: one product, then the k^2 windows padded back
  into place and summed). Cheaper than XLA's CPU convolution and its gradients
  where the map is small and the channels many (layer3/layer4 of ResNet-18 at
  CREMA-D sizes), much dearer where the patch matrix is large; see `conv2d`.

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


# `conv2d` uses `conv_im2col` on CPU when an output map side is at most
# `_IM2COL_MAX_SIDE` or the patch matrix has at most `_IM2COL_MAX_ROWS` rows
# (N Ho Wo). XLA's CPU convolution falls off a cliff on 2 x 2 outputs: forward and
# both gradients of 3 x 3 x 512 on 2 x 2 maps of 96 frames took 2334 ms against
# 35 ms as im2col (3 x 3 maps: 80 vs 95 ms, the convolution ahead); small
# patch matrices are a little faster as im2col (the 9 x 6 x 512 audio layer4 of
# 8 clips: 39 vs 44 ms); at 7 x 7 x 512 (1176 rows, layer4 of 24 frames at 224 px)
# the convolution is the faster (105 vs 124 ms).
_IM2COL_MAX_SIDE = 2
_IM2COL_MAX_ROWS = 512


def _use_im2col(x_shape, kernel: int, c_in: int, stride: int, padding: int) -> bool:
  if c_in < 16 or jax.default_backend() != 'cpu':
    return False
  n, h, wd, _ = x_shape
  ho, wo = (h + 2 * padding - kernel) // stride + 1, (wd + 2 * padding - kernel) // stride + 1
  return min(ho, wo) <= _IM2COL_MAX_SIDE or n * ho * wo <= _IM2COL_MAX_ROWS


def conv2d(x, w, stride: int, padding: int):
  """The convolution of `Conv`, formulated per shape for fast CPU gradients.

  * 1x1 kernels: a strided slice and a matrix product (autodiff gives matrix
    products for both gradients, 1.2-2x faster than XLA's 1x1 convolution and
    its gradients on CPU);
  * k x k kernels on small maps with >= 16 input channels, on the CPU backend
    only: `conv_im2col`, one matrix product (see `_use_im2col`);
  * other k x k kernels: XLA's convolution with its own gradients.
  """
  if w.shape[0] == 1 and padding == 0:
    xs = x[:, ::stride, ::stride, :]
    return jnp.dot(xs, w[0, 0], preferred_element_type=jnp.float32).astype(x.dtype)
  if _use_im2col(x.shape, w.shape[0], w.shape[2], stride, padding):
    return conv_im2col(x, w, stride, padding)
  return _conv(x, w, stride, padding)


class Conv(nn.Module):
  """Bias-free square conv with the authors' init (`conv2d`).

  Attributes: features: C_out; kernel: k; stride; padding; dtype: compute dtype.
  """
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param('kernel', kaiming_normal_fan_out,
                   (self.kernel, self.kernel, x.shape[-1], self.features))
    return conv2d(x.astype(self.dtype), w.astype(self.dtype), self.stride, self.padding)


# ------------------------------------------------------------------- max-pool


def _pool_windows(x):
  """The 9 strided views xpad[:, 2i+di, 2j+dj] of a 3x3/2 pool with padding 1, row-major."""
  n, h, w, c = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return [lax.slice(xp, (0, di, dj, 0), (n, di + 2 * ho - 1, dj + 2 * wo - 1, c), (1, 2, 2, 1))
          for di in range(3) for dj in range(3)], (ho, wo)


def max_pool_reference(x):
  """torch `max_pool2d(kernel_size=3, stride=2, padding=1)`, NHWC, as XLA's reduce_window."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


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
  """3x3 max-pool, stride 2, padding 1 (NHWC), with a dense argmax gradient.

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


# ------------------------------------------------------------------ the network


def _bn_stats(x):
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=axes)
  var = jnp.maximum(jnp.mean(jnp.square(xf), axis=axes) - jnp.square(mean), 0.0)
  return mean, var


def _bn_apply(x, mean, rstd, scale, bias, residual, relu: bool):
  y = (x.astype(jnp.float32) - mean) * (rstd * scale) + bias
  if residual is not None:
    y = y + residual.astype(jnp.float32)
  return jnp.maximum(y, 0.0) if relu else y


def batch_norm_reference(x, scale, bias, residual=None, *, relu: bool = False, eps: float = 1e-5):
  """Training-mode batch norm over all axes but the last, then `+ residual`
  and ReLU (each optional), by plain autodiff.

  Returns (output, batch mean, biased batch variance)."""
  mean, var = _bn_stats(x)
  out = _bn_apply(x, mean, lax.rsqrt(var + eps), scale, bias, residual, relu)
  return out.astype(x.dtype), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def batch_norm_train(x, scale, bias, residual, relu: bool, eps: float):
  """`batch_norm_reference` with a hand-written backward pass.

  Only x and the output (which the next convolution keeps anyway) are saved,
  with the per-channel mean and 1/std: the normalised pre-activation is not
  stored. The backward pass is one reduction pass and one elementwise pass,
  dx = scale/std * (dy - mean(dy) - xhat mean(dy xhat)), dy masked by output > 0
  when `relu`. The statistics outputs carry no gradient (they only update the
  running averages).
  """
  return batch_norm_reference(x, scale, bias, residual, relu=relu, eps=eps)


def _bn_fwd(x, scale, bias, residual, relu, eps):
  mean, var = _bn_stats(x)
  rstd = lax.rsqrt(var + eps)
  out = _bn_apply(x, mean, rstd, scale, bias, residual, relu).astype(x.dtype)
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


class BatchNorm(nn.Module):
  """torch `BatchNorm2d` over the last axis, optionally followed by `+ residual`
  and ReLU in the same op: batch statistics in training, running averages
  (momentum 0.1 in torch terms) in inference, and the running variance updated
  with the unbiased batch variance, as torch does.

  Same variable names as `flax.linen.BatchNorm` ('scale', 'bias'; 'mean', 'var'
  in `batch_stats`). The authors' init: scale ~ N(1, 0.02), bias 0.

  Attributes: use_running_average; momentum (of the old value); epsilon; dtype.
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, residual=None, *, relu: bool = False):
    c = x.shape[-1]
    scale = self.param('scale', bn_scale_init, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    x = x.astype(self.dtype)
    if self.use_running_average:
      out = _bn_apply(x, ra_mean.value, lax.rsqrt(ra_var.value + self.epsilon), scale, bias,
                      residual, relu)
      return out.astype(self.dtype)
    out, mean, var = batch_norm_train(x, scale, bias, residual, relu, self.epsilon)
    if not self.is_initializing():
      n = x.size // c
      unbiased = var * (n / max(n - 1, 1))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * lax.stop_gradient(mean)
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * lax.stop_gradient(unbiased)
    return out


def batch_norm(train: bool, dtype, name: Optional[str] = None):
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN; a 1x1 conv + BN shortcut when the shape changes.

  Attributes: features: output width; stride: of the first conv; dtype.
  """
  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = Conv(self.features, 1, self.stride, 0, self.dtype, name='downsample_conv')(x)
      shortcut = batch_norm(train, self.dtype, 'downsample_bn')(shortcut)
    y = Conv(self.features, 3, self.stride, 1, self.dtype, name='conv1')(x)
    y = batch_norm(train, self.dtype, 'bn1')(y, relu=True)
    y = Conv(self.features, 3, 1, 1, self.dtype, name='conv2')(y)
    return batch_norm(train, self.dtype, 'bn2')(y, shortcut, relu=True)


class ResNet18(nn.Module):
  """The ResNet-18 trunk: [N, H, W, C] -> layer4 map [N, H/32, W/32, 8 * width].

  Attributes:
    width: stem width w (64 = the standard ResNet-18); stages use w, 2w, 4w, 8w.
    stage_sizes: BasicBlocks per stage.
    dtype: compute dtype (parameters stay float32).
  """
  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = Conv(self.width, 7, 2, 3, self.dtype, name='conv1')(x.astype(self.dtype))
    x = batch_norm(train, self.dtype, 'bn1')(x, relu=True)
    x = max_pool_3x3_s2(x)
    for stage, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        stride = 2 if stage > 0 and b == 0 else 1
        x = BasicBlock(self.width * 2 ** stage, stride, self.dtype,
                       name=f'layer{stage + 1}_{b}')(x, train=train)
    return x


class ResNet18Encoder(nn.Module):
  """ResNet-18 encoder for a spectrogram, an image or a stack of frames.

  Input [B, F, T] (1 channel added), [B, H, W, C], or [B, T, H, W, C] (every
  frame through the same 2-D trunk). Output: the mean of the layer4 map over
  all positions (and frames), [B, 8 * width] in float32.

  With `return_tokens=True` it also returns the un-pooled map as a token
  sequence [B, N, 8 * width] (frames, then rows, then columns), the input of the
  Transformer fusion: N = H'W' for a spectrogram, T H'W' for frames.

  Attributes: width: see `ResNet18`; dtype: compute dtype.
  """
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, return_tokens: bool = False):
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim not in (4, 5):
      raise ValueError('ResNet18Encoder expects [B, F, T], [B, H, W, C] or [B, T, H, W, C], '
                       f'got shape {x.shape}')
    b = x.shape[0]
    frames = x.reshape((-1,) + x.shape[-3:])
    maps = ResNet18(self.width, dtype=self.dtype, name='resnet')(frames, train=train)
    tokens = maps.reshape(b, -1, maps.shape[-1])
    pooled = jnp.mean(tokens.astype(jnp.float32), axis=1)
    return (pooled, tokens) if return_tokens else pooled
