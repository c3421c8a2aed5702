"""Per-modality performance scores s_i (Kontras et al., BMVC 2024, Eq. 4).

Two readings of Eq. 4 are provided:

* `true_class_probability`: the batch mean of the softmax probability of the
  true class. This is what the authors' code computes (docs/methods.md#mlb-score) and the
  default (`config.balancing.score = 'probability'`).
* `correct_count`: the literal Eq. 4 reading, the number of samples whose arg-max
  prediction is the true class (`config.balancing.score = 'correct'`).

Both are used only through ratios (Eq. 5), so a mean and a sum give the same r_i.
Inputs are expected to be `stop_gradient`-ed logits; the functions themselves
are differentiable but the balancing never differentiates through them.
"""

import jax
import jax.numpy as jnp


def true_class_probability(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Batch mean of softmax(logits)[y].

  Args:
    logits: [B, C] unnormalised scores of one unimodal head.
    labels: [B] integer class ids in [0, C).

  Returns:
    A float32 scalar in [0, 1].
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  true = jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=-1)
  return jnp.mean(true)


def correct_count(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Number of samples whose arg-max class equals the label (Eq. 4 literally).

  Args:
    logits: [B, C].
    labels: [B] integer class ids.

  Returns:
    A float32 scalar in [0, B].
  """
  return jnp.sum(jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


SCORES = {
    'probability': true_class_probability,
    'correct': correct_count,
}


def modality_scores(logits, labels, modalities: tuple[str, ...], score: str) -> jax.Array:
  """[M] scores s_i in modality order.

  Args:
    logits: {modality: [B, C]} unimodal logits.
    labels: [B] class ids.
    modalities: order of the output.
    score: a key of `SCORES`.
  """
  if score not in SCORES:
    raise ValueError(f"balancing.score must be one of {sorted(SCORES)}, got '{score}'")
  fn = SCORES[score]
  return jnp.stack([fn(logits[m], labels) for m in modalities])
