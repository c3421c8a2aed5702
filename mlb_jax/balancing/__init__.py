"""Balancing: performance scores, coefficients and the training methods.

`METHODS` maps `config.method` to a constructor
`(modalities, config.balancing, MethodContext) -> Method` (the interface is
`balancing.method`; the design against the field's methods is docs/design.md).
A new method is one module here, one entry below, one `balancing.<name>` config
section, its tests and its row in docs/methods.md.
"""

from mlb_jax.balancing.agm import make_agm
from mlb_jax.balancing.cml import make_cml
from mlb_jax.balancing.gblending import make_gblending
from mlb_jax.balancing.greedy import make_greedy
from mlb_jax.balancing.lfm import make_lfm
from mlb_jax.balancing.mbsd import make_mbsd
from mlb_jax.balancing.method import (EpochContext, GradInputs, LossInputs, Method, MethodContext,
                                      StepInputs, multiloss_objectives)
from mlb_jax.balancing.mlb import (coefficients_from_ratios, make_mlb, mlb_balance, mlb_coefficients,
                                   performance_ratios)
from mlb_jax.balancing.mmcosine import make_mmcosine
from mlb_jax.balancing.mmpareto import make_mmpareto
from mlb_jax.balancing.mslr import make_mslr
from mlb_jax.balancing.ogm import make_ogm, make_ogm_ge, ogm_coefficients
from mlb_jax.balancing.opm import make_opm
from mlb_jax.balancing.pmr import make_pmr
from mlb_jax.balancing.scores import SCORES, correct_count, modality_scores, true_class_probability
from mlb_jax.balancing.umt import make_umt
from mlb_jax.balancing.unbalanced import make_joint, make_multiloss

# Fusions whose logits are a sum of per-modality terms (`ModelOutput.contributions`).
DECOMPOSABLE_FUSIONS = ('late_linear', 'mmcosine')
DEFAULT_FUSION = 'late_linear'

METHODS = {
    'joint': make_joint,          # CE(fused); unimodal heads are stop-gradient probes
    'multiloss': make_multiloss,  # Eq. 3, no balancing
    'mlb': make_mlb,              # Eq. 3 + Eqs. 4-7
    'ogm': make_ogm,              # OGM: slow the leading encoder (fusion contributions)
    'ogm_ge': make_ogm_ge,        # OGM-GE: OGM + Gaussian gradient noise
    'mslr': make_mslr,            # per-epoch rates from validation accuracy
    'agm': make_agm,              # zero-masking contributions, backward-scaled
    'pmr': make_pmr,              # prototype losses for the weaker modality
    'mmcosine': make_mmcosine,    # cosine-normalised fusion
    'mmpareto': make_mmpareto,    # per-encoder Pareto combination of fused and unimodal gradients
    'mbsd': make_mbsd,            # confidence-gap weighted agreement of the contributions
    'cml': make_cml,              # no confidence rise when modalities are removed
    'opm': make_opm,              # random drop of the leading modality's features, re-fused
    'gblending': make_gblending,  # Eq. 3 with head weights from train/val loss changes per super-epoch
    'greedy': make_greedy,        # MMTM fusion; curation of the gate of the modality learning faster via the bypass
    'lfm': make_lfm,              # 2 [k0 CE(mean contributions) + k1 alignment], k learned per epoch
    'umt': make_umt,              # feature distillation from unimodal teachers trained first
}


def check_name(name: str) -> None:
  if name not in METHODS:
    raise ValueError(f"unknown method '{name}'; expected one of {sorted(METHODS)}")


def make_method(name: str, modalities: tuple[str, ...], cfg, ctx: MethodContext) -> Method:
  """The method `name` for `modalities`, with hyperparameters from `config.balancing`."""
  check_name(name)
  if cfg.score not in SCORES:
    raise ValueError(f"unknown balancing.score '{cfg.score}'; expected one of {sorted(SCORES)}")
  return METHODS[name](tuple(modalities), cfg, ctx)


def resolve_fusion(method: Method, fusion: str) -> str:
  """`config.model.fusion` with 'auto' resolved: the method's own fusion, else late_linear."""
  if fusion != 'auto':
    return fusion
  return method.fusion or DEFAULT_FUSION


def check_method(method: Method, modalities: tuple[str, ...], fusion: str) -> None:
  """Raises ValueError, before any training, when `method` is not defined for the run's
  modality count or (resolved) fusion."""
  name, count = method.name, len(modalities)
  if count < method.min_modalities or (method.max_modalities is not None and count > method.max_modalities):
    bounds = (f'exactly {method.min_modalities}' if method.max_modalities == method.min_modalities
              else f'{method.min_modalities} to {method.max_modalities or "any number of"}')
    raise ValueError(f"method '{name}' is defined for {bounds} modalities, got {count}: {list(modalities)}")
  if method.fusions is not None and fusion not in method.fusions:
    raise ValueError(f"method '{name}' is not defined with model.fusion '{fusion}'; "
                     f'it works with {list(method.fusions)}')
  if method.unimodal_source == 'contributions' and fusion not in DECOMPOSABLE_FUSIONS:
    raise ValueError(f"method '{name}' scores each modality's share of the fused logits and needs "
                     f"model.fusion in {list(DECOMPOSABLE_FUSIONS)}, got '{fusion}'")
