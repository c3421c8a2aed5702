"""ResNet-18 encoders of the paper (docs/methods.md, ResNet-18 encoders), channels-last.

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
bias 0; BN momentum 0.1 in torch terms (0.9 here) and eps 1e-5, the running
variance updated with the unbiased batch variance as torch does.

The convolutions, the max-pool and training-mode batch norm are the functions
of the `ops` attribute (`mlb_jax.models.ops`): by default `PLAIN_OPS`
(`lax.conv_general_dilated`, `lax.reduce_window`, batch norm by plain
autodiff); `build_model` passes `cpu_kernels.CPU_OPS` when `config.model.kernels`
resolves to 'cpu', the same math reformulated for fast gradients on XLA:CPU.
The parameters and their names do not depend on `ops`.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mlb_jax.models.ops import PLAIN_OPS, Ops, normalize


def kaiming_normal_fan_out(key, shape, dtype=jnp.float32):
  """torch `kaiming_normal_(mode='fan_out', nonlinearity='relu')` for an HWIO kernel."""
  fan_out = shape[-1] * int(np.prod(shape[:-2]))
  return jax.random.normal(key, shape, dtype) * np.sqrt(2.0 / fan_out).astype(dtype)


def bn_scale_init(key, shape, dtype=jnp.float32):
  """BatchNorm weight ~ N(1, 0.02), the authors' backbone init."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class Conv(nn.Module):
  """torch `Conv2d(bias=False)` with the authors' init, channels-last (`ops.conv`).

  Attributes: features: C_out; kernel: k; stride; padding; dtype: compute dtype; ops.
  """
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  dtype: Any = jnp.float32
  ops: Ops = PLAIN_OPS

  @nn.compact
  def __call__(self, x):
    w = self.param('kernel', kaiming_normal_fan_out,
                   (self.kernel, self.kernel, x.shape[-1], self.features))
    return self.ops.conv(x.astype(self.dtype), w.astype(self.dtype), self.stride, self.padding)


class BatchNorm(nn.Module):
  """torch `BatchNorm2d` over the last axis, optionally followed by `+ residual`
  and ReLU in the same op: batch statistics in training (`ops.batch_norm`),
  running averages (momentum 0.1 in torch terms) in inference, and the running
  variance updated with the unbiased batch variance, as torch does.

  Same variable names as `flax.linen.BatchNorm` ('scale', 'bias'; 'mean', 'var'
  in `batch_stats`). The authors' init: scale ~ N(1, 0.02), bias 0.

  Attributes: use_running_average; momentum (of the old value); epsilon; dtype; ops.
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  ops: Ops = PLAIN_OPS

  @nn.compact
  def __call__(self, x, residual=None, *, relu: bool = False):
    c = x.shape[-1]
    scale = self.param('scale', bn_scale_init, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    x = x.astype(self.dtype)
    if self.use_running_average:
      out = normalize(x, ra_mean.value, lax.rsqrt(ra_var.value + self.epsilon), scale, bias, residual, relu)
      return out.astype(self.dtype)
    out, mean, var = self.ops.batch_norm(x, scale, bias, residual, relu, self.epsilon)
    if not self.is_initializing():
      n = x.size // c
      unbiased = var * (n / max(n - 1, 1))
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * lax.stop_gradient(mean)
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * lax.stop_gradient(unbiased)
    return out


def batch_norm(train: bool, dtype, ops: Ops, name: Optional[str] = None):
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, ops=ops, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN; a 1x1 conv + BN shortcut when the shape changes.

  Attributes: features: output width; stride: of the first conv; dtype; ops.
  """
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  ops: Ops = PLAIN_OPS

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv = lambda k, stride, pad, name: Conv(self.features, k, stride, pad, self.dtype, self.ops, name=name)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = conv(1, self.stride, 0, 'downsample_conv')(x)
      shortcut = batch_norm(train, self.dtype, self.ops, 'downsample_bn')(shortcut)
    y = conv(3, self.stride, 1, 'conv1')(x)
    y = batch_norm(train, self.dtype, self.ops, 'bn1')(y, relu=True)
    y = conv(3, 1, 1, 'conv2')(y)
    return batch_norm(train, self.dtype, self.ops, 'bn2')(y, shortcut, relu=True)


class ResNet18(nn.Module):
  """The ResNet-18 trunk: [N, H, W, C] -> layer4 map [N, H/32, W/32, 8 * width].

  Attributes:
    width: stem width w (64 = the standard ResNet-18); stages use w, 2w, 4w, 8w.
    stage_sizes: BasicBlocks per stage.
    dtype: compute dtype (parameters stay float32).
    ops: the convolution, max-pool and batch-norm functions (`mlb_jax.models.ops`).
  """
  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  dtype: Any = jnp.float32
  ops: Ops = PLAIN_OPS

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = Conv(self.width, 7, 2, 3, self.dtype, self.ops, name='conv1')(x.astype(self.dtype))
    x = batch_norm(train, self.dtype, self.ops, 'bn1')(x, relu=True)
    x = self.ops.max_pool(x)
    for stage, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        stride = 2 if stage > 0 and b == 0 else 1
        x = BasicBlock(self.width * 2 ** stage, stride, self.dtype, self.ops,
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

  Attributes: width: see `ResNet18`; dtype: compute dtype; ops: see `ResNet18`.
  """
  width: int = 64
  dtype: Any = jnp.float32
  ops: Ops = PLAIN_OPS

  @nn.compact
  def __call__(self, x, *, train: bool, return_tokens: bool = False):
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim not in (4, 5):
      raise ValueError('ResNet18Encoder expects [B, F, T], [B, H, W, C] or [B, T, H, W, C], '
                       f'got shape {x.shape}')
    b = x.shape[0]
    frames = x.reshape((-1,) + x.shape[-3:])
    maps = ResNet18(self.width, dtype=self.dtype, ops=self.ops, name='resnet')(frames, train=train)
    tokens = maps.reshape(b, -1, maps.shape[-1])
    pooled = jnp.mean(tokens.astype(jnp.float32), axis=1)
    return (pooled, tokens) if return_tokens else pooled
