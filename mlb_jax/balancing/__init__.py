"""Balancing: performance scores, coefficients and the training methods.

`METHODS` maps `config.method` to a constructor
`(modalities, config.balancing, MethodContext) -> Method`.
"""

from typing import NamedTuple

from mlb_jax.balancing.agm import make_agm
from mlb_jax.balancing.method import ForwardContext, Method, StepInputs
from mlb_jax.balancing.mlb import (coefficients_from_ratios, make_mlb, mlb_balance,
                                   mlb_coefficients, performance_ratios)
from mlb_jax.balancing.mslr import make_mslr
from mlb_jax.balancing.ogm import make_ogm, ogm_coefficients
from mlb_jax.balancing.pmr import make_pmr
from mlb_jax.balancing.scores import SCORES, correct_count, true_class_probability
from mlb_jax.balancing.unbalanced import unbalanced

# Fusions whose logits are a sum of per-modality terms (`contributions`).
DECOMPOSABLE_FUSIONS = ('late_linear', 'mmcosine')


class MethodContext(NamedTuple):
  """Facts about the run a method may need; windows are converted from epochs here."""
  steps_per_epoch: int
  num_classes: int
  feature_dims: dict   # {modality: D}
  fusion: str          # config.model.fusion


def _epochs_to_steps(epoch: float, ctx: MethodContext) -> int:
  return int(round(epoch * ctx.steps_per_epoch))


def _joint(modalities, cfg, ctx):
  return unbalanced('joint', detach_unimodal=True, modalities=modalities, score=cfg.score)


def _multiloss(modalities, cfg, ctx):
  return unbalanced('multiloss', detach_unimodal=False, modalities=modalities, score=cfg.score)


def _mlb(modalities, cfg, ctx):
  return make_mlb(modalities=modalities, score=cfg.score, alpha=cfg.alpha, beta_max=cfg.beta_max)


def _ogm(gradient_noise):
  def make(modalities, cfg, ctx):
    return make_ogm(modalities=modalities, alpha=cfg.ogm.alpha,
                    start_step=_epochs_to_steps(cfg.ogm.start_epoch, ctx),
                    end_step=_epochs_to_steps(cfg.ogm.end_epoch, ctx), gradient_noise=gradient_noise,
                    scale=cfg.ogm.scale)
  return make


def _mslr(modalities, cfg, ctx):
  return make_mslr(modalities=modalities, initial=dict(cfg.mslr.initial), keep_epochs=cfg.mslr.keep_epochs)


def _agm(modalities, cfg, ctx):
  return make_agm(modalities=modalities, alpha=cfg.agm.alpha, clip=cfg.agm.clip, reencode=cfg.agm.reencode)


def _pmr(modalities, cfg, ctx):
  return make_pmr(modalities=modalities, num_classes=ctx.num_classes, feature_dims=ctx.feature_dims,
                  alpha=cfg.pmr.alpha, momentum=cfg.pmr.momentum,
                  start_step=_epochs_to_steps(cfg.pmr.start_epoch, ctx),
                  end_step=_epochs_to_steps(cfg.pmr.end_epoch, ctx), fraction=cfg.pmr.fraction)


def _mmcosine(modalities, cfg, ctx):
  if ctx.fusion != 'mmcosine':
    raise ValueError(f"method 'mmcosine' needs model.fusion = 'mmcosine', got '{ctx.fusion}'")
  return unbalanced('mmcosine', detach_unimodal=True, modalities=modalities, score=cfg.score)


METHODS = {
    'joint': _joint,          # CE(fused); unimodal heads are stop-gradient probes
    'multiloss': _multiloss,  # Eq. 3, no balancing
    'mlb': _mlb,              # Eq. 3 + Eqs. 4-7
    'ogm': _ogm(False),       # OGM: slow the leading encoder (fusion contributions)
    'ogm_ge': _ogm(True),     # OGM-GE: OGM + Gaussian gradient noise
    'mslr': _mslr,            # per-epoch rates from validation accuracy
    'agm': _agm,              # zero-masking contributions, backward-scaled
    'pmr': _pmr,              # prototype losses for the weaker modality
    'mmcosine': _mmcosine,    # cosine-normalised fusion (model.fusion = 'mmcosine')
}


def make_method(name: str, modalities: tuple[str, ...], cfg, ctx: MethodContext | None = None) -> Method:
  """The method `name` for `modalities`, with hyperparameters from `config.balancing`."""
  if name not in METHODS:
    raise ValueError(f"unknown method '{name}'; expected one of {sorted(METHODS)}")
  if cfg.score not in SCORES:
    raise ValueError(f"unknown balancing.score '{cfg.score}'; expected one of {sorted(SCORES)}")
  ctx = ctx or MethodContext(steps_per_epoch=1, num_classes=0, feature_dims={}, fusion='late_linear')
  method = METHODS[name](tuple(modalities), cfg, ctx)
  if method.unimodal_source == 'contributions' and ctx.fusion not in DECOMPOSABLE_FUSIONS:
    raise ValueError(f"method '{name}' scores each modality's share of the fused logits and needs "
                     f"model.fusion in {list(DECOMPOSABLE_FUSIONS)}, got '{ctx.fusion}'")
  return method
