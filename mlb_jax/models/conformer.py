"""Conformer (Gulati et al., 2020) as in VAVL / sooftware (docs/methods.md, Conformer),
and the encoder of the paper's pretrained-feature path (docs/methods.md, pretrained features).

Block = x + FF(x)/2 -> x + MHSA(x) -> x + Conv(x) -> x + FF(x)/2 -> LayerNorm, with

  FF   = LN -> Linear(d, 4d) -> Swish -> Dropout -> Linear(4d, d) -> Dropout
  MHSA = LN -> Transformer-XL relative-position attention (sinusoidal encodings
         of positions 0..L-1, learned u/v biases, the relative shift of the
         reference code), scores divided by sqrt(d) (not sqrt(d_head)) -> Dropout
  Conv = LN -> pointwise Conv1d(d, 2d) -> GLU -> depthwise Conv1d(k = 31, no bias)
         -> BatchNorm -> Swish -> pointwise Conv1d(d, d) -> Dropout

Linear layers use xavier-uniform weights and zero biases (sooftware's `Linear`);
the 1-D convolutions torch's default U(+-1/sqrt(fan_in)).

Sequences are [B, L, D] with an optional boolean `mask` [B, L] (True = real
frame). Attention runs over time *within* each sample, padded keys are masked
out, padded frames are zeroed before the depthwise convolution and left out of
the BatchNorm statistics and of the final mean. The reference code instead feeds
[T, B, D] to this batch-first module, so its attention and convolution mix the
samples of a mini-batch and its time mean counts padding (docs/methods.md,
pretrained features); that is not reproduced.

Every module computes in its `dtype` (`config.dtype`; parameters stay float32);
attention softmax, BatchNorm statistics and the final frame mean run in float32.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_xavier = nn.initializers.xavier_uniform()


def xavier_dense(features: int, use_bias: bool = True, name: Optional[str] = None,
                 dtype: Any = jnp.float32) -> nn.Dense:
  """sooftware's `Linear`: xavier-uniform weight, zero bias; computes in `dtype`."""
  return nn.Dense(features, use_bias=use_bias, kernel_init=_xavier, bias_init=nn.initializers.zeros,
                  dtype=dtype, name=name)


def _torch_conv_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def sinusoidal_encoding(length: int, dim: int) -> np.ndarray:
  """pe[p, 2i] = sin(p / 10000^(2i/d)), pe[p, 2i+1] = cos(...), p = 0..length-1."""
  position = np.arange(length, dtype=np.float32)[:, None]
  div = np.exp(np.arange(0, dim, 2, dtype=np.float32) * -(math.log(10000.0) / dim))
  pe = np.zeros((length, dim), np.float32)
  pe[:, 0::2] = np.sin(position * div)
  pe[:, 1::2] = np.cos(position * div)
  return pe


def relative_shift(scores: jax.Array) -> jax.Array:
  """The reference code's shift of [..., L, L] position scores: prepend a zero
  column, view as [..., L + 1, L], drop the first row, view as [..., L, L]."""
  *lead, l1, l2 = scores.shape
  padded = jnp.concatenate([jnp.zeros((*lead, l1, 1), scores.dtype), scores], axis=-1)
  return padded.reshape(*lead, l2 + 1, l1)[..., 1:, :].reshape(scores.shape)


class RelativeMultiHeadAttention(nn.Module):
  """Transformer-XL attention with the sooftware parametrisation.

  score = ((q + u) k^T + shift((q + v) p^T)) / sqrt(dim), p = pos_proj(PE).

  Attributes: dim; heads; dropout; dtype: compute dtype (the softmax runs in float32).
  """
  dim: int
  heads: int = 8
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array], *, train: bool):
    b, length, _ = x.shape
    if self.dim % self.heads:
      raise ValueError(f'Conformer dim {self.dim} is not divisible by {self.heads} heads')
    d_head = self.dim // self.heads
    split = lambda t: t.reshape(b, -1, self.heads, d_head)
    dense = lambda name, use_bias=True: xavier_dense(self.dim, use_bias, name=name, dtype=self.dtype)
    q = split(dense('query')(x))
    k = split(dense('key')(x))
    v = split(dense('value')(x))
    pos = dense('pos_proj', use_bias=False)(
        jnp.asarray(sinusoidal_encoding(length, self.dim), self.dtype)).reshape(length, self.heads, d_head)
    u_bias = self.param('u_bias', _xavier, (self.heads, d_head)).astype(self.dtype)
    v_bias = self.param('v_bias', _xavier, (self.heads, d_head)).astype(self.dtype)
    content = jnp.einsum('bqhd,bkhd->bhqk', q + u_bias, k)
    position = relative_shift(jnp.einsum('bqhd,phd->bhqp', q + v_bias, pos))
    scores = (content + position).astype(jnp.float32) / math.sqrt(self.dim)
    if mask is not None:
      scores = jnp.where(mask[:, None, None, :], scores, -1e9)
    attn = nn.Dropout(self.dropout, deterministic=not train)(jax.nn.softmax(scores, axis=-1).astype(self.dtype))
    context = jnp.einsum('bhqk,bkhd->bqhd', attn, v).reshape(b, length, self.dim)
    return dense('out')(context)


class FeedForward(nn.Module):
  """Attributes: dim; mult: expansion; dropout; dtype: compute dtype."""
  dim: int
  mult: int = 4
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
    x = drop(nn.swish(xavier_dense(self.dim * self.mult, dtype=self.dtype)(x)))
    return drop(xavier_dense(self.dim, dtype=self.dtype)(x))


class ConvModule(nn.Module):
  """Attributes: dim; kernel: depthwise kernel size (odd); dropout; dtype: compute dtype."""
  dim: int
  kernel: int = 31
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array], *, train: bool):
    if self.kernel % 2 != 1:
      raise ValueError(f'Conformer conv kernel must be odd, got {self.kernel}')
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
    x = nn.Conv(2 * self.dim, (1,), kernel_init=_torch_conv_init(self.dim),
                bias_init=_torch_conv_init(self.dim), dtype=self.dtype, name='pointwise1')(x)
    x = nn.glu(x, axis=-1)
    if mask is not None:
      x = x * mask[..., None].astype(x.dtype)
    x = nn.Conv(self.dim, (self.kernel,), padding=[(self.kernel // 2, self.kernel // 2)],
                feature_group_count=self.dim, use_bias=False,
                kernel_init=_torch_conv_init(self.kernel), dtype=self.dtype, name='depthwise')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name='bn')(
        x, mask=None if mask is None else mask[..., None])
    x = nn.swish(x)
    x = nn.Conv(self.dim, (1,), kernel_init=_torch_conv_init(self.dim),
                bias_init=_torch_conv_init(self.dim), dtype=self.dtype, name='pointwise2')(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class ConformerBlock(nn.Module):
  """Attributes: dim; heads; ff_mult; kernel; dropout; dtype: compute dtype."""
  dim: int = 512
  heads: int = 8
  ff_mult: int = 4
  kernel: int = 31
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array] = None, *, train: bool):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    x = x + 0.5 * FeedForward(self.dim, self.ff_mult, self.dropout, self.dtype, name='ff1')(x, train=train)
    attn_in = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='attn_norm')(x)
    x = x + drop(RelativeMultiHeadAttention(self.dim, self.heads, self.dropout, self.dtype, name='attn')(
        attn_in, mask, train=train))
    x = x + ConvModule(self.dim, self.kernel, self.dropout, self.dtype, name='conv')(x, mask, train=train)
    x = x + 0.5 * FeedForward(self.dim, self.ff_mult, self.dropout, self.dtype, name='ff2')(x, train=train)
    return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='out_norm')(x)


class Conformer(nn.Module):
  """Linear(D_in -> dim) -> Dropout -> `layers` Conformer blocks; [B, L, D_in] -> [B, L, dim].

  Attributes: dim; layers; heads; ff_mult; kernel; dropout; project: apply the
  input projection (the Transformer fusion projects its tokens itself); dtype:
  compute dtype.
  """
  dim: int = 512
  layers: int = 5
  heads: int = 8
  ff_mult: int = 4
  kernel: int = 31
  dropout: float = 0.1
  project: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[jax.Array] = None, *, train: bool):
    if self.project:
      x = xavier_dense(self.dim, name='input_proj', dtype=self.dtype)(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x.astype(self.dtype))
    for i in range(self.layers):
      x = ConformerBlock(self.dim, self.heads, self.ff_mult, self.kernel, self.dropout, self.dtype,
                         name=f'block{i}')(x, mask, train=train)
    return x


def masked_mean(x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """Mean of [B, L, D] over the real frames of each sample -> [B, D]."""
  if mask is None:
    return jnp.mean(x, axis=1)
  w = mask.astype(x.dtype)[..., None]
  return jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class ConformerEncoder(nn.Module):
  """The pretrained-feature encoder: per-frame features [B, T, D_in] (wav2vec 2.0
  hidden states, face embeddings) -> Conv1d(D_in -> `bottleneck`, k = 1, no
  bias) -> `Conformer` -> mean over the real frames -> [B, dim].

  Args of `__call__`: x [B, T, D_in]; mask: optional bool [B, T] (True = real
  frame); without one, frames that are exactly zero vectors are padding (the
  zero-padding of the feature files, data_pipelines/extract_features.py); train;
  return_tokens: also return the frame outputs [B, T, dim].

  Attributes: bottleneck (authors: 50); dim; layers (authors: 5); heads;
  ff_mult; kernel; dropout; dtype: compute dtype (the pooled output is float32).
  """
  bottleneck: int = 50
  dim: int = 512
  layers: int = 5
  heads: int = 8
  ff_mult: int = 4
  kernel: int = 31
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, mask: Optional[jax.Array] = None,
               return_tokens: bool = False):
    if x.ndim != 3:
      raise ValueError(f'ConformerEncoder expects frame features [B, T, D], got shape {x.shape}')
    if mask is not None and mask.shape != x.shape[:2]:
      raise ValueError(f'ConformerEncoder mask must be [B, T] = {x.shape[:2]}, got {mask.shape}')
    x = x.astype(jnp.float32)
    if mask is None:
      mask = jnp.any(x != 0, axis=-1)
    x = nn.Dense(self.bottleneck, use_bias=False, kernel_init=_torch_conv_init(x.shape[-1]),
                 dtype=self.dtype, name='bottleneck')(x)
    tokens = Conformer(self.dim, self.layers, self.heads, self.ff_mult, self.kernel, self.dropout,
                       dtype=self.dtype, name='conformer')(x, mask, train=train)
    pooled = masked_mean(tokens.astype(jnp.float32), mask)
    return (pooled, tokens) if return_tokens else pooled
