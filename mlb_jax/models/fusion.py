"""Fusion heads f_v: {modality: features [B, D_i]} -> fused logits [B, C].

Each head takes the modalities in config order. A head whose logits are a sum
of per-modality terms also has `contributions(features) -> {m: [B, C]}`
(OGM and MSLR score those terms, METHODS.md §3.3).
"""

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _torch_linear_init(fan_in: int):
  """PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / jnp.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class LateLinearFusion(nn.Module):
  """Late-Linear: one linear layer over the concatenated features.

  z = sum_m f_m W_m + b, which equals the authors' `fc_0_lin` + `fc_1_lin`
  (METHODS.md §4.3). The modality contributions split the bias evenly,
  z_m = f_m W_m + b / M, as the authors' OGM code does (b/2 for M = 2).

  Attributes: modalities: concatenation order; num_classes: C.
  """
  modalities: Sequence[str]
  num_classes: int

  @nn.compact
  def contributions(self, features: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    dims = [features[m].shape[-1] for m in self.modalities]
    init = _torch_linear_init(sum(dims))
    kernel = self.param('kernel', init, (sum(dims), self.num_classes))
    bias = self.param('bias', init, (self.num_classes,))
    out, start = {}, 0
    for m, d in zip(self.modalities, dims):
      out[m] = features[m] @ kernel[start:start + d] + bias / len(self.modalities)
      start += d
    return out

  def __call__(self, features: Mapping[str, jax.Array], *, train: bool):
    del train
    return sum(self.contributions(features).values())


class MidMLPFusion(nn.Module):
  """Concatenate, then Linear -> ReLU -> Dropout -> Linear -> ReLU -> Dropout -> Linear
  (the authors' Mid-MLP, `fc_inner` 64, dropout 0.1: three affine maps).

  Attributes: modalities; num_classes; hidden: inner width; dropout: rate.
  """
  modalities: Sequence[str]
  num_classes: int
  hidden: int = 64
  dropout: float = 0.1

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], *, train: bool):
    x = jnp.concatenate([features[m] for m in self.modalities], axis=-1)
    drop = lambda h: nn.Dropout(self.dropout, deterministic=not train)(nn.relu(h))
    x = drop(nn.Dense(self.hidden)(x))
    x = drop(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


class MMCosineFusion(nn.Module):
  """MMCosine (Xu et al., ICASSP 2023; METHODS.md §3.7): per-modality cosine logits.

  z[c] = s * sum_m cos(f_m, W_m[c]), with each feature vector and each class
  weight row L2-normalised and no bias.

  Attributes: modalities; num_classes; scale: s (the authors use 10).
  """
  modalities: Sequence[str]
  num_classes: int
  scale: float = 10.0

  @nn.compact
  def contributions(self, features: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    out = {}
    for m in self.modalities:
      f = features[m]
      w = self.param(f'kernel_{m}', _torch_linear_init(f.shape[-1]), (f.shape[-1], self.num_classes))
      f_unit = f * jax.lax.rsqrt(jnp.sum(f * f, axis=-1, keepdims=True) + 1e-12)
      w_unit = w * jax.lax.rsqrt(jnp.sum(w * w, axis=0, keepdims=True) + 1e-12)
      out[m] = self.scale * (f_unit @ w_unit)
    return out

  def __call__(self, features: Mapping[str, jax.Array], *, train: bool):
    del train
    return sum(self.contributions(features).values())
