"""OPM: on-the-fly prediction modulation (Wei, Hu, Du & Wen, TPAMI 2024), as the authors'
code runs it (docs/methods.md#opm), with BalanceBenchmark's differences listed below.

The dominant modality is weakened in the forward pass: its pooled features are
randomly dropped, with a probability that grows with its confidence lead.

Scores. From the fused head's per-modality contributions z_m (late_linear or
mmcosine, which decompose; the bias is split equally), stop-gradient:

    s_m     = sum_b softmax(z_m)[b, y_b]                    (sum over the batch)
    ratio_m = tanh(relu(s_m / mean_{n != m} s_n - 1))       (M = 2: s_m / s_other, as the authors)
    q_m     = clip(q_base (1 + lam ratio_m), 0, 1)  if ratio_m > 0,  else 0

For M > 2 the authors' code has no rule; ours compares with the mean of the others
(BalanceBenchmark's 3-modality branch divides by their sum instead). A modality
can only be dropped when its score exceeds the mean of the others, and not every
modality can: so at least one has q = 0 and, with the masks below, every sample
keeps at least that one.

Drop. With probability `p_exe` per step (one Bernoulli draw from the step's rng),
in epochs e > `warmup_epochs`:

    keep_{b,m} ~ Bernoulli(1 - q_m)                  (per sample and modality)
    theta      = sum_m d_m q_m / sum_m d_m            (d_m the feature widths)
    h_m       <- keep_m * h_m / (1 - theta)

then the fused logits are recomputed from the masked features (`model.fuse`), and
the fused loss is the CE of those logits over the samples that keep at least one
modality (sum of the kept samples' CE / their count). The rescale preserves the
expectation of the concatenated feature vector (its expected kept share is
1 - theta); a single modality's expectation is preserved only when every q_m is
equal. The authors' custom autograd multiplies the backward pass by the same
1/(1 - theta): that is the plain derivative, theta being stop-gradient.
Otherwise (no draw, warm-up, evaluation) the loss is CE of the fused logits.
The unimodal heads are stop-gradient probes (their CE is added, training the
heads only).

No sample kept (only possible with externally chosen q; the authors skip the
step): the fused term and the probes' terms are 0, so the gradient is 0 and
finite. (The optimizer's momentum and weight decay still act, unlike a skipped step.)

BalanceBenchmark's trainer differs: `q_base` 0.4 (the authors' config default; their
training script passes 0.5, our default), `alpha` in place of lam, no warm-up
(drop from epoch 0: `warmup_epochs = -1` here), 1e-5 added to the score ratio's and
the rescale's denominators, the 3-modality ratio against the sum of the others, and
scores from non-detached contributions (only q is used, so this does not matter).

Worked example (s_a = 20, s_v = 10, d = (512, 512)): ratio_a = tanh(1) = 0.761593,
ratio_v = 0; q_base 0.5, lam 0.5: q_a = 0.690398, theta = 0.345199, scale 1.527182;
q_base 0.4: q_a = 0.552319, theta = 0.276159, scale 1.381520 (BalanceBenchmark's
1/(1 - theta + 1e-5) = 1.381500). tanh(1) = 0.7615942.
"""

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from mlb_jax.balancing.method import LossInputs, Method, MethodContext, epochs_to_steps, multiloss_objectives
from mlb_jax.losses import FUSED

FUSIONS = ('late_linear', 'mmcosine')
TINY = 1e-12


def sum_scores(contributions, labels: jax.Array) -> jax.Array:
  """[M] s_m = sum_b softmax(z_m)[b, y_b] of a list of [B, C] logits, stop-gradient."""
  out = []
  for z in contributions:
    p = jax.nn.softmax(jax.lax.stop_gradient(z).astype(jnp.float32), axis=-1)
    out.append(jnp.sum(jnp.take_along_axis(p, labels[:, None].astype(jnp.int32), axis=-1)))
  return jnp.stack(out)


def drop_ratios(scores: jax.Array) -> jax.Array:
  """[M] tanh(relu(s_m / mean_{n != m} s_n - 1)) (M = 2: s_m / s_other)."""
  scores = jnp.asarray(scores, jnp.float32)
  m = scores.shape[0]
  others = (jnp.sum(scores) - scores) / (m - 1)
  return jnp.tanh(jax.nn.relu(scores / jnp.maximum(others, TINY) - 1.0))


def drop_probabilities(ratios: jax.Array, q_base: float, lam: float) -> jax.Array:
  """[M] q_m = clip(q_base (1 + lam ratio_m), 0, 1) where ratio_m > 0, else 0."""
  q = jnp.where(ratios > 0, q_base * (1.0 + lam * ratios), 0.0)
  return jnp.clip(q, 0.0, 1.0)


def drop_rate(q: jax.Array, dims) -> jax.Array:
  """theta = sum_m d_m q_m / sum_m d_m: the expected dropped share of the concatenated features."""
  d = jnp.asarray(dims, jnp.float32)
  return jnp.sum(d * q) / jnp.sum(d)


def rescale(theta: jax.Array, eps: float = 0.0) -> jax.Array:
  """1 / (1 - theta + eps); 1 where theta = 1 and eps = 0 (then every feature is dropped anyway).
  The authors use eps = 0, BalanceBenchmark 1e-5."""
  denominator = 1.0 - theta + eps
  return 1.0 / jnp.where(denominator > 0, denominator, 1.0)


def drop_features(features: Mapping[str, jax.Array], modalities, q: jax.Array, rng: jax.Array, execute):
  """The masked, rescaled features and the per-sample flags.

  Args:
    features: {m: [B, D_m]}.
    modalities: their order (the order of `q`).
    q: [M] drop probabilities.
    rng: key of the per-sample masks.
    execute: bool []: drop at all (else every feature is kept, unscaled).

  Returns:
    (features {m: [B, D_m]}, keep [B, M] float32, any_kept [B] bool, theta []).
  """
  batch = features[modalities[0]].shape[0]
  keys = jax.random.split(rng, len(modalities))
  keep = jnp.stack([jax.random.bernoulli(k, 1.0 - q[i], (batch,)) for i, k in enumerate(keys)], axis=1)
  keep = jnp.where(execute, keep, True)
  theta = drop_rate(q, [features[m].shape[-1] for m in modalities])
  scale = jnp.where(execute, rescale(theta), 1.0)
  out = {m: features[m] * (keep[:, i, None].astype(features[m].dtype) * scale.astype(features[m].dtype))
         for i, m in enumerate(modalities)}
  return out, keep.astype(jnp.float32), jnp.any(keep, axis=1), jnp.where(execute, theta, 0.0)


def kept_mean(values: jax.Array, kept: jax.Array) -> jax.Array:
  """Mean of `values` [B] over the samples with `kept` [B]; 0 (and a zero gradient) when none is kept."""
  w = kept.astype(jnp.float32)
  return jnp.sum(w * values) / jnp.maximum(jnp.sum(w), 1.0)


def refused_objectives(inputs: LossInputs, modalities, q: jax.Array, rng: jax.Array, execute):
  """The OPM objectives for given drop probabilities `q` [M] and drop flag `execute`.

  Returns (objectives {'fused', 'probes'}, metrics).
  """
  out, labels = inputs.output, inputs.labels
  mask_rng, fuse_rng = jax.random.split(rng)
  feats, keep, any_kept, theta = drop_features(out.features, modalities, q, mask_rng, execute)
  logits = inputs.model.apply(inputs.variables, feats, train=True, method='fuse', rngs={'dropout': fuse_rng})
  per_sample = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  fused = kept_mean(per_sample, any_kept)
  some = jnp.any(any_kept).astype(jnp.float32)
  probes, metrics = multiloss_objectives(inputs, {m: out.logits[m] for m in modalities})
  objectives = {'fused': inputs.loss_weights[FUSED] * fused, 'probes': some * probes['multiloss']}
  metrics['loss_refused'] = fused
  metrics['opm_theta'] = theta
  metrics['opm_kept_samples'] = jnp.mean(any_kept.astype(jnp.float32))
  for i, m in enumerate(modalities):
    metrics[f'opm_kept_{m}'] = jnp.mean(keep[:, i])
  return objectives, metrics


def make_opm(modalities: tuple[str, ...], cfg, ctx: MethodContext) -> Method:
  """OPM from `config.balancing.opm` (`q_base`, `lam`, `p_exe`, `warmup_epochs`)."""
  opm = cfg.opm
  q_base, lam, p_exe, warmup = float(opm.q_base), float(opm.lam), float(opm.p_exe), int(opm.warmup_epochs)
  if not 0.0 <= q_base <= 1.0:
    raise ValueError(f'balancing.opm.q_base must be in [0, 1], got {q_base}')
  if lam < 0.0:
    raise ValueError(f'balancing.opm.lam must be >= 0, got {lam}')
  if not 0.0 <= p_exe <= 1.0:
    raise ValueError(f'balancing.opm.p_exe must be in [0, 1], got {p_exe}')
  if warmup < -1:
    raise ValueError(f'balancing.opm.warmup_epochs must be >= -1 (-1: drop from epoch 0), got {warmup}')
  first_step = epochs_to_steps(warmup + 1, ctx)   # the first step of epoch warmup + 1

  def loss(inputs: LossInputs, state):
    out, labels = inputs.output, inputs.labels
    scores = sum_scores([out.contributions[m] for m in modalities], labels)
    ratios = drop_ratios(scores)
    q = drop_probabilities(ratios, q_base, lam)
    exe_rng, rng = jax.random.split(inputs.rng)
    active = inputs.step >= first_step
    execute = active & jax.random.bernoulli(exe_rng, p_exe)
    objectives, metrics = refused_objectives(inputs, modalities, q, rng, execute)
    metrics['opm_execute'] = execute.astype(jnp.float32)
    metrics['opm_active'] = active.astype(jnp.float32)
    for i, m in enumerate(modalities):
      metrics[f'opm_score_{m}'] = scores[i]
      metrics[f'opm_ratio_{m}'] = ratios[i]
      metrics[f'opm_q_{m}'] = q[i]
    return objectives, state, metrics

  return Method('opm', loss=loss, unimodal_heads='probe', unimodal_source='contributions', fusions=FUSIONS)
