"""Small encoders for the embedded benchmark and for bring-your-own arrays.

Every encoder maps one modality's batch to a feature vector [B, D]:
  * `MLPEncoder`    any per-sample shape, flattened (feature vectors);
  * `ConvEncoder`   [B, H, W] (spectrogram, a channel is added) or [B, H, W, C];
  * `FramesEncoder` [B, T, H, W, C]: the same 2-D conv stack on every frame, then
    one mean over all frames and positions jointly (the authors' temporal pooling
    for the visual ResNet, docs/methods.md, ResNet-18 encoders).
The paper's ResNet-18 and Conformer encoders live in their own modules.

With `return_tokens=True` each encoder also returns a token sequence
[B, N, D'] for the Transformer fusion: the vector itself (MLP, N = 1) or the
positions of the last feature map (conv: N = h w; frames: N = T h w).

Every encoder computes in its `dtype` (`config.dtype`; parameters stay float32).
The 3x3 convolutions (`PatchConv`) are `nn.Conv`'s map (same parameter, init
and SAME padding) computed by `ops.patch_conv` (`mlb_jax.models.ops`): a plain
convolution, or with `cpu_kernels.CPU_OPS` one matrix product over the 9
shifted views of the input, which under `jax.vmap` over per-seed parameters
(`mlb_jax.multiseed`) is a batched matrix product, where XLA:CPU would otherwise
run a grouped convolution several times slower per seed.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mlb_jax.models.ops import PLAIN_OPS, Ops


class MLPEncoder(nn.Module):
  """Attributes: hidden: widths of the hidden layers; features: output width D; dtype: compute dtype."""
  hidden: Sequence[int] = (256,)
  features: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, return_tokens: bool = False):
    del train
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    out = nn.relu(nn.Dense(self.features, dtype=self.dtype)(x))
    return (out, out[:, None, :]) if return_tokens else out


def _same_padding(size: int, stride: int, kernel: int) -> tuple[int, int]:
  """SAME padding (lo, hi) of one spatial axis, as `nn.Conv` and `lax` pad."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class PatchConv(nn.Module):
  """Bias-free k x k conv with SAME padding, `ops.patch_conv` ([N, H, W, C] ->
  [N, H/s, W/s, features]; with `CPU_OPS` one matrix product over the k^2
  shifted, strided views of the input).

  Its parameter `kernel` [k, k, C, features] has `nn.Conv`'s name, shape and
  init, so this is `nn.Conv(features, (k, k), strides=s, use_bias=False)`, up to
  the summation order.

  Attributes: features; kernel: k; stride: s; dtype: compute dtype; ops.
  """
  features: int
  kernel: int = 3
  stride: int = 2
  dtype: Any = jnp.float32
  ops: Ops = PLAIN_OPS

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel, self.stride
    w = self.param('kernel', nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
    padding = (_same_padding(x.shape[1], s, k), _same_padding(x.shape[2], s, k))
    return self.ops.patch_conv(x.astype(self.dtype), w.astype(self.dtype), s, padding)


class ConvStack(nn.Module):
  """3x3 convs with stride 2, BatchNorm and ReLU; returns the last feature map.

  Attributes: widths: conv widths; dtype: compute dtype; ops: see `PatchConv`.
  """
  widths: Sequence[int] = (16, 32, 64)
  dtype: Any = jnp.float32
  ops: Ops = PLAIN_OPS

  @nn.compact
  def __call__(self, x, *, train: bool):
    for i, width in enumerate(self.widths):
      x = PatchConv(width, dtype=self.dtype, ops=self.ops, name=f'Conv_{i}')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                       name=f'BatchNorm_{i}')(x)
      x = nn.relu(x)
    return x


class ConvEncoder(nn.Module):
  """Attributes: widths: conv widths; features: output width D; dtype: compute dtype; ops: see `PatchConv`."""
  widths: Sequence[int] = (16, 32, 64)
  features: int = 128
  dtype: Any = jnp.float32
  ops: Ops = PLAIN_OPS

  @nn.compact
  def __call__(self, x, *, train: bool, return_tokens: bool = False):
    x = x.astype(self.dtype)
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4:
      raise ValueError(f'ConvEncoder expects [B, H, W] or [B, H, W, C], got shape {x.shape}')
    x = ConvStack(self.widths, self.dtype, self.ops)(x, train=train)
    out = nn.relu(nn.Dense(self.features, dtype=self.dtype)(jnp.mean(x, axis=(1, 2))))
    return (out, x.reshape(x.shape[0], -1, x.shape[-1])) if return_tokens else out


class FramesEncoder(nn.Module):
  """Attributes: widths: conv widths; features: output width D; dtype: compute dtype; ops: see `PatchConv`."""
  widths: Sequence[int] = (16, 32, 64)
  features: int = 128
  dtype: Any = jnp.float32
  ops: Ops = PLAIN_OPS

  @nn.compact
  def __call__(self, x, *, train: bool, return_tokens: bool = False):
    if x.ndim != 5:
      raise ValueError(f'FramesEncoder expects [B, T, H, W, C], got shape {x.shape}')
    b, t = x.shape[:2]
    maps = ConvStack(self.widths, self.dtype, self.ops)(x.reshape((b * t,) + x.shape[2:]).astype(self.dtype), train=train)
    tokens = maps.reshape(b, -1, maps.shape[-1])
    out = nn.relu(nn.Dense(self.features, dtype=self.dtype)(jnp.mean(tokens, axis=1)))
    return (out, tokens) if return_tokens else out


def auto_encoder_name(sample_shape: tuple[int, ...]) -> str:
  """The encoder that fits one sample's shape (without the batch axis)."""
  rank = len(sample_shape)
  if rank == 1:
    return 'mlp'
  if rank in (2, 3):
    return 'conv'
  if rank == 4:
    return 'frames'
  raise ValueError(f'no encoder for per-sample shape {sample_shape}: expected rank 1 to 4')
