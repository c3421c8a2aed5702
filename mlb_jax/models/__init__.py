"""Models: encoders, fusion heads and the multimodal classifier.

`ENCODERS` and `FUSIONS` map config names to module classes; `build_model` turns
`config.model` plus the dataset's modality shapes into a `MultimodalClassifier`.

`config.dtype` is the one compute-dtype knob: every encoder, unimodal head and
fusion head computes in it (bfloat16: matrix products, convolutions and
activations), while parameters stay float32 and the classifier returns float32
features and logits, so losses, softmax scores and the coefficients k_i are
float32 whatever the compute dtype.

`config.model.kernels` picks, once per build, the functions the convolutional
encoders (ResNet-18, conv, frames) compute their convolutions, max-pool and
batch norm with (`ops.Ops`): 'plain' (`ops.PLAIN_OPS`, the textbook XLA
operations), 'cpu' (`cpu_kernels.CPU_OPS`, reformulated for fast gradients on
XLA:CPU) or 'auto' (cpu on a CPU backend, else plain); `resolve_kernels` maps
the setting to 'plain' | 'cpu'. The parameters do not depend on it. The same
resolved name selects the XLA compiler options of the jitted steps
(`mlb_jax.compile_options.jit_options(kernels)`), which the training build
passes to `jax.jit`.
"""

import functools
from typing import Mapping

import jax
import jax.numpy as jnp

from mlb_jax.models.conformer import ConformerEncoder
from mlb_jax.models.cpu_kernels import CPU_OPS
from mlb_jax.models.encoders import (ConvEncoder, FramesEncoder, MLPEncoder,
                                     auto_encoder_name)
from mlb_jax.models.fusion import (FiLMFusion, GatedFusion, LateLinearFusion, MidMLPFusion,
                                   MMCosineFusion, MMTMFusion, TransformerFusion)
from mlb_jax.models.multimodal import MASK_SUFFIX, ModelOutput, MultimodalClassifier
from mlb_jax.models.ops import PLAIN_OPS, Ops
from mlb_jax.models.resnet import ResNet18Encoder

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  """`config.dtype` ('float32' | 'bfloat16') as a jnp dtype."""
  if name not in DTYPES:
    raise ValueError(f"unknown dtype '{name}'; expected one of {sorted(DTYPES)}")
  return DTYPES[name]


# `config.model.kernels` (resolved) -> the encoders' operations.
KERNELS = {'plain': PLAIN_OPS, 'cpu': CPU_OPS}


def resolve_kernels(name: str) -> str:
  """`config.model.kernels` as 'plain' | 'cpu': 'auto' is 'cpu' on a CPU backend
  (`jax.default_backend()`), else 'plain'."""
  if name == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'plain'
  if name not in KERNELS:
    raise ValueError(f"unknown model.kernels '{name}'; expected one of {['auto', *sorted(KERNELS)]}")
  return name


def kernel_ops(name: str) -> Ops:
  """The `Ops` of `config.model.kernels` ('auto' | 'plain' | 'cpu')."""
  return KERNELS[resolve_kernels(name)]


# Each entry: (config.model, compute dtype, ops) -> constructor.
ENCODERS = {
    'mlp': lambda cfg, dtype, ops: functools.partial(MLPEncoder, hidden=tuple(cfg.mlp.hidden),
                                                     features=cfg.features, dtype=dtype),
    'conv': lambda cfg, dtype, ops: functools.partial(ConvEncoder, widths=tuple(cfg.conv.widths),
                                                      features=cfg.features, dtype=dtype, ops=ops),
    'frames': lambda cfg, dtype, ops: functools.partial(FramesEncoder, widths=tuple(cfg.conv.widths),
                                                        features=cfg.features, dtype=dtype, ops=ops),
    # The paper's encoders: spectrogram / image / frames (8 * resnet18.width features) ...
    'resnet18': lambda cfg, dtype, ops: functools.partial(ResNet18Encoder, width=cfg.resnet18.width, dtype=dtype,
                                                          ops=ops),
    # ... and pretrained frame features [T, D] (conformer.dim features).
    'conformer': lambda cfg, dtype, ops: functools.partial(
        ConformerEncoder, bottleneck=cfg.conformer.bottleneck, dim=cfg.conformer.dim,
        layers=cfg.conformer.layers, heads=cfg.conformer.heads, ff_mult=cfg.conformer.ff_mult,
        kernel=cfg.conformer.kernel, dropout=cfg.conformer.dropout, dtype=dtype),
}

# Each entry: (config.model, modalities, num_classes, compute dtype) -> constructor.
FUSIONS = {
    'late_linear': lambda cfg, modalities, num_classes, dtype: functools.partial(
        LateLinearFusion, modalities=tuple(modalities), num_classes=num_classes, dtype=dtype,
        sliced_init=cfg.torch_init),
    'mid_mlp': lambda cfg, modalities, num_classes, dtype: functools.partial(
        MidMLPFusion, modalities=tuple(modalities), num_classes=num_classes,
        hidden=cfg.mid_mlp.hidden, dropout=cfg.mid_mlp.dropout, dtype=dtype, torch_init=cfg.torch_init),
    'mmcosine': lambda cfg, modalities, num_classes, dtype: functools.partial(
        MMCosineFusion, modalities=tuple(modalities), num_classes=num_classes,
        scale=cfg.mmcosine.scale, dtype=dtype),
    'film': lambda cfg, modalities, num_classes, dtype: functools.partial(
        FiLMFusion, modalities=tuple(modalities), num_classes=num_classes, dtype=dtype),
    'gated': lambda cfg, modalities, num_classes, dtype: functools.partial(
        GatedFusion, modalities=tuple(modalities), num_classes=num_classes, dtype=dtype),
    'mmtm': lambda cfg, modalities, num_classes, dtype: functools.partial(
        MMTMFusion, modalities=tuple(modalities), num_classes=num_classes, ratio=cfg.mmtm.ratio, dtype=dtype),
    'transformer': lambda cfg, modalities, num_classes, dtype: functools.partial(
        TransformerFusion, modalities=tuple(modalities), num_classes=num_classes,
        dim=cfg.transformer.dim, layers=cfg.transformer.layers, heads=cfg.transformer.heads,
        ff_mult=cfg.transformer.ff_mult, kernel=cfg.transformer.kernel, dropout=cfg.transformer.dropout,
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
  computing in `dtype` (`config.dtype`; parameters stay float32), its
  convolutional encoders with the operations of `model_cfg.kernels`.

  `model_cfg.fusion` must be a head name: the build resolves 'auto' (the
  method's own fusion, else late_linear) before calling this."""
  if model_cfg.fusion == 'auto':
    raise ValueError("model.fusion 'auto' must be resolved before build_model (to the method's own fusion or "
                     f"late_linear); expected one of {sorted(FUSIONS)}")
  if model_cfg.fusion not in FUSIONS:
    raise ValueError(f"unknown model.fusion '{model_cfg.fusion}'; expected 'auto' or one of {sorted(FUSIONS)}")
  ops = kernel_ops(model_cfg.kernels)
  names = encoder_names(model_cfg, {m: sample_shapes[m] for m in modalities})
  dtype = compute_dtype(dtype)
  return MultimodalClassifier(
      modalities=tuple(modalities),
      encoders={m: ENCODERS[names[m]](model_cfg, dtype, ops) for m in modalities},
      fusion=FUSIONS[model_cfg.fusion](model_cfg, modalities, num_classes, dtype),
      num_classes=num_classes,
      dtype=dtype,
      torch_init=bool(model_cfg.torch_init))
