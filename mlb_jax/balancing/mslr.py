"""MSLR: modality-specific learning rates (Yao & Mihalcea, ACL 2022), as re-implemented
by the AGM code and used by the MLB authors (docs/methods.md#mslr).

Per epoch e >= 1, from the validation accuracy acc_i of each modality's share of
the fused logits at the end of epoch e-1:

    ratio_i = acc_i / mean(previous K accuracies of i)   if e > K, else 1
    k_i     = ratio_i * ilr_i                             (every step of epoch e)

then acc_i joins the memory. `ilr` is the initial per-modality rate (authors:
0.9 audio, 1.1 video) and K = `keep_epochs` (authors: 5). Works for M >= 2.
At every epoch start `epoch_update` evaluates the validation split (through the
loop's `EpochContext`); the jitted step only reads the resulting ratios.
"""

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mlb_jax.balancing.method import EpochContext, Method, StepInputs, score_metrics
from mlb_jax.balancing.scores import modality_scores


class MSLRState(NamedTuple):
  memory: jax.Array   # float32 [K, M], the last K validation accuracies (oldest first)
  stored: jax.Array   # int32 [], how many accuracies were appended so far
  ratios: jax.Array   # float32 [M], ratio_i for the current epoch


def mslr_epoch_update(state: MSLRState, accuracy: jax.Array, epoch: int) -> MSLRState:
  """The start-of-epoch rule: new ratios from `accuracy` [M], then remember it.

  Args:
    state: the current `MSLRState`.
    accuracy: [M] validation accuracy of each modality after epoch `epoch - 1`.
    epoch: the 0-based epoch about to start; epoch 0 changes nothing.
  """
  if epoch < 1:
    return state
  accuracy = jnp.asarray(accuracy, jnp.float32)
  keep = state.memory.shape[0]
  if epoch > keep:
    mean = jnp.mean(state.memory, axis=0)
    ratios = jnp.where(mean > 0, accuracy / jnp.where(mean > 0, mean, 1.0), 1.0)
  else:
    ratios = jnp.ones_like(accuracy)
  memory = jnp.concatenate([state.memory[1:], accuracy[None]], axis=0)
  return MSLRState(memory, state.stored + 1, ratios)


def make_mslr(modalities: tuple[str, ...], cfg, ctx) -> Method:
  """MSLR from `config.balancing.mslr`: initial rates `initial` ({modality: ilr}, missing = 1.0), window K."""
  initial, keep_epochs = dict(cfg.mslr.initial), cfg.mslr.keep_epochs
  del ctx
  unknown = set(initial) - set(modalities)
  if unknown:
    raise ValueError(f'balancing.mslr.initial names unknown modalities {sorted(unknown)}; '
                     f'modalities are {list(modalities)}')
  if keep_epochs < 1:
    raise ValueError(f'balancing.mslr.keep_epochs must be >= 1, got {keep_epochs}')
  ilr = jnp.asarray([float(initial[m]) if m in initial else 1.0 for m in modalities], jnp.float32)
  m_count = len(modalities)
  heads = [f'contribution_{m}' for m in modalities]

  def init_state(variables):
    del variables
    return MSLRState(jnp.zeros((keep_epochs, m_count), jnp.float32), jnp.zeros((), jnp.int32),
                     jnp.ones((m_count,), jnp.float32))

  def scales(inputs: StepInputs, state: MSLRState):
    k = state.ratios * ilr
    k = {m: k[i] for i, m in enumerate(modalities)}
    s = modality_scores(inputs.logits, inputs.labels, modalities, 'probability')
    return k, state, score_metrics(modalities, s, state.ratios, k)

  def epoch_update(ctx: EpochContext, train_state):
    if ctx.epoch < 1:
      return train_state
    val = ctx.evaluate(train_state, 'val', heads)
    accuracy = np.array([val[h]['accuracy'] for h in heads], np.float32)
    return train_state.replace(method_state=mslr_epoch_update(train_state.method_state, accuracy, ctx.epoch))

  return Method('mslr', init_state=init_state, scales=scales, epoch_update=epoch_update,
                unimodal_heads='probe', unimodal_source='contributions')
