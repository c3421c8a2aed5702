"""Models: encoders, fusion heads and the multimodal classifier.

`ENCODERS` and `FUSIONS` map config names to module classes; `build_model` turns
`config.model` plus the dataset's modality shapes into a `MultimodalClassifier`.

`config.dtype` is the one compute-dtype knob: every encoder, unimodal head and
fusion head computes in it (bfloat16: matrix products, convolutions and
activations), while parameters stay float32 and the classifier returns float32
features and logits, so losses, softmax scores and the coefficients k_i are
float32 whatever the compute dtype.
"""

import functools
from typing import Mapping

import jax.numpy as jnp

from mlb_jax.models.conformer import ConformerEncoder
from mlb_jax.models.encoders import (ConvEncoder, FramesEncoder, MLPEncoder,
                                     auto_encoder_name)
from mlb_jax.models.fusion import (FiLMFusion, GatedFusion, LateLinearFusion, MidMLPFusion,
                                   MMCosineFusion, TransformerFusion)
from mlb_jax.models.multimodal import MASK_SUFFIX, ModelOutput, MultimodalClassifier
from mlb_jax.models.resnet import ResNet18Encoder

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  """`config.dtype` ('float32' | 'bfloat16') as a jnp dtype."""
  if name not in DTYPES:
    raise ValueError(f"unknown dtype '{name}'; expected one of {sorted(DTYPES)}")
  return DTYPES[name]


# Each entry: (config.model, compute dtype) -> constructor.
ENCODERS = {
    'mlp': lambda cfg, dtype: functools.partial(MLPEncoder, hidden=tuple(cfg.mlp_hidden), features=cfg.features,
                                                dtype=dtype),
    'conv': lambda cfg, dtype: functools.partial(ConvEncoder, widths=tuple(cfg.conv_widths), features=cfg.features,
                                                 dtype=dtype),
    'frames': lambda cfg, dtype: functools.partial(FramesEncoder, widths=tuple(cfg.conv_widths),
                                                   features=cfg.features, dtype=dtype),
    # The paper's encoders: spectrogram / image / frames (8 * resnet_width features) ...
    'resnet18': lambda cfg, dtype: functools.partial(ResNet18Encoder, width=cfg.resnet_width, dtype=dtype),
    # ... and pretrained frame features [T, D] (conformer_dim features).
    'conformer': lambda cfg, dtype: functools.partial(
        ConformerEncoder, bottleneck=cfg.conformer_bottleneck, dim=cfg.conformer_dim,
        layers=cfg.conformer_layers, heads=cfg.conformer_heads, ff_mult=cfg.conformer_ff_mult,
        kernel=cfg.conformer_kernel, dropout=cfg.conformer_dropout, dtype=dtype),
}

# Each entry: (config.model, modalities, num_classes, compute dtype) -> constructor.
FUSIONS = {
    'late_linear': lambda cfg, modalities, num_classes, dtype: functools.partial(
        LateLinearFusion, modalities=tuple(modalities), num_classes=num_classes, dtype=dtype),
    'mid_mlp': lambda cfg, modalities, num_classes, dtype: functools.partial(
        MidMLPFusion, modalities=tuple(modalities), num_classes=num_classes,
        hidden=cfg.mid_hidden, dropout=cfg.dropout, dtype=dtype),
    'mmcosine': lambda cfg, modalities, num_classes, dtype: functools.partial(
        MMCosineFusion, modalities=tuple(modalities), num_classes=num_classes,
        scale=cfg.mmcosine_scale, dtype=dtype),
    'film': lambda cfg, modalities, num_classes, dtype: functools.partial(
        FiLMFusion, modalities=tuple(modalities), num_classes=num_classes, dtype=dtype),
    'gated': lambda cfg, modalities, num_classes, dtype: functools.partial(
        GatedFusion, modalities=tuple(modalities), num_classes=num_classes, dtype=dtype),
    'transformer': lambda cfg, modalities, num_classes, dtype: functools.partial(
        TransformerFusion, modalities=tuple(modalities), num_classes=num_classes,
        dim=cfg.conformer_dim, layers=cfg.fusion_layers, heads=cfg.conformer_heads,
        ff_mult=cfg.conformer_ff_mult, kernel=cfg.conformer_kernel, dropout=cfg.conformer_dropout,
        dtype=dtype),
}


def encoder_names(model_cfg, sample_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
  """{modality: encoder name}: `config.model.encoders[m]` if set, else
  `config.model.encoder`; 'auto' picks by the per-sample shape."""
  unknown = set(model_cfg.encoders) - set(sample_shapes)
  if unknown:
    raise ValueError(f'config.model.encoders names unknown modalities {sorted(unknown)}; '
                     f'modalities are {list(sample_shapes)}')
  names = {}
  for m, shape in sample_shapes.items():
    name = model_cfg.encoders[m] if m in model_cfg.encoders else model_cfg.encoder
    name = auto_encoder_name(shape) if name == 'auto' else name
    if name not in ENCODERS:
      raise ValueError(f"unknown encoder '{name}' for modality '{m}'; expected 'auto' or one of {sorted(ENCODERS)}")
    names[m] = name
  return names


def build_model(model_cfg, modalities, sample_shapes, num_classes: int,
                dtype: str = 'float32') -> MultimodalClassifier:
  """The classifier for `modalities` (config order) with per-sample `sample_shapes`,
  computing in `dtype` (`config.dtype`; parameters stay float32)."""
  if model_cfg.fusion not in FUSIONS:
    raise ValueError(f"unknown model.fusion '{model_cfg.fusion}'; expected one of {sorted(FUSIONS)}")
  names = encoder_names(model_cfg, {m: sample_shapes[m] for m in modalities})
  dtype = compute_dtype(dtype)
  return MultimodalClassifier(
      modalities=tuple(modalities),
      encoders={m: ENCODERS[names[m]](model_cfg, dtype) for m in modalities},
      fusion=FUSIONS[model_cfg.fusion](model_cfg, modalities, num_classes, dtype),
      num_classes=num_classes,
      dtype=dtype)
