"""The methods' hooks against the equations of docs/methods.md: AGM's loss and clip, the PMR and
OGM epoch windows, and MSLR's per-epoch ratios through the training loop."""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.lib import base
from configs import synthetic as synthetic_config
from data_pipelines import common
from mlb_jax import balancing, build, checkpointing, loop, models
from mlb_jax.balancing import GradInputs, LossInputs, MethodContext, StepInputs, agm, pmr
from mlb_jax.losses import cross_entropy
from mlb_jax.models import ModelOutput
from tests.tree_asserts import assert_trees_all_close

MODALITIES = ('audio', 'video')


def _np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# --- AGM: the gradient its loss sends into the fused logits ---------------------------------


def test_agm_modulated_logits_send_the_documented_gradients():
  # With g = dL/dcombined: dL/dz = (k_a + k_v)/2 g, dL/dz_0v = (k_v - k_a)/2 g, dL/dz_a0 = (k_a - k_v)/2 g.
  rng = np.random.default_rng(0)
  z, z0v, za0 = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(3))
  labels = jnp.array([0, 2, 1, 1])
  k_a, k_v = 2.5, 0.4

  def loss(z, z0v, za0):
    z_a, z_v = agm.agm_contributions(z, z0v, za0)
    return cross_entropy(agm.scale_gradient(z_a, jnp.float32(k_a)) + agm.scale_gradient(z_v, jnp.float32(k_v)),
                         labels)

  np.testing.assert_allclose(loss(z, z0v, za0), cross_entropy(z, labels), rtol=1e-6)   # forward: CE(z)
  gz, g0v, ga0 = jax.grad(loss, argnums=(0, 1, 2))(z, z0v, za0)
  g = (_np_softmax(np.asarray(z, np.float64)) - np.eye(3)[np.asarray(labels)]) / 4   # dCE(z)/dz, mean over B
  np.testing.assert_allclose(gz, (k_a + k_v) / 2 * g, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g0v, (k_v - k_a) / 2 * g, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(ga0, (k_a - k_v) / 2 * g, rtol=1e-5, atol=1e-7)


AGM_SHAPES = {'audio': (6, 6), 'video': (5,)}   # audio: conv encoder (BatchNorm), video: MLP
AGM_CLASSES = 3
AGM_WEIGHTS = {'fused': 1.0, 'audio': 1.0, 'video': 1.0}


def _agm_model(fusion):
  cfg = base.get_config().model
  cfg.fusion = fusion
  cfg.kernels = 'plain'
  cfg.features = 4
  cfg.mlp.hidden = (6,)
  cfg.conv.widths = (3,)
  return models.build_model(cfg, MODALITIES, AGM_SHAPES, AGM_CLASSES)


def _agm_batch():
  rng = np.random.default_rng(3)
  return {'audio': jnp.asarray(rng.normal(size=(5, 6, 6)) + 0.5, jnp.float32),
          'video': jnp.asarray(rng.normal(size=(5, 5)) + 0.5, jnp.float32),
          'label': jnp.array([0, 1, 2, 0, 1], jnp.int32)}


@functools.lru_cache(maxsize=None)
def _agm_case(fusion, reencode):
  """(grads of AGM's loss, its metrics and new state, grads of the reference, the reference k and L)."""
  model = _agm_model(fusion)
  batch = _agm_batch()
  labels = batch['label']
  variables = model.init({'params': jax.random.key(1), 'dropout': jax.random.key(1)},
                         {m: batch[m] for m in MODALITIES}, train=False)
  params = variables['params']
  # Running BatchNorm statistics away from the batch's own, so inference-mode passes differ from training ones.
  stats = jax.tree.map(lambda x: x + 0.3, variables['batch_stats'])
  cfg = base.get_config().balancing
  cfg.agm.alpha, cfg.agm.reencode = 1.5, reencode
  ctx = MethodContext(MODALITIES, 4, AGM_CLASSES, {m: 4 for m in MODALITIES})
  method = agm.make_agm(MODALITIES, cfg, ctx)
  mean_loss, step = np.array([0.2, 1.4], np.float32), 4
  state = agm.AGMState(jnp.asarray(mean_loss))

  def forward(params):
    v = {'params': params, 'batch_stats': stats}
    out, _ = model.apply(v, batch, train=True, detach_unimodal=method.unimodal_heads == 'probe',
                         mutable=['batch_stats'])
    return v, out

  def agm_loss(params):
    v, out = forward(params)
    inputs = LossInputs(model, v, batch, out, labels, jnp.int32(step), jax.random.key(0), AGM_WEIGHTS)
    objectives, new_state, metrics = method.loss(inputs, state)
    return sum(objectives.values()), (new_state, metrics)

  # The reference, written from the equations: the inference-mode masked passes ...
  def passes(params):
    v, out = forward(params)
    encode = lambda m, x: model.apply(v, {m: x}, train=False, only=(m,), method='encode')[m]
    fuse = lambda feats: model.apply(v, feats, train=False, method='fuse')
    other = ({m: encode(m, batch[m]) for m in MODALITIES} if reencode == 'both' else out.features)
    z = out.logits['fused']
    z0v = fuse({'audio': encode('audio', jnp.zeros_like(batch['audio'])), 'video': other['video']})
    za0 = fuse({'audio': other['audio'], 'video': encode('video', jnp.zeros_like(batch['video']))})
    return out, z, z0v, za0

  # ... the coefficients from the stop-gradient contributions ...
  _, z, z0v, za0 = passes(params)
  z, z0v, za0 = (np.asarray(x, np.float64) for x in (z, z0v, za0))
  z_a, z_v = (z - z0v + za0) / 2, (z - za0 + z0v) / 2
  lab = np.asarray(labels)
  ell = np.array([np.mean(-np.log(np.maximum(_np_softmax(c)[np.arange(5), lab], 1e-8))) for c in (z_a, z_v)])
  r_a, rbar_a = math.exp(ell[1] - ell[0]), math.exp(mean_loss[1] - mean_loss[0])
  k = np.array([math.exp(1.5 * min(rbar_a - r_a, 10.0)), math.exp(1.5 * min(1 / rbar_a - 1 / r_a, 10.0))])
  new_mean = mean_loss * step / (step + 1) + ell / (step + 1)

  # ... and the loss whose value is Eq. 3 on z but whose gradient reaches z, z_0v, z_a0 as documented.
  def reference_loss(params, k):
    out, z, z0v, za0 = passes(params)
    lin = 0.5 * (k[0] + k[1]) * z + 0.5 * (k[1] - k[0]) * z0v + 0.5 * (k[0] - k[1]) * za0
    sg = jax.lax.stop_gradient
    logits = {**out.logits, 'fused': sg(z) + lin - sg(lin)}
    return sum(w * cross_entropy(logits[h], labels) for h, w in AGM_WEIGHTS.items())

  (value, (new_state, metrics)), grads = jax.value_and_grad(agm_loss, has_aux=True)(params)
  ref_value, ref_grads = jax.value_and_grad(reference_loss)(params, jnp.asarray(k, jnp.float32))
  plain_grads = jax.grad(reference_loss)(params, jnp.ones(2, jnp.float32))
  return dict(value=value, metrics=metrics, new_state=new_state, grads=grads, ref_value=ref_value,
              ref_grads=ref_grads, plain_grads=plain_grads, k=k, new_mean=new_mean, ratios=(r_a, 1 / r_a))


@pytest.mark.parametrize('reencode', ['both', 'zeroed'])
@pytest.mark.parametrize('fusion', ['late_linear', 'gated'])
def test_agm_loss_gradient_equals_the_equations(fusion, reencode):
  case = _agm_case(fusion, reencode)
  k = case['k']
  assert abs(k[0] - k[1]) > 1.0 and abs((k[0] + k[1]) / 2 - 1.0) > 1.0   # the modulation is far from identity
  np.testing.assert_allclose([case['metrics']['scale_audio'], case['metrics']['scale_video']], k, rtol=1e-4)
  np.testing.assert_allclose([case['metrics']['ratio_audio'], case['metrics']['ratio_video']], case['ratios'],
                             rtol=1e-4)
  np.testing.assert_allclose(case['new_state'].mean_loss, case['new_mean'], rtol=1e-5)
  np.testing.assert_allclose(case['value'], case['ref_value'], rtol=1e-5)   # forward: Eq. 3 on z
  assert_trees_all_close(case['grads'], case['ref_grads'], rtol=2e-4, atol=1e-6)
  # The comparison can fail: without the modulation the encoders' and fusion's gradients differ.
  for key in ('audio', 'video', 'fusion'):
    with pytest.raises(AssertionError):
      assert_trees_all_close(case['grads'][key], case['plain_grads'][key], rtol=2e-4, atol=1e-6)
  # The probe heads see only their own CE on stop-gradient features: untouched by k.
  for m in MODALITIES:
    assert_trees_all_close(case['grads'][m]['head'], case['plain_grads'][m]['head'], rtol=1e-5, atol=1e-7)


def test_agm_reencode_variants_differ_with_batch_norm():
  # 'both' re-encodes the real inputs in inference mode, 'zeroed' reuses the train-mode features:
  # with BatchNorm running statistics away from the batch's, their masked passes differ.
  both, zeroed = _agm_case('late_linear', 'both'), _agm_case('late_linear', 'zeroed')
  assert not np.allclose(both['k'], zeroed['k'], rtol=1e-4)


# --- AGM clip --------------------------------------------------------------------------------


def _clip_tree(fusion_kernel, fusion_bias):
  return {
      'audio': {'encoder': {'Dense_0': {'kernel': jnp.full((2, 2), 0.5), 'bias': jnp.full((2,), 0.5)}},
                'head': {'kernel': jnp.full((2, 3), 100.0), 'bias': jnp.full((3,), 100.0)}},
      'video': {'encoder': {'Dense_0': {'kernel': jnp.full((2,), 0.5)}},
                'head': {'kernel': jnp.full((2, 3), 50.0)}},
      'fusion': {'kernel': jnp.asarray(fusion_kernel, jnp.float32), 'bias': jnp.asarray(fusion_bias, jnp.float32)},
  }


def _agm_method(clip=True):
  cfg = base.get_config().balancing
  cfg.agm.clip = clip
  return agm.make_agm(MODALITIES, cfg, MethodContext(MODALITIES, 4, 3, {m: 2 for m in MODALITIES}))


def _agm_gradients(grads):
  method = _agm_method()
  out, state, metrics = method.gradients(grads, GradInputs({}, jnp.int32(0), jax.random.key(0)),
                                         agm.AGMState(jnp.zeros(2)))
  return out, metrics


def test_agm_clip_ignores_a_large_fusion_bias_and_large_probe_heads():
  grads = _clip_tree(np.full((2, 3), 0.5), np.full((3,), 5.0))   # only the bias and the probes leave [-1, 1]
  out, metrics = _agm_gradients(grads)
  jax.tree.map(np.testing.assert_array_equal, out, grads)
  np.testing.assert_allclose(metrics['clip_factor'], 1.0)


def test_agm_clip_triggers_on_a_fusion_kernel_and_leaves_the_probe_heads_out():
  kernel = np.full((2, 3), 0.5)
  kernel[1, 2] = -3.0
  grads = _clip_tree(kernel, np.full((3,), 5.0))
  out, metrics = _agm_gradients(grads)
  # global norm without the probe heads: encoders 4*0.25 + 2*0.25 + 2*0.25, fusion kernel 5*0.25 + 9,
  # fusion bias 3*25
  norm = math.sqrt(4 * 0.25 + 2 * 0.25 + 2 * 0.25 + 5 * 0.25 + 9.0 + 3 * 25.0)
  factor = 1.0 / (norm + 1e-6)
  np.testing.assert_allclose(metrics['clip_factor'], factor, rtol=1e-6)
  for m in MODALITIES:
    jax.tree.map(lambda o, g: np.testing.assert_allclose(o, np.asarray(g) * factor, rtol=1e-6),
                 out[m]['encoder'], grads[m]['encoder'])
    jax.tree.map(np.testing.assert_array_equal, out[m]['head'], grads[m]['head'])   # probes: not scaled
  np.testing.assert_allclose(out['fusion']['kernel'], kernel * factor, rtol=1e-6)
  np.testing.assert_allclose(out['fusion']['bias'], np.full(3, 5.0) * factor, rtol=1e-6)


def test_agm_clip_finds_the_kernels_of_a_nested_fusion():
  grads = _clip_tree(np.zeros((2, 3)), np.zeros(3))
  grads['fusion'] = {'gate': {'kernel': jnp.full((2, 2), 0.5), 'bias': jnp.full((2,), 9.0)},
                     'out': {'kernel': jnp.full((2, 3), 0.5), 'bias': jnp.full((3,), 9.0)}}
  _, metrics = _agm_gradients(grads)
  np.testing.assert_allclose(metrics['clip_factor'], 1.0)   # biases only
  grads['fusion']['out']['kernel'] = jnp.full((2, 3), 1.5)
  _, metrics = _agm_gradients(grads)
  assert float(metrics['clip_factor']) < 1.0


def test_agm_clip_on_the_mmcosine_fusion_weights():
  # AGM is defined with the MMCosine fusion, whose weight matrices are its per-modality cosine
  # class weights (no bias): one leaving [-1, 1] triggers the clip, small ones do not.
  grads = _clip_tree(np.zeros((2, 3)), np.zeros(3))
  grads['fusion'] = {'kernel_audio': jnp.full((2, 3), 0.5), 'kernel_video': jnp.full((2, 3), 0.5)}
  _, metrics = _agm_gradients(grads)
  np.testing.assert_allclose(metrics['clip_factor'], 1.0)
  grads['fusion']['kernel_video'] = jnp.full((2, 3), 2.0)
  _, metrics = _agm_gradients(grads)
  norm = math.sqrt(4 * 0.25 + 2 * 0.25 + 2 * 0.25 + 6 * 0.25 + 6 * 4.0)
  np.testing.assert_allclose(metrics['clip_factor'], 1.0 / (norm + 1e-6), rtol=1e-6)


def test_agm_without_clip_has_no_gradient_hook():
  assert _agm_method(clip=False).gradients is None
  assert _agm_method(clip=True).gradients is not None


# --- PMR: prototype terms inside the inclusive epoch window ----------------------------------

# Two classes, two samples (labels 0, 1), D = 2. With c = 1/sqrt(1 + 1e-5) the batch-normalised
# features are BN(f_a) = c [[-1, 1], [1, -1]] and BN(f_v) = c [[0, -1], [0, 1]] (a zero-variance column
# normalises to 0). Audio sits on its own class prototypes, video on the other class's.
C_BN = 1.0 / math.sqrt(1.0 + 1e-5)
PMR_FEATURES = {'audio': jnp.array([[1.0, 2.0], [3.0, 0.0]]), 'video': jnp.array([[5.0, 1.0], [5.0, 3.0]])}
PMR_PROTOTYPES = jnp.array([[[-C_BN, C_BN], [C_BN, -C_BN]],     # audio: class 0, class 1
                            [[0.0, C_BN], [0.0, -C_BN]]])       # video: swapped
PMR_LABELS = jnp.array([0, 1])


def _pmr_hand():
  """Distances by hand: audio d = (1e-4 on its class, sqrt(8c^2 + 1e-8) off it); video
  d = (sqrt(4c^2 + 1e-8) to its own class, 1e-4 to the other)."""
  on, off_a, off_v = math.sqrt(1e-8), math.sqrt(8 * C_BN ** 2 + 1e-8), math.sqrt(4 * C_BN ** 2 + 1e-8)
  sigmoid = lambda x: 1 / (1 + math.exp(-x))
  s_a = 2 * sigmoid(off_a - on)        # sum_b softmax(-d_a)[b, y_b]
  s_v = 2 * sigmoid(on - off_v)
  ce_a = math.log1p(math.exp(on - off_a))   # CE(-d) per sample = softplus(d_true - d_other)
  ce_v = math.log1p(math.exp(off_v - on))
  return s_a, s_v, ce_a, ce_v


def _pmr_loss(step, start_epoch, end_epoch, alpha=2.0):
  cfg = base.get_config().balancing
  cfg.pmr.alpha, cfg.pmr.start_epoch, cfg.pmr.end_epoch = alpha, start_epoch, end_epoch
  method = pmr.make_pmr(MODALITIES, cfg, MethodContext(MODALITIES, 3, 2, {m: 2 for m in MODALITIES}))
  state = pmr.PMRState(PMR_PROTOTYPES, jnp.ones((2, 2), bool), jnp.int32(0))
  logits = {h: jnp.zeros((2, 2)) for h in ('fused', *MODALITIES)}
  output = ModelOutput(logits, PMR_FEATURES, None)
  inputs = LossInputs(None, None, None, output, PMR_LABELS, jnp.int32(step), jax.random.key(0),
                      {'fused': 1.0, 'audio': 1.0, 'video': 1.0})
  objectives, _, metrics = method.loss(inputs, state)
  return objectives, metrics


def test_pmr_distances_scores_and_betas_by_hand():
  s_a, s_v, ce_a, ce_v = _pmr_hand()
  objectives, metrics = _pmr_loss(0, 0, 1)
  np.testing.assert_allclose(metrics['score_audio'], s_a, rtol=1e-5)
  np.testing.assert_allclose(metrics['score_video'], s_v, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_prototype_audio'], ce_a, rtol=1e-4)
  np.testing.assert_allclose(metrics['loss_prototype_video'], ce_v, rtol=1e-5)
  # rho = S_a / (S_v + 1e-5) > 1: video is the weaker one, beta = (0, alpha)
  assert s_a / (s_v + 1e-5) > 1
  np.testing.assert_allclose([metrics['pmr_beta_audio'], metrics['pmr_beta_video']], [0.0, 2.0])
  np.testing.assert_allclose(objectives['multiloss'], 3 * math.log(2.0), rtol=1e-6)   # Eq. 3 on uniform logits


@pytest.mark.parametrize('start_epoch,end_epoch,active_steps', [
    (0, 1, range(0, 6)),    # steps_per_epoch 3: epochs 0 and 1 are steps 0..5
    (1, 1, range(3, 6)),
    (1, 2, range(3, 9)),
])
def test_pmr_prototype_term_only_inside_the_inclusive_window(start_epoch, end_epoch, active_steps):
  _, _, _, ce_v = _pmr_hand()
  for step in range(0, 10):
    objectives, _ = _pmr_loss(step, start_epoch, end_epoch)
    expected = 2.0 * ce_v if step in active_steps else 0.0
    np.testing.assert_allclose(objectives['prototypes'], expected, rtol=1e-5, atol=0,
                               err_msg=f'step {step}')
    np.testing.assert_allclose(objectives['multiloss'], 3 * math.log(2.0), rtol=1e-6)


# --- OGM: coefficients inside the inclusive epoch window -------------------------------------


def _ogm(name, start_epoch, end_epoch, steps_per_epoch=3):
  cfg = base.get_config().balancing
  cfg.ogm.alpha, cfg.ogm.start_epoch, cfg.ogm.end_epoch = 0.8, start_epoch, end_epoch
  return balancing.make_method(name, MODALITIES, cfg, MethodContext(MODALITIES, steps_per_epoch, 2,
                                                                   {m: 2 for m in MODALITIES}))


@pytest.mark.parametrize('name', ['ogm', 'ogm_ge'])
@pytest.mark.parametrize('start_epoch,end_epoch,active_steps', [
    (0, 1, range(0, 6)),    # end_epoch 1 with 3 steps per epoch: steps 0..5 active, 6 not
    (1, 2, range(3, 9)),
])
def test_ogm_coefficients_active_exactly_in_the_inclusive_window(name, start_epoch, end_epoch, active_steps):
  method = _ogm(name, start_epoch, end_epoch)
  # Audio leads: S_a = 2 sigmoid(5), S_v = 1, rho_a = 2 sigmoid(5) > 1.
  logits = {'audio': jnp.array([[5.0, 0.0], [5.0, 0.0]]), 'video': jnp.zeros((2, 2))}
  slowed = 1 - math.tanh(0.8 * 2 / (1 + math.exp(-5.0)))
  for step in range(0, 11):
    inputs = StepInputs(logits, jnp.array([0, 0]), jnp.int32(step), jax.random.key(0))
    scales, _, metrics = method.scales(inputs, ())
    on = step in active_steps
    np.testing.assert_allclose(scales['audio'], slowed if on else 1.0, rtol=1e-6, err_msg=f'step {step}')
    np.testing.assert_allclose(scales['video'], 1.0)
    if name == 'ogm_ge':
      args = method.optimizer_args(inputs, ())
      np.testing.assert_allclose(args['noise_scale'], 1.0 if on else 0.0, err_msg=f'step {step}')
      np.testing.assert_allclose(metrics['noise_active'], 1.0 if on else 0.0)
  assert (method.optimizer_args is None) is (name == 'ogm')


# --- MSLR through the loop -------------------------------------------------------------------


def _mslr_config(num_steps):
  config = synthetic_config.get_config('method=mslr,smoke')   # 64 training clips, batches of 16: 4 per epoch
  config.balancing.mslr.keep_epochs = 1
  config.train.num_steps = num_steps
  config.train.eval_every = 4        # checkpoints/last at the end of every epoch
  config.train.log_every = 1
  return config


def _contribution_accuracy(exp, state):
  """Validation accuracy of each modality's share of the Late-Linear logits, z_m = f_m W_m + b/2,
  from the encoders' inference-mode features."""
  params = state.params['fusion']
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  correct, total = np.zeros(2), 0
  for batch in common.eval_batches(exp.dataset.splits['val'], batch_size=exp.config.data.eval_batch_size):
    mask = batch.pop(common.MASK)
    feats = exp.training.model.apply(variables, {m: batch[m] for m in MODALITIES}, train=False, method='encode')
    f_a, f_v = np.asarray(feats['audio']), np.asarray(feats['video'])
    w, b = np.asarray(params['kernel']), np.asarray(params['bias'])
    z = {'audio': f_a @ w[:f_a.shape[1]] + b / 2, 'video': f_v @ w[f_a.shape[1]:] + b / 2}
    labels = batch[common.LABEL][mask]
    for i, m in enumerate(MODALITIES):
      correct[i] += np.sum(np.argmax(z[m][mask], -1) == labels)
    total += int(mask.sum())
  assert total == exp.config.data.num_val
  return correct / total


def _restore(exp, workdir, step):
  mngr = checkpointing.manager_at(checkpointing.directory(workdir, checkpointing.LAST), read_only=True)
  try:
    assert step in mngr.all_steps(), mngr.all_steps()
    state, _ = checkpointing.restore(mngr, loop.initial_state([exp]), step=step)
  finally:
    mngr.close()
  return state


def test_mslr_ratios_after_training_are_the_contribution_accuracy_ratio(tmp_path):
  # Three epochs (steps 1..12). Epoch 1 starts with ratio 1 (e <= K = 1) and remembers acc_0;
  # epoch 2 starts with ratio = acc_1 / acc_0, the accuracies of the states after epochs 0 and 1.
  first = str(tmp_path / 'one_epoch')
  loop.train_and_evaluate(_mslr_config(4), first)       # the same run, stopped after epoch 0
  workdir = str(tmp_path / 'three_epochs')
  loop.train_and_evaluate(_mslr_config(12), workdir)
  exp = build.build(_mslr_config(12))
  acc0 = _contribution_accuracy(exp, _restore(exp, first, 4))
  acc1 = _contribution_accuracy(exp, _restore(exp, workdir, 8))
  final = _restore(exp, workdir, 12).method_state
  expected = np.where(acc0 > 0, acc1 / np.where(acc0 > 0, acc0, 1.0), 1.0)
  np.testing.assert_allclose(final.ratios, expected, rtol=1e-6)
  np.testing.assert_allclose(final.memory[-1], acc1, rtol=1e-6)   # K = 1: the newest accuracy only
  assert int(final.stored) == 2
  assert not np.allclose(expected, 1.0), (acc0, acc1)   # the accuracies moved: the check has teeth
  # Every step of an epoch trains with that epoch's ratios (k = ilr * ratio; ilr 0.9 / 1.1).
  with open(os.path.join(workdir, loop.HISTORY)) as f:
    train = {r['step']: r for r in map(json.loads, f) if r['split'] == 'train'}
  ilr = np.array([0.9, 1.1])
  for step in range(1, 13):
    ratio = expected if step > 8 else np.ones(2)
    np.testing.assert_allclose([train[step]['ratio_audio'], train[step]['ratio_video']], ratio, rtol=1e-6,
                               err_msg=f'step {step}')
    np.testing.assert_allclose([train[step]['scale_audio'], train[step]['scale_video']], ilr * ratio,
                               rtol=1e-6, err_msg=f'step {step}')
