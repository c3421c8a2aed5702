"""MBSD (Liu et al., 2023) as the BalanceBenchmark toolkit computes it (docs/methods.md#mbsd).

No original code of the method is available; this follows the toolkit's trainer.
The unimodal logits are the fused head's per-modality contributions z_m (so the
fusion must decompose: late_linear or mmcosine). For one pair (a, b) of
modalities and sample i, with p_{m,i} = softmax(z_m)_i[y_i]:

    ps_i = max(p_a, p_b),   pw_i = min(p_a, p_b)
    w_i  = ps_i - pw_i   if argmax z_a = y_i or argmax z_b = y_i,   else 0
    RS_i = mean_c (x_a - x_b)^2_{i,c}           x = logits (M = 2) or softmax (M >= 3)
    KL_i = pw_i (log pw_i - ps_i)               ('toolkit', default)
         = pw_i (log pw_i - log ps_i)           ('log': a true KL term)

    RS = (1/B) sum_i w_i RS_i,   KL = (1/B) sum_i w_i KL_i

With M modalities RS and KL are the means over the M(M-1)/2 pairs (the toolkit's
M = 3 branch; the same rule for any M). The loss, in epochs start <= e <= end:

    L = w_f CE(z) + sum_m w_m CE(z_m) + RS + KL   (+ the probe heads' CE)

and outside the window w_f CE(z) (+ probes) only, as the toolkit. w, ps and pw
are not stop-gradient: the toolkit writes them in place into fresh tensors, so
its gradient flows through them, and so does ours. The default 'toolkit' KL is
PyTorch's `kl_div(ps, pw)` with ps given as a probability where a log-probability
is expected; it is not a divergence (it is negative for the worked example
p_a = 0.7, p_v = 0.2: w = 0.5, KL_i = -0.461888, w_i KL_i = -0.230944).

Stability: every log takes max(p, 1e-12), so a zero probability gives a finite
loss and gradient (pw log pw -> 0 as in torch's kl_div).
"""

import itertools

import jax
import jax.numpy as jnp

from mlb_jax.balancing.method import LossInputs, Method, MethodContext, epoch_window, multiloss_objectives
from mlb_jax.losses import FUSED

LOG_EPS = 1e-12
KL_CHOICES = ('toolkit', 'log')
DISTANCE_CHOICES = ('auto', 'logits', 'probabilities')
FUSIONS = ('late_linear', 'mmcosine')


def _log(p: jax.Array) -> jax.Array:
  return jnp.log(jnp.maximum(p, LOG_EPS))


def true_class_probabilities(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """softmax(logits)[i, y_i]: [B, C], [B] -> [B] (differentiable)."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def pair_weights(p_a: jax.Array, p_b: jax.Array, correct_a: jax.Array, correct_b: jax.Array):
  """(w, ps, pw), each [B]: the confidence gap, the stronger and the weaker true-class probability.

  w_i = ps_i - pw_i when either modality's arg-max is right, else 0. Ties pick the first
  modality for both ps and pw (Python's max/min, as the toolkit), so w = 0 there.
  """
  ps = jnp.where(p_a >= p_b, p_a, p_b)
  pw = jnp.where(p_a <= p_b, p_a, p_b)
  w = jnp.where(correct_a | correct_b, ps - pw, 0.0)
  return w, ps, pw


def pseudo_kl(ps: jax.Array, pw: jax.Array, kind: str = 'toolkit') -> jax.Array:
  """Per-sample KL term: 'toolkit' pw (log pw - ps) (torch `kl_div(ps, pw)`), 'log' pw (log pw - log ps)."""
  if kind not in KL_CHOICES:
    raise ValueError(f"kl must be one of {KL_CHOICES}, got '{kind}'")
  target = ps if kind == 'toolkit' else _log(ps)
  return pw * (_log(pw) - target)


def squared_distance(x_a: jax.Array, x_b: jax.Array) -> jax.Array:
  """RS_i = mean_c (x_a - x_b)^2: [B, C], [B, C] -> [B]."""
  d = x_a.astype(jnp.float32) - x_b.astype(jnp.float32)
  return jnp.mean(d * d, axis=-1)


def resolve_distance(distance: str, num_modalities: int) -> str:
  """'auto': logits for 2 modalities, probabilities for 3 or more (the toolkit's two branches)."""
  if distance not in DISTANCE_CHOICES:
    raise ValueError(f"balancing.mbsd.distance must be one of {DISTANCE_CHOICES}, got '{distance}'")
  if distance == 'auto':
    return 'logits' if num_modalities == 2 else 'probabilities'
  return distance


def mbsd_terms(unimodal, labels: jax.Array, *, distance: str = 'auto', kl: str = 'toolkit') -> dict:
  """The weighted distance and KL terms for a list of M >= 2 unimodal logits [B, C].

  Returns {'rs', 'kl', 'weight'}: RS and KL (means over the pairs of (1/B) sum_i w_i term_i),
  and the mean of w over pairs and samples (a diagnostic).
  """
  unimodal = [z.astype(jnp.float32) for z in unimodal]
  if len(unimodal) < 2:
    raise ValueError(f'MBSD needs at least 2 modalities, got {len(unimodal)}')
  space = resolve_distance(distance, len(unimodal))
  probs = [true_class_probabilities(z, labels) for z in unimodal]
  correct = [jnp.argmax(z, axis=-1) == labels for z in unimodal]
  points = unimodal if space == 'logits' else [jax.nn.softmax(z, axis=-1) for z in unimodal]
  rs, kls, weights = [], [], []
  for a, b in itertools.combinations(range(len(unimodal)), 2):
    w, ps, pw = pair_weights(probs[a], probs[b], correct[a], correct[b])
    rs.append(jnp.mean(w * squared_distance(points[a], points[b])))
    kls.append(jnp.mean(w * pseudo_kl(ps, pw, kl)))
    weights.append(jnp.mean(w))
  mean = lambda xs: sum(xs) / len(xs)
  return {'rs': mean(rs), 'kl': mean(kls), 'weight': mean(weights)}


def make_mbsd(modalities: tuple[str, ...], cfg, ctx: MethodContext) -> Method:
  """MBSD from `config.balancing.mbsd` (`start_epoch`, `end_epoch`, `kl`, `distance`)."""
  mbsd = cfg.mbsd
  if mbsd.kl not in KL_CHOICES:
    raise ValueError(f"balancing.mbsd.kl must be one of {KL_CHOICES}, got '{mbsd.kl}'")
  resolve_distance(mbsd.distance, len(modalities))
  if mbsd.end_epoch < mbsd.start_epoch:
    raise ValueError(f'balancing.mbsd.end_epoch ({mbsd.end_epoch}) < start_epoch ({mbsd.start_epoch})')

  def loss(inputs: LossInputs, state):
    out, labels = inputs.output, inputs.labels
    contributions = {m: out.contributions[m] for m in modalities}
    active = epoch_window(inputs.step, mbsd.start_epoch, mbsd.end_epoch, ctx).astype(jnp.float32)
    fused, metrics = multiloss_objectives(inputs, {FUSED: out.logits[FUSED]})
    probes, probe_metrics = multiloss_objectives(inputs, {m: out.logits[m] for m in modalities})
    unimodal, unimodal_metrics = multiloss_objectives(inputs, contributions)
    terms = mbsd_terms([contributions[m] for m in modalities], labels, distance=mbsd.distance, kl=mbsd.kl)
    objectives = {'fused': fused['multiloss'], 'probes': probes['multiloss'],
                  'contributions': active * unimodal['multiloss'],
                  'mbsd_rs': active * terms['rs'], 'mbsd_kl': active * terms['kl']}
    metrics.update(probe_metrics)
    metrics.update({f'loss_contribution_{k[len("loss_"):]}': v for k, v in unimodal_metrics.items()})
    metrics.update({'mbsd_rs': terms['rs'], 'mbsd_kl': terms['kl'], 'mbsd_weight': terms['weight'],
                    'mbsd_active': active})
    return objectives, state, metrics

  return Method('mbsd', loss=loss, unimodal_heads='probe', unimodal_source='contributions', fusions=FUSIONS)
