"""The multi-loss objective (Kontras et al., BMVC 2024, Eq. 3).

    L = w_fused * CE(z_fused, y) + sum_i w_i * CE(z_i, y)

with mean-reduced cross-entropy and no label smoothing, as the authors' code
(docs/methods.md#common-training-step). Weights come from `config.loss`.
"""

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

FUSED = 'fused'


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy. logits [B, C] (any float dtype), labels [B] int."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels))


def multi_loss(logits: Mapping[str, jax.Array], labels: jax.Array,
               weights: Mapping[str, float]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 3: the weighted sum of every head's cross-entropy.

  Args:
    logits: {'fused': [B, C], <modality>: [B, C], ...}.
    labels: [B] class ids.
    weights: {head: weight} for every key of `logits`.

  Returns:
    (total loss, {'loss_<head>': unweighted CE of each head}).
  """
  missing = set(logits) - set(weights)
  if missing:
    raise ValueError(f'no loss weight for heads {sorted(missing)}; weights given for {sorted(weights)}')
  per_head = {head: cross_entropy(z, labels) for head, z in logits.items()}
  total = sum(weights[head] * per_head[head] for head in logits)
  return total, {f'loss_{head}': v for head, v in per_head.items()}


def loss_weights(loss_config, modalities: tuple[str, ...]) -> dict[str, float]:
  """{head: weight} from `config.loss` (fused, unimodal, per_modality overrides)."""
  unknown = set(loss_config.per_modality) - set(modalities)
  if unknown:
    raise ValueError(f'config.loss.per_modality names unknown modalities {sorted(unknown)}; '
                     f'modalities are {list(modalities)}')
  weights = {FUSED: float(loss_config.fused)}
  for m in modalities:
    weights[m] = float(loss_config.per_modality[m]) if m in loss_config.per_modality else float(loss_config.unimodal)
  return weights
