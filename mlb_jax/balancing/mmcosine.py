"""MMCosine (Xu et al., ICASSP 2023; docs/methods.md#mmcosine).

The method is its fusion: cosine-normalised per-modality logits summed and
scaled (`models.fusion.MMCosineFusion`, `model.mmcosine.scale`), trained on
Eq. 3 with stop-gradient probe heads. `model.fusion = 'auto'` picks it.
"""

from mlb_jax.balancing.method import Method


def make_mmcosine(modalities, cfg, ctx) -> Method:
  del modalities, cfg, ctx
  return Method('mmcosine', unimodal_heads='probe', fusion='mmcosine', fusions=('mmcosine',))
