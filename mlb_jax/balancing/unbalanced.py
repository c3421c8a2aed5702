"""Methods without balancing: Joint Training and Multi-Loss.

See docs/methods.md#joint-training and docs/methods.md#multi-loss.

Both train on Eq. 3 with `config.loss` weights and scale nothing. Joint Training's
unimodal heads are stop-gradient probes (its configs set their loss weights as
for every method; the probes only measure what each encoder has learned).
"""

from mlb_jax.balancing.method import Method


def make_joint(modalities, cfg, ctx) -> Method:
  del modalities, cfg, ctx
  return Method('joint', unimodal_heads='probe')


def make_multiloss(modalities, cfg, ctx) -> Method:
  del modalities, cfg, ctx
  return Method('multiloss')
