"""Fusion heads f_v: {modality: features [B, D_i]} -> fused logits [B, C].

Each head takes the modalities in config order. Late-Linear and Mid-MLP work
for any number of modalities.
"""

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class LateLinearFusion(nn.Module):
  """Concatenate the features, one linear layer (the paper's Late-Linear).

  Equal to the authors' `fc_0_lin` + `fc_1_lin` sum (METHODS.md §4.3).

  Attributes: modalities: concatenation order; num_classes: C.
  """
  modalities: Sequence[str]
  num_classes: int

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], *, train: bool):
    del train
    x = jnp.concatenate([features[m] for m in self.modalities], axis=-1)
    return nn.Dense(self.num_classes)(x)


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
