"""Balancing: performance scores, coefficients and the training methods.

`METHODS` maps `config.method` to a constructor
`(modalities, balancing_config) -> Method`.
"""

from mlb_jax.balancing.method import Method, StepInputs
from mlb_jax.balancing.mlb import (make_mlb, mlb_balance, mlb_coefficients,
                                   performance_ratios)
from mlb_jax.balancing.scores import SCORES, correct_count, true_class_probability
from mlb_jax.balancing.unbalanced import unbalanced


def _joint(modalities, cfg):
  return unbalanced('joint', detach_unimodal=True, modalities=modalities, score=cfg.score)


def _multiloss(modalities, cfg):
  return unbalanced('multiloss', detach_unimodal=False, modalities=modalities, score=cfg.score)


def _mlb(modalities, cfg):
  return make_mlb(modalities=modalities, score=cfg.score, alpha=cfg.alpha, beta_max=cfg.beta_max)


METHODS = {
    'joint': _joint,          # CE(fused); unimodal heads are stop-gradient probes
    'multiloss': _multiloss,  # Eq. 3, no balancing
    'mlb': _mlb,              # Eq. 3 + Eqs. 4-7
}


def make_method(name: str, modalities: tuple[str, ...], cfg) -> Method:
  if name not in METHODS:
    raise ValueError(f"unknown method '{name}'; expected one of {sorted(METHODS)}")
  if cfg.score not in SCORES:
    raise ValueError(f"unknown balancing.score '{cfg.score}'; expected one of {sorted(SCORES)}")
  return METHODS[name](tuple(modalities), cfg)
