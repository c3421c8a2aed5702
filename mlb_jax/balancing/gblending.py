"""G-Blending: gradient blending (Wang, Tran & Feiszli, CVPR 2020), the online estimate
from held-out data (docs/methods.md#g-blending). Defined for M >= 2.

Per step, with heads k in {fused, each modality's unimodal head} (trained heads):

    L = sum_k w_k CE(z_k)

with w from the method state (Eq. 3 with its own weights). The weights start
uniform, 1/(M+1) each (Eq. 3's default weights 1, ..., 1 normalised).

Every `super_epoch` epochs, at the start of epoch e (e mod super_epoch = 0),
`epoch_update` measures each head's mean per-sample CE on the whole train split
(T) and on the validation split (V), in inference mode (never the test split).
At the end of a window [e - super_epoch, e], from its start (T0, V0) and end
(TN, VN):

    G_k = V_k,   O_k = V_k - T_k                       (generalisation, overfitting)
    raw_k = |VN_k - V0_k| / ((VN_k - TN_k) - (V0_k - T0_k))^2
    w_k = raw_k / sum_j raw_j

so the weights of the first window are the initial ones. Guard: when some
delta O is 0, some raw weight is not finite or all raw weights are 0, the
previous weights are kept and `rejected` counts the event.

Pitfalls of BalanceBenchmark's trainer, avoided here: T and V are sums of batch
losses over splits of different sizes (so O mixes scales and w depends on the
dataset sizes; ours: per-sample means), and its validation split is the test set
(ours: the validation split). It also estimates prospectively, training a copy of
the model per branch (other modalities zero-padded) for a whole super-epoch; ours
reads the main model's own past window, as the paper's online variant.
The |.| (as BalanceBenchmark) keeps a positive weight for a head whose
validation loss rose.

Worked example (BalanceBenchmark's table; branches audio, visual, output):
T0 = (100, 120, 90), V0 = (30, 35, 28), TN = (60, 90, 40), VN = (27, 33, 25) give
raw weights (0.0021914, 0.0025510, 0.0013581) and w = (0.35921, 0.41817, 0.22262).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mlb_jax.balancing.method import EpochContext, LossInputs, Method, MethodContext, multiloss_objectives
from mlb_jax.losses import FUSED


class GBlendingState(NamedTuple):
  weights: jax.Array   # float32 [M + 1], heads (fused, *modalities)
  start: jax.Array     # float32 [2, M + 1], (train, val) losses at the current window's start
  started: jax.Array   # bool [], `start` holds a measurement
  updates: jax.Array   # int32 [], weight updates made
  rejected: jax.Array  # int32 [], window ends whose weights were refused (kept the previous ones)


def gblending_weights(t0, v0, tn, vn):
  """(weights, raw, ok) from the per-head losses at a window's start (t0, v0) and end (tn, vn).

  raw_k = |vn_k - v0_k| / ((vn_k - tn_k) - (v0_k - t0_k))^2, weights = raw / sum(raw);
  ok is False (weights then None) when some delta O is 0, a raw weight is not finite or all are 0.
  """
  t0, v0, tn, vn = (np.asarray(x, np.float64) for x in (t0, v0, tn, vn))
  g = vn - v0
  o = (vn - tn) - (v0 - t0)
  with np.errstate(divide='ignore', invalid='ignore'):
    raw = np.abs(g) / (o * o)
  total = float(np.sum(raw)) if np.all(np.isfinite(raw)) else float('nan')
  ok = bool(np.all(o != 0) and np.isfinite(total) and total > 0)
  return (raw / total if ok else None), raw, ok


def gblending_update(state: GBlendingState, train_losses, val_losses) -> GBlendingState:
  """The window rule: new weights from `state.start` to (train_losses, val_losses) [M + 1], then
  those become the next window's start."""
  now = np.stack([np.asarray(train_losses, np.float64), np.asarray(val_losses, np.float64)])
  weights, updates, rejected = state.weights, state.updates, state.rejected
  if bool(state.started):
    start = np.asarray(state.start, np.float64)
    new, _, ok = gblending_weights(start[0], start[1], now[0], now[1])
    if ok:
      weights, updates = jnp.asarray(new, jnp.float32), updates + 1
    else:
      rejected = rejected + 1
  return GBlendingState(weights, jnp.asarray(now, jnp.float32), jnp.ones((), bool), updates, rejected)


def make_gblending(modalities: tuple[str, ...], cfg, ctx: MethodContext) -> Method:
  """G-Blending from `config.balancing.gblending` (`super_epoch`)."""
  super_epoch = int(cfg.gblending.super_epoch)
  if super_epoch < 1:
    raise ValueError(f'balancing.gblending.super_epoch must be >= 1, got {super_epoch}')
  del ctx
  heads = (FUSED, *modalities)
  count = len(heads)

  def init_state(variables):
    del variables
    return GBlendingState(jnp.full((count,), 1.0 / count, jnp.float32), jnp.zeros((2, count), jnp.float32),
                          jnp.zeros((), bool), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def loss(inputs: LossInputs, state: GBlendingState):
    weights = {h: state.weights[i] for i, h in enumerate(heads)}
    objectives, metrics = multiloss_objectives(inputs._replace(loss_weights=weights))
    for i, h in enumerate(heads):
      metrics[f'gblend_w_{h}'] = state.weights[i]
    metrics['gblend_updates'] = state.updates.astype(jnp.float32)
    metrics['gblend_rejected'] = state.rejected.astype(jnp.float32)
    return objectives, state, metrics

  def epoch_update(ectx: EpochContext, train_state):
    if ectx.epoch % super_epoch != 0:
      return train_state
    train = ectx.evaluate(train_state, 'train', heads)
    val = ectx.evaluate(train_state, 'val', heads)
    state = gblending_update(train_state.method_state, [train[h]['loss'] for h in heads],
                             [val[h]['loss'] for h in heads])
    return train_state.replace(method_state=state)

  return Method('gblending', init_state=init_state, loss=loss, epoch_update=epoch_update)
