"""Small encoders for the embedded benchmark and for bring-your-own arrays.

Every encoder maps one modality's batch to a feature vector [B, D]:
  * `MLPEncoder`    any per-sample shape, flattened (feature vectors);
  * `ConvEncoder`   [B, H, W] (spectrogram, a channel is added) or [B, H, W, C];
  * `FramesEncoder` [B, T, H, W, C]: the same 2-D conv stack on every frame, then
    one mean over all frames and positions jointly (the authors' temporal pooling
    for the visual ResNet, METHODS.md §4.1).
The paper's ResNet-18 and Conformer encoders live in their own modules.

With `return_tokens=True` each encoder also returns a token sequence
[B, N, D'] for the Transformer fusion: the vector itself (MLP, N = 1) or the
positions of the last feature map (conv: N = h w; frames: N = T h w).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLPEncoder(nn.Module):
  """Attributes: hidden: widths of the hidden layers; features: output width D."""
  hidden: Sequence[int] = (256,)
  features: int = 128

  @nn.compact
  def __call__(self, x, *, train: bool, return_tokens: bool = False):
    del train
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    out = nn.relu(nn.Dense(self.features)(x))
    return (out, out[:, None, :]) if return_tokens else out


class ConvStack(nn.Module):
  """3x3 convs with stride 2, BatchNorm and ReLU; returns the last feature map."""
  widths: Sequence[int] = (16, 32, 64)

  @nn.compact
  def __call__(self, x, *, train: bool):
    for width in self.widths:
      x = nn.Conv(width, (3, 3), strides=(2, 2), use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
      x = nn.relu(x)
    return x


class ConvEncoder(nn.Module):
  """Attributes: widths: conv widths; features: output width D."""
  widths: Sequence[int] = (16, 32, 64)
  features: int = 128

  @nn.compact
  def __call__(self, x, *, train: bool, return_tokens: bool = False):
    x = x.astype(jnp.float32)
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4:
      raise ValueError(f'ConvEncoder expects [B, H, W] or [B, H, W, C], got shape {x.shape}')
    x = ConvStack(self.widths)(x, train=train)
    out = nn.relu(nn.Dense(self.features)(jnp.mean(x, axis=(1, 2))))
    return (out, x.reshape(x.shape[0], -1, x.shape[-1])) if return_tokens else out


class FramesEncoder(nn.Module):
  """Attributes: widths: conv widths; features: output width D."""
  widths: Sequence[int] = (16, 32, 64)
  features: int = 128

  @nn.compact
  def __call__(self, x, *, train: bool, return_tokens: bool = False):
    if x.ndim != 5:
      raise ValueError(f'FramesEncoder expects [B, T, H, W, C], got shape {x.shape}')
    b, t = x.shape[:2]
    maps = ConvStack(self.widths)(x.reshape((b * t,) + x.shape[2:]).astype(jnp.float32), train=train)
    tokens = maps.reshape(b, -1, maps.shape[-1])
    out = nn.relu(nn.Dense(self.features)(jnp.mean(tokens, axis=1)))
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
