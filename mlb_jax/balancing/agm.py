"""AGM: adaptive gradient modulation (Li et al., ICCV 2023), as the MLB authors run it
(docs/methods.md#agm). Defined for exactly two modalities (a, v).

Forward (inside the differentiated loss): besides the train-mode pass giving
features f_a, f_v and fused logits z, two inference-mode passes fuse a zeroed
modality with the other one:

    z_0v = F(enc_a(0), g_v),   z_a0 = F(g_a, enc_v(0))

With `reencode='both'` (the AGM paper and code, default) g_m is the
inference-mode re-encoding of the real input: both encoders run in inference
mode for every masked pass. With `reencode='zeroed'` (the MLB authors'
shortcut, docs/methods.md#agm) g_m = f_m, the train-mode features.

    z_a  = (z - z_0v + z_a0) / 2,   z_v = (z - z_a0 + z_0v) / 2

Coefficients (from stop-gradient z_a, z_v, before this step's backward):

    l_i      = mean_b -log max(softmax(z_i)[b, y_b], 1e-8)
    r_a      = exp(l_v - l_a),        r_v = 1 / r_a
    rbar_a   = exp(L_v - L_a),        rbar_v = 1 / rbar_a   (running means L, before update)
    k_i      = exp(alpha * min(rbar_i - r_i, 10))
    L       <- L t/(t+1) + l/(t+1)                           (t = 0-based step)

The loss is CE(k_a * z_a + k_v * z_v) in the backward only: the fused logits
keep the value z_a + z_v = z, while the gradient reaching z_a (z_v) is scaled by
k_a (k_v). Cost per step: 'both' adds 4 encoder passes (one per modality and
masked pass) and 2 fusion passes; 'zeroed' adds 2 encoder and 2 fusion passes.

Gradient clipping (authors' `clip_grad: "AGM"`): when a gradient of the fusion
weights leaves [-1, 1], the gradients are clipped to global norm 1 (`agm_clip`;
the probe heads are outside the norm and the clip, as they get no gradient in
the authors' code). The Transformer fusion needs token sequences that the masked
passes do not produce: AGM refuses it before training.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mlb_jax.balancing.method import GradInputs, LossInputs, Method, multiloss_objectives, score_metrics
from mlb_jax.balancing.scores import true_class_probability
from mlb_jax.losses import FUSED


class AGMState(NamedTuple):
  mean_loss: jax.Array  # float32 [2], running means L_a, L_v over all past steps


@jax.custom_vjp
def scale_gradient(x: jax.Array, scale: jax.Array) -> jax.Array:
  """Identity in the forward pass; multiplies the incoming gradient by `scale`."""
  del scale
  return x


def _scale_gradient_fwd(x, scale):
  return x, scale


def _scale_gradient_bwd(scale, g):
  return g * scale.astype(g.dtype), jnp.zeros_like(scale)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def agm_contributions(z, z_zero_a, z_zero_v):
  """(z_a, z_v) from the full logits z, z_0v = F(0, f_v) and z_a0 = F(f_a, 0)."""
  return 0.5 * (z - z_zero_a + z_zero_v), 0.5 * (z - z_zero_v + z_zero_a)


def contribution_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """mean_b -log max(softmax(logits)[b, y_b], 1e-8)."""
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  true = jnp.take_along_axis(p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return jnp.mean(-jnp.log(jnp.maximum(true, 1e-8)))


def agm_coefficients(losses: jax.Array, mean_loss: jax.Array, step: jax.Array, *, alpha: float):
  """k [2], ratios r [2] and the updated running means, from l = (l_a, l_v)."""
  r_a = jnp.exp(losses[1] - losses[0])
  rbar_a = jnp.exp(mean_loss[1] - mean_loss[0])
  ratios = jnp.stack([r_a, 1.0 / r_a])
  running = jnp.stack([rbar_a, 1.0 / rbar_a])
  k = jnp.exp(alpha * jnp.minimum(running - ratios, 10.0))
  t = step.astype(jnp.float32)
  new_mean = mean_loss * t / (t + 1.0) + losses / (t + 1.0)
  return k, ratios, new_mean


def agm_clip(grads, probe_heads: tuple[str, ...] = (), fusion_key: str = 'fusion'):
  """Clip to global norm 1 when a fusion weight's gradient leaves [-1, 1] (the authors' `clip_grad: "AGM"`).

  The trigger looks at the fusion head's weight matrices (leaves named 'kernel...'), not its biases;
  the norm and the clip cover every gradient except those of the stop-gradient probe heads
  `params[m]['head']` for m in `probe_heads` (in the authors' code those heads get no gradient).
  """
  kernels = [g for path, g in jax.tree_util.tree_leaves_with_path(grads[fusion_key])
             if str(getattr(path[-1], 'key', '')).startswith('kernel')]  # 'kernel', MMCosine's 'kernel_<m>'
  trigger = jnp.any(jnp.stack([jnp.max(jnp.abs(g)) for g in kernels]) > 1.0)
  clipped = {k: ({**v, 'head': None} if k in probe_heads else v) for k, v in grads.items()}
  norm = optax.tree.norm(clipped)
  factor = jnp.where(trigger, jnp.minimum(1.0, 1.0 / (norm + 1e-6)), 1.0)

  def scale(key, sub):
    if key in probe_heads:
      return {**{k: jax.tree.map(lambda g: g * factor.astype(g.dtype), v) for k, v in sub.items() if k != 'head'},
              'head': sub['head']}
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), sub)

  return {k: scale(k, v) for k, v in grads.items()}, {'clip_factor': factor}


REENCODE_CHOICES = ('both', 'zeroed')


def extra_forward_passes(reencode: str) -> dict[str, int]:
  """Extra encoder and fusion passes per training step."""
  return {'encoder': 4 if reencode == 'both' else 2, 'fusion': 2}


# Fusions AGM can re-run on masked features: every fusion that needs only the pooled features.
AGM_FUSIONS = ('late_linear', 'mid_mlp', 'mmcosine', 'film', 'gated')


def make_agm(modalities: tuple[str, ...], cfg, ctx) -> Method:
  """AGM from `config.balancing.agm` (`alpha`, `clip`, `reencode`)."""
  del ctx
  alpha, clip, reencode = cfg.agm.alpha, cfg.agm.clip, cfg.agm.reencode
  if reencode not in REENCODE_CHOICES:
    raise ValueError(f"balancing.agm.reencode must be one of {REENCODE_CHOICES}, got '{reencode}'")
  if not alpha > 0:
    raise ValueError(f'balancing.agm.alpha must be > 0, got {alpha}')

  def loss(inputs: LossInputs, state: AGMState):
    a, v = modalities  # two modalities: the build refuses others (max_modalities) before any step
    model, variables, features = inputs.model, inputs.variables, inputs.output.features

    def encode(m, zeroed):
      x = jnp.zeros_like(inputs.batch[m]) if zeroed else inputs.batch[m]
      return model.apply(variables, {m: x}, train=False, only=(m,), method='encode')[m]

    def fuse(feats):
      return model.apply(variables, feats, train=False, method='fuse')

    other = {m: encode(m, False) if reencode == 'both' else features[m] for m in modalities}
    z = inputs.output.logits[FUSED]
    z_zero_a = fuse({a: encode(a, True), v: other[v]})
    z_zero_v = fuse({a: other[a], v: encode(v, True)})
    z_a, z_v = agm_contributions(z, z_zero_a, z_zero_v)
    sg = jax.lax.stop_gradient
    losses = jnp.stack([contribution_loss(sg(z_a), inputs.labels), contribution_loss(sg(z_v), inputs.labels)])
    k, ratios, mean_loss = agm_coefficients(losses, state.mean_loss, inputs.step, alpha=alpha)
    combined = scale_gradient(z_a, k[0]) + scale_gradient(z_v, k[1])
    scores = jnp.stack([true_class_probability(sg(z_a), inputs.labels),
                        true_class_probability(sg(z_v), inputs.labels)])
    objectives, metrics = multiloss_objectives(inputs, {**inputs.output.logits, FUSED: combined})
    metrics.update(score_metrics(modalities, scores, ratios, {a: k[0], v: k[1]}))
    return objectives, AGMState(mean_loss), metrics

  def gradients(grads, inputs: GradInputs, state):
    del inputs
    grads, metrics = agm_clip(grads, probe_heads=modalities)
    return grads, state, metrics

  return Method('agm', init_state=lambda variables: AGMState(jnp.zeros((2,), jnp.float32)), loss=loss,
                gradients=gradients if clip else None, unimodal_heads='probe', fusions=AGM_FUSIONS,
                max_modalities=2)
