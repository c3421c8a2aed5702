"""CML, calibrating multimodal learning (Ma et al., ICML 2023), as the BalanceBenchmark
toolkit computes it (docs/methods.md#cml).

No original code of the method is available; this follows the toolkit's trainer.
Removing modalities should not raise the prediction's confidence. The fused head
must decompose into per-modality contributions c_m (late_linear or mmcosine),
each holding an equal share b/M of the fusion bias.

Order. Every epoch e has a permutation of the modalities,

    order_e = jax.random.permutation(fold_in(PRNGKey(order_seed), e), M),  e = step // steps_per_epoch,

a pure function of the step (deterministic, resumable, no host state). Modalities
are removed from the end of the order, one after the other, M - 1 times:

    z_0 = z,   z_k = z_{k-1} - c_{r_k} + b/M,   r_k = order_e[M - k]       (k = 1 .. M-1)

so the full bias is always kept (M = 2: z_1 = c_other + b). b/M is the constant
part of a contribution, computed as fuse(0)/M (b for late_linear, 0 for mmcosine).

With conf(z) = max_c softmax(z) per sample, in epochs start <= e <= end:

    L = [w_f CE(z_0) + sum_k CE(z_k)] / M + lam * sum_k max(0, sum_i (conf(z_k)_i - conf(z_{k-1})_i))

(+ the probe heads' CE), and w_f CE(z) (+ probes) outside the window. As in the
toolkit the hinge is taken on the batch sum, so a rise on one sample can be
cancelled by falls on others (conf = (0.6, 0.5), conf_p = (0.7, 0.3): penalty 0),
and the toolkit's "correct -> wrong" flip mask, which it computes and ignores,
is only reported (`cml_flips`). Gradients flow through both confidences.
"""

import jax
import jax.numpy as jnp

from mlb_jax.balancing.method import LossInputs, Method, MethodContext, epoch_window, multiloss_objectives
from mlb_jax.losses import FUSED, cross_entropy

FUSIONS = ('late_linear', 'mmcosine')


def confidence(logits: jax.Array) -> jax.Array:
  """max_c softmax(logits): [B, C] -> [B] (differentiable)."""
  return jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


def confidence_hinge(conf: jax.Array, conf_removed: jax.Array) -> jax.Array:
  """max(0, sum_i (conf_removed_i - conf_i)): the toolkit's batch-sum hinge."""
  rise = jnp.sum(conf_removed - conf)
  return jnp.where(rise > 0, rise, 0.0)


def removal_order(step: jax.Array, key: jax.Array, steps_per_epoch: int, num_modalities: int) -> jax.Array:
  """int32 [M], the epoch's permutation of modality indices; the last is removed first."""
  epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_modalities).astype(jnp.int32)


def removed_logits(fused: jax.Array, contributions: jax.Array, bias_share: jax.Array, order: jax.Array):
  """[z_1, ..., z_{M-1}], the fused logits after each sequential removal.

  Args:
    fused: [B, C] z = sum_m c_m.
    contributions: [M, B, C] c_m in modality order.
    bias_share: [C] or [B, C], b / M.
    order: int32 [M]; order[M - k] is removed at removal k.
  """
  num = contributions.shape[0]
  out, z = [], fused
  for k in range(1, num):
    z = z - jnp.take(contributions, order[num - k], axis=0) + bias_share
    out.append(z)
  return out


def cml_terms(fused: jax.Array, removed, labels: jax.Array) -> dict:
  """{'ce_fused', 'ce_removed' [M-1], 'hinges' [M-1], 'flips' []} for z_0 = fused and z_k = removed[k-1]."""
  chain = [fused, *removed]
  conf = [confidence(z) for z in chain]
  correct = [jnp.argmax(z, axis=-1) == labels for z in chain]
  hinges = jnp.stack([confidence_hinge(conf[k - 1], conf[k]) for k in range(1, len(chain))])
  ces = jnp.stack([cross_entropy(z, labels) for z in removed])
  flips = sum(jnp.sum(correct[k - 1] & ~correct[k]) for k in range(1, len(chain))).astype(jnp.float32)
  return {'ce_fused': cross_entropy(fused, labels), 'ce_removed': ces, 'hinges': hinges, 'flips': flips}


def make_cml(modalities: tuple[str, ...], cfg, ctx: MethodContext) -> Method:
  """CML from `config.balancing.cml` (`lam`, `start_epoch`, `end_epoch`, `order_seed`)."""
  cml = cfg.cml
  if not cml.lam >= 0:
    raise ValueError(f'balancing.cml.lam must be >= 0, got {cml.lam}')
  if cml.end_epoch < cml.start_epoch:
    raise ValueError(f'balancing.cml.end_epoch ({cml.end_epoch}) < start_epoch ({cml.start_epoch})')
  num, lam, order_seed = len(modalities), float(cml.lam), int(cml.order_seed)

  def loss(inputs: LossInputs, state):
    out, labels = inputs.output, inputs.labels
    z = out.logits[FUSED]
    contributions = jnp.stack([out.contributions[m] for m in modalities])
    zeros = {m: jnp.zeros((1, f.shape[-1]), f.dtype) for m, f in out.features.items()}
    bias_share = inputs.model.apply(inputs.variables, zeros, train=False, method='fuse')[0] / num
    order = removal_order(inputs.step, jax.random.PRNGKey(order_seed), ctx.steps_per_epoch, num)
    terms = cml_terms(z, removed_logits(z, contributions, bias_share, order), labels)
    active = epoch_window(inputs.step, cml.start_epoch, cml.end_epoch, ctx).astype(jnp.float32)
    fused, metrics = multiloss_objectives(inputs, {FUSED: z})
    probes, probe_metrics = multiloss_objectives(inputs, {m: out.logits[m] for m in modalities})
    objectives = {'fused': jnp.where(active > 0, 1.0 / num, 1.0) * fused['multiloss'],
                  'probes': probes['multiloss'],
                  'cml_removed': active * jnp.sum(terms['ce_removed']) / num,
                  'cml_confidence': active * lam * jnp.sum(terms['hinges'])}
    metrics.update(probe_metrics)
    for k in range(num - 1):
      metrics[f'loss_removed_{k + 1}'] = terms['ce_removed'][k]
      metrics[f'cml_hinge_{k + 1}'] = terms['hinges'][k]
      metrics[f'cml_removed_{k + 1}'] = order[num - 1 - k].astype(jnp.float32)
    metrics.update({'cml_hinge': jnp.sum(terms['hinges']), 'cml_flips': terms['flips'], 'cml_active': active})
    return objectives, state, metrics

  return Method('cml', loss=loss, unimodal_heads='probe', unimodal_source='contributions', fusions=FUSIONS)
