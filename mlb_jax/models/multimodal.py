"""`MultimodalClassifier`: one encoder + linear unimodal head per modality and a fusion head.

    f(X) = f_v(f_1(X_1), ..., f_M(X_M))            (Kontras et al., Eq. 1)

Parameters are laid out so the balancing finds each modality's subtree by its
top-level key: `params[<modality>]` = {'encoder', 'head'} and `params['fusion']`.

Besides `__call__`, the pieces are exposed for methods that need them
(`model.apply(variables, ..., method='encode')` etc.): `encode` (one or all
modalities), `heads` and `fuse`. AGM, for instance, re-encodes a zeroed
modality in inference mode and fuses it with the other's training features.

Optional inputs reach the encoders and the fusion:
  * a padding mask `batch['<modality>_mask']` (bool [B, T], True = real frame)
    is passed to that modality's encoder as `mask=` (frame-feature encoders);
  * a fusion with `uses_tokens = True` (Transformer fusion) also receives the
    encoders' un-pooled token sequences {m: [B, N_m, D_m]} and their masks;
  * a fusion with `uses_train = True` (MMTM) also receives `train` in `contributions`;
  * extra keyword arguments of `__call__` and `fuse` (a method's `model_args`,
    e.g. Greedy's `curate`) are passed on to the fusion.

Mixed precision: encoders, heads and fusion compute in their `dtype`
(`config.dtype`), but what leaves the classifier — pooled features, every
head's logits and contributions — is float32, so losses, softmax scores and
the balancing coefficients are computed in float32.
"""

from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlb_jax.losses import FUSED
from mlb_jax.models.fusion import TorchDense

MASK_SUFFIX = '_mask'  # batch[m + MASK_SUFFIX]: padding mask of modality m


class ModelOutput(NamedTuple):
  logits: dict[str, jax.Array]    # {'fused': [B, C], <modality>: [B, C]}
  features: dict[str, jax.Array]  # {<modality>: [B, D_i]} pooled encoder outputs
  # {<modality>: [B, C]} the modality's additive share of the fused logits, for
  # fusions whose logits decompose per modality (late_linear, mmcosine, mmtm); else None.
  contributions: Optional[dict[str, jax.Array]]


class ModalityBranch(nn.Module):
  """An encoder f_i followed by its linear unimodal head (Linear(D -> C)).

  Attributes:
    make_encoder: constructor of the encoder module.
    num_classes: C.
    dtype: compute dtype of the head.
    torch_init: the head gets PyTorch's default Linear init (U(+-1/sqrt(D)), kernel and bias), as the
      authors' heads; default Flax's (LeCun-normal kernel, zero bias).
  """
  make_encoder: Callable[..., nn.Module]
  num_classes: int
  dtype: Any = jnp.float32
  torch_init: bool = False

  def setup(self):
    self.encoder = self.make_encoder()
    self.head = (TorchDense(self.num_classes, dtype=self.dtype) if self.torch_init
                 else nn.Dense(self.num_classes, dtype=self.dtype))

  def encode(self, x, *, train: bool, mask=None, return_tokens: bool = False):
    kwargs = {} if mask is None else {'mask': mask}
    if return_tokens:
      kwargs['return_tokens'] = True
    return self.encoder(x, train=train, **kwargs)

  def classify(self, features, *, detach: bool = False):
    return self.head(jax.lax.stop_gradient(features) if detach else features)

  def __call__(self, x, *, train: bool, detach_head: bool = False):
    features = self.encode(x, train=train)
    return features, self.classify(features, detach=detach_head)


class MultimodalClassifier(nn.Module):
  """Attributes:
    modalities: names in config order; each is a batch key and a params key.
    encoders: {modality: encoder constructor}, e.g. `functools.partial(ConvEncoder, features=128)`.
    fusion: fusion constructor; the module maps {modality: [B, D]} to [B, C].
    num_classes: C.
    dtype: compute dtype of the unimodal heads (the encoder and fusion
      constructors carry their own); outputs are float32 regardless.
    torch_init: PyTorch's default Linear init for the unimodal heads (`ModalityBranch`).
  """
  modalities: Sequence[str]
  encoders: Mapping[str, Callable[..., nn.Module]]
  fusion: Callable[..., nn.Module]
  num_classes: int
  dtype: Any = jnp.float32
  torch_init: bool = False

  def setup(self):
    self.branches = {m: ModalityBranch(self.encoders[m], self.num_classes, self.dtype, self.torch_init, name=m)
                     for m in self.modalities}
    self.fusion_head = self.fusion(name='fusion')

  def encode(self, batch: Mapping[str, jax.Array], *, train: bool,
             only: Optional[Sequence[str]] = None) -> dict[str, jax.Array]:
    """Pooled features {m: float32 [B, D]} of every modality (or those in `only`)."""
    return {m: _float32(self.branches[m].encode(batch[m], train=train, mask=batch.get(m + MASK_SUFFIX)))
            for m in (only or self.modalities)}

  def encode_tokens(self, batch: Mapping[str, jax.Array], *, train: bool,
                    only: Optional[Sequence[str]] = None):
    """(pooled features {m: [B, D]}, token sequences {m: [B, N_m, D_m]}, token
    masks {m: bool [B, N_m]} for the modalities that have a padding mask)."""
    features, tokens, masks = {}, {}, {}
    for m in only or self.modalities:
      mask = batch.get(m + MASK_SUFFIX)
      pooled, tokens[m] = self.branches[m].encode(batch[m], train=train, mask=mask, return_tokens=True)
      features[m] = _float32(pooled)
      if mask is not None:
        masks[m] = mask
    return features, tokens, masks

  def heads(self, features: Mapping[str, jax.Array], *, detach: bool = False) -> dict[str, jax.Array]:
    """Unimodal logits {m: float32 [B, C]}; `detach` makes them stop-gradient probes."""
    return {m: _float32(self.branches[m].classify(features[m], detach=detach)) for m in self.modalities}

  def fuse(self, features: Mapping[str, jax.Array], *, train: bool,
           tokens: Optional[Mapping[str, jax.Array]] = None,
           token_masks: Optional[Mapping[str, jax.Array]] = None, **fusion_args) -> jax.Array:
    """Fused logits float32 [B, C]; `tokens`/`token_masks` (from `encode_tokens`) are
    required by, and only passed to, a fusion with `uses_tokens`; `fusion_args` go to the fusion."""
    if getattr(self.fusion_head, 'uses_tokens', False):
      return _float32(self.fusion_head(features, train=train, tokens=tokens, token_masks=token_masks,
                                       **fusion_args))
    return _float32(self.fusion_head(features, train=train, **fusion_args))

  def __call__(self, batch: Mapping[str, Any], *, train: bool,
               detach_unimodal: bool = False, **fusion_args) -> ModelOutput:
    """Args:
      batch: {modality: [B, ...]} (other keys are ignored).
      train: BatchNorm batch statistics and dropout when True.
      detach_unimodal: unimodal heads see stop_gradient(features) (probes).
      **fusion_args: extra keyword arguments of the fusion (a method's `model_args`,
        e.g. MMTM's `curate`); a fusion that does not take them raises TypeError.
    """
    tokens = token_masks = None
    if getattr(self.fusion_head, 'uses_tokens', False):
      features, tokens, token_masks = self.encode_tokens(batch, train=train)
    else:
      features = self.encode(batch, train=train)
    logits = self.heads(features, detach=detach_unimodal)
    contributions = None
    if hasattr(self.fusion_head, 'contributions'):
      if getattr(self.fusion_head, 'uses_train', False):
        fusion_args = {'train': train, **fusion_args}
      contributions = {m: _float32(z) for m, z in self.fusion_head.contributions(features, **fusion_args).items()}
      logits[FUSED] = sum(contributions[m] for m in self.modalities)
    else:
      logits[FUSED] = self.fuse(features, train=train, tokens=tokens, token_masks=token_masks, **fusion_args)
    return ModelOutput(logits, features, contributions)


def _float32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)
