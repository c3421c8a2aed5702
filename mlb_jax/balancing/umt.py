"""UMT, the uni-modal teacher (Du et al., ICML 2023), docs/methods.md#umt.

Two parts, each an ordinary run of this library:

1. Teachers. One unimodal model per modality m, trained first as a prerequisite
   run (`Method.prerequisites`) in `<workdir>/prerequisites/teacher_<m>/`: the
   same config with `method = 'multiloss'` and loss weight 1 on head m only (the
   other encoders get no gradient), `train.select_head = m`, for
   `balancing.umt.teacher_epochs` epochs. Its best checkpoint is chosen on
   validation accuracy of head m, like any run; a finished teacher is reused.
2. The multimodal model, trained from its own initialisation with

       L = w_f CE(z, y) + lam * sum_m MSE(h_m^T, h_m)      (+ the probe heads' CE)

   in epochs start_epoch <= e <= end_epoch (outside: w_f CE only), where h_m is
   encoder m's pooled feature [B, D_m] and h_m^T the teacher's, computed in
   inference mode (BatchNorm running statistics, no dropout) and stop-gradient;
   MSE is the mean over batch and feature dimensions. lam = 10 (BalanceBenchmark's
   `scaling`).

The teachers' encoder variables are part of the method state (`adopt` copies
them in before the first step), so a resumed run continues with the same
teachers and a checkpoint is self-contained.

BalanceBenchmark differs: its teachers run with train-mode BatchNorm (batch
statistics, running statistics updated by the student's batches), are found as
the newest run directory by name, and are wrapped for two GPUs.

Worked example: h^T = (1, 2), h = (0, 0): MSE = 2.5, lam * MSE = 25.
"""

from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from mlb_jax.balancing.method import LossInputs, Method, MethodContext, epoch_window, multiloss_objectives
from mlb_jax.losses import FUSED

TEACHER = 'teacher_'  # prerequisite run of modality m: TEACHER + m


def feature_mse(teacher: jax.Array, student: jax.Array) -> jax.Array:
  """Mean over batch and features of (h^T - h)^2; the teacher is stop-gradient."""
  d = jax.lax.stop_gradient(teacher.astype(jnp.float32)) - student.astype(jnp.float32)
  return jnp.mean(d * d)


def teacher_config(config, modality: str, steps: int) -> ml_collections.ConfigDict:
  """The unimodal teacher run of `modality`: `config` training head `modality` alone for `steps` steps."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.method = 'multiloss'
  c.loss.fused = 0.0
  c.loss.unimodal = 0.0
  c.loss.per_modality = {modality: 1.0}
  c.train.select_head = modality
  c.train.num_steps = steps
  c.num_seeds = 1
  return c


def teacher_variables(variables: Mapping, modalities) -> dict:
  """The encoder subtrees {'params': {m: ...}, 'batch_stats': {m: ...}} of `variables`."""
  stats = variables.get('batch_stats', {}) or {}
  return {'params': {m: {'encoder': variables['params'][m]['encoder']} for m in modalities},
          'batch_stats': {m: stats[m] for m in modalities if m in stats}}


def make_umt(modalities: tuple[str, ...], cfg, ctx: MethodContext) -> Method:
  """UMT from `config.balancing.umt` (`lam`, `teacher_epochs`, `start_epoch`, `end_epoch`)."""
  umt = cfg.umt
  if umt.lam < 0:
    raise ValueError(f'balancing.umt.lam must be >= 0, got {umt.lam}')
  if umt.teacher_epochs <= 0:
    raise ValueError(f'balancing.umt.teacher_epochs must be > 0, got {umt.teacher_epochs}')
  if umt.end_epoch < umt.start_epoch:
    raise ValueError(f'balancing.umt.end_epoch ({umt.end_epoch}) < start_epoch ({umt.start_epoch})')
  teacher_steps = max(1, int(round(umt.teacher_epochs * ctx.steps_per_epoch)))

  def init_state(variables):
    # The slot has the teachers' structure; `adopt` fills in the trained teachers before step 1.
    return teacher_variables(variables, modalities)

  def prerequisites(config):
    return {TEACHER + m: teacher_config(config, m, teacher_steps) for m in modalities}

  def adopt(train_state, states):
    missing = [TEACHER + m for m in modalities if TEACHER + m not in states]
    if missing:
      raise ValueError(f'UMT needs the teacher runs {missing}')
    # teacher m contributes its own encoder m (and its statistics) to the slot
    teachers = {m: teacher_variables({'params': states[TEACHER + m].params,
                                      'batch_stats': states[TEACHER + m].batch_stats}, (m,)) for m in modalities}
    slot = {part: {m: v for t in teachers.values() for m, v in t[part].items()} for part in ('params', 'batch_stats')}
    if jax.tree.structure(slot) != jax.tree.structure(train_state.method_state):
      raise ValueError('the UMT teachers do not have the encoders of this model; were they trained with '
                       'another model config?')
    return train_state.replace(method_state=jax.tree.map(jnp.asarray, slot))

  def loss(inputs: LossInputs, state):
    out = inputs.output
    teacher = inputs.model.apply(state, inputs.batch, train=False, method='encode')
    active = epoch_window(inputs.step, umt.start_epoch, umt.end_epoch, ctx).astype(jnp.float32)
    fused, metrics = multiloss_objectives(inputs, {FUSED: out.logits[FUSED]})
    probes, probe_metrics = multiloss_objectives(inputs, {m: out.logits[m] for m in modalities})
    mse = {m: feature_mse(teacher[m], out.features[m]) for m in modalities}
    objectives = {'fused': fused['multiloss'], 'probes': probes['multiloss'],
                  'distill': active * umt.lam * sum(mse.values())}
    metrics.update(probe_metrics)
    metrics.update({f'umt_mse_{m}': v for m, v in mse.items()})
    metrics['umt_active'] = active
    return objectives, state, metrics

  return Method('umt', init_state=init_state, loss=loss, prerequisites=prerequisites, adopt=adopt,
                unimodal_heads='probe')
