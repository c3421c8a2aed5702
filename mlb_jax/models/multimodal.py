"""`MultimodalClassifier`: one encoder + linear unimodal head per modality and a fusion head.

    f(X) = f_v(f_1(X_1), ..., f_M(X_M))            (Kontras et al., Eq. 1)

Parameters are laid out so the balancing finds each modality's subtree by its
top-level key: `params[<modality>]` = {'encoder', 'head'} and `params['fusion']`.
"""

from typing import Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax

from mlb_jax.losses import FUSED


class ModelOutput(NamedTuple):
  logits: dict[str, jax.Array]    # {'fused': [B, C], <modality>: [B, C]}
  features: dict[str, jax.Array]  # {<modality>: [B, D_i]} encoder outputs


class ModalityBranch(nn.Module):
  """An encoder f_i followed by its linear unimodal head (Linear(D -> C)).

  Attributes:
    make_encoder: constructor of the encoder module (called with `name`).
    num_classes: C.
  """
  make_encoder: Callable[..., nn.Module]
  num_classes: int

  @nn.compact
  def __call__(self, x, *, train: bool, detach_head: bool):
    features = self.make_encoder(name='encoder')(x, train=train)
    head_in = jax.lax.stop_gradient(features) if detach_head else features
    return features, nn.Dense(self.num_classes, name='head')(head_in)


class MultimodalClassifier(nn.Module):
  """Attributes:
    modalities: names in config order; each is a batch key and a params key.
    encoders: {modality: encoder constructor}, e.g. `functools.partial(ConvEncoder, features=128)`.
    fusion: fusion constructor; the module maps {modality: [B, D]} to [B, C].
    num_classes: C.
  """
  modalities: Sequence[str]
  encoders: Mapping[str, Callable[..., nn.Module]]
  fusion: Callable[..., nn.Module]
  num_classes: int

  def setup(self):
    self.branches = {m: ModalityBranch(self.encoders[m], self.num_classes, name=m)
                     for m in self.modalities}
    self.fusion_head = self.fusion(name='fusion')

  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool,
               detach_unimodal: bool = False) -> ModelOutput:
    """Args:
      batch: {modality: [B, ...]} (other keys are ignored).
      train: BatchNorm batch statistics and dropout when True.
      detach_unimodal: unimodal heads see stop_gradient(features) (probes).
    """
    features, logits = {}, {}
    for m in self.modalities:
      features[m], logits[m] = self.branches[m](batch[m], train=train, detach_head=detach_unimodal)
    logits[FUSED] = self.fusion_head(features, train=train)
    return ModelOutput(logits, features)
