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
(a select-and-scatter) and the weight gradients of convolutions over large
maps. `max_pool_3x3_s2` therefore carries a custom VJP that routes the
gradient with dense first-maximum masks (the same tie rule as XLA's and torch's
kernels), and `Conv` computes its kernel gradient as a sum of k^2 matrix
products of shifted views (`conv_weight_grad`). Both are exact reformulations,
tested against `jax.grad` of the plain operations, and run as ordinary fused
XLA code on GPU.
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


def conv_weight_grad(x, g, kernel_shape, stride: int, padding: int):
  """dL/dW of `_conv(x, W, stride, padding)` given g = dL/dy.

  dW[i, j] = sum_{n,h,w} xpad[n, s*h + i, s*w + j, :]^T g[n, h, w, :]: one
  [C_in, N*H*W] x [N*H*W, C_out] matrix product per kernel offset (i, j).

  Args:
    x: input [N, H, W, C_in].
    g: output cotangent [N, Ho, Wo, C_out].
    kernel_shape: (k, k, C_in, C_out).
    stride, padding: of the forward convolution.

  Returns:
    [k, k, C_in, C_out], in the dtype of the kernel's cotangent (g's dtype).
  """
  k = kernel_shape[0]
  n, ho, wo, c_out = g.shape
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  g2 = g.reshape(-1, c_out)
  rows = []
  for i in range(k):
    for j in range(k):
      patch = lax.slice(xp, (0, i, j, 0),
                        (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, xp.shape[3]),
                        (1, stride, stride, 1))
      rows.append(jnp.dot(patch.reshape(-1, x.shape[3]).T, g2,
                          preferred_element_type=jnp.float32))
  return jnp.stack(rows).reshape(kernel_shape).astype(g.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, w, stride: int, padding: int):
  """Square-kernel 2-D convolution, NHWC x HWIO, with the weight gradient of
  `conv_weight_grad` (the input gradient is XLA's own transposed convolution)."""
  return _conv(x, w, stride, padding)


def _conv2d_fwd(x, w, stride, padding):
  return _conv(x, w, stride, padding), (x, w)


def _conv2d_bwd(stride, padding, res, g):
  x, w = res
  _, input_vjp = jax.vjp(lambda x_: _conv(x_, w, stride, padding), x)
  (dx,) = input_vjp(g)
  return dx, conv_weight_grad(x, g, w.shape, stride, padding).astype(w.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
  """Bias-free square conv with the authors' init and the fast weight gradient.

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


@jax.custom_vjp
def max_pool_3x3_s2(x):
  """3x3 max-pool, stride 2, padding 1 (NHWC), with a dense-mask gradient.

  The gradient of each output goes to the first maximal element of its window
  in row-major order, as in XLA's select-and-scatter and torch's kernel.
  """
  return max_pool_reference(x)


def _max_pool_fwd(x):
  y = max_pool_reference(x)
  return y, (x, y)


def _max_pool_bwd(res, g):
  x, y = res
  n, h, w, c = x.shape
  windows, (ho, wo) = _pool_windows(x)
  taken = jnp.zeros(y.shape, bool)
  dxp = jnp.zeros((n, h + 2, w + 2, c), g.dtype)
  zero = jnp.zeros((), g.dtype)
  k = 0
  for di in range(3):
    for dj in range(3):
      first = (windows[k] == y) & ~taken
      taken = taken | first
      routed = jnp.where(first, g, zero)
      # Place routed[i, j] at xpad[2i + di, 2j + dj]: interior padding 1 spreads
      # the rows/columns to stride 2, edge padding shifts them by the offset.
      dxp = dxp + lax.pad(routed, zero, ((0, 0, 0), (di, h + 2 - di - (2 * ho - 1), 1),
                                         (dj, w + 2 - dj - (2 * wo - 1), 1), (0, 0, 0)))
      k += 1
  return (dxp[:, 1:h + 1, 1:w + 1, :],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


# ------------------------------------------------------------------ the network


def batch_norm(train: bool, dtype, name: Optional[str] = None):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      scale_init=bn_scale_init, dtype=dtype, name=name)


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
    y = Conv(self.features, 3, self.stride, 1, self.dtype, name='conv1')(x)
    y = nn.relu(batch_norm(train, self.dtype, 'bn1')(y))
    y = Conv(self.features, 3, 1, 1, self.dtype, name='conv2')(y)
    y = batch_norm(train, self.dtype, 'bn2')(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = Conv(self.features, 1, self.stride, 0, self.dtype, name='downsample_conv')(x)
      shortcut = batch_norm(train, self.dtype, 'downsample_bn')(shortcut)
    return nn.relu(y + shortcut)


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
    x = nn.relu(batch_norm(train, self.dtype, 'bn1')(x))
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
