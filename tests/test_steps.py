"""train_step / eval_step: loss goes down, scales reach exactly their subtrees, no retrace."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.lib import base
from mlb_jax import balancing, build, losses, models, optim, steps
from mlb_jax.balancing import Method, MethodContext, true_class_probability
from mlb_jax.train_state import make_init
from tests.tree_asserts import assert_trees_all_close, assert_trees_all_equal

MODALITIES = ('audio', 'video')
NUM_CLASSES = 4
SHAPES = {'audio': (12, 12), 'video': (2, 8, 8, 3)}
WEIGHTS = {'fused': 1.0, 'audio': 1.0, 'video': 1.0}


def model_config(fusion='late_linear'):
  cfg = base.get_config().model
  cfg.encoders = {'audio': 'conv', 'video': 'frames'}
  cfg.fusion = fusion
  cfg.features = 16
  cfg.mlp.hidden = (16,)
  cfg.conv.widths = (4, 8)
  cfg.mid_mlp.hidden = 16
  cfg.mid_mlp.dropout = 0.1
  cfg.mmcosine.scale = 10.0
  return cfg


def optimizer_config(**kw):
  cfg = base.get_config().optimizer
  cfg.learning_rate, cfg.weight_decay = 1e-2, 0.0
  for key, value in kw.items():
    cfg[key] = value
  return cfg


def balancing_config():
  cfg = base.get_config().balancing
  cfg.score = 'probability'
  cfg.mlb.alpha, cfg.mlb.beta_max = 0.8, 2.0
  return cfg


def make_batch(seed=0, b=8):
  rng = np.random.default_rng(seed)
  return {'audio': rng.standard_normal((b, 12, 12)).astype(np.float32),
          'video': rng.standard_normal((b, 2, 8, 8, 3)).astype(np.float32),
          'label': (np.arange(b) % NUM_CLASSES).astype(np.int32)}


def make_model(fusion='late_linear'):
  return models.build_model(model_config(fusion), MODALITIES, SHAPES, NUM_CLASSES)


def make_tx(method, apply_to='gradients', **opt):
  """The build's optimizer for `method`: its labels follow `unimodal_heads` and `scaled_params`."""
  labels = functools.partial(optim.modality_labels, heads_scaled=method.unimodal_heads == 'trained',
                             kernels_only=method.scaled_params == 'kernels')
  return optim.make_optimizer(optimizer_config(**opt), labels, apply_to)


def jit_step(model, tx, method, weights=None):
  return jax.jit(functools.partial(steps.train_step, model=model, tx=tx, method=method,
                                   loss_weights=weights or WEIGHTS))


def named_method(name, model):
  ctx = MethodContext(MODALITIES, 4, NUM_CLASSES, build.feature_dims(model, SHAPES, MODALITIES))
  return balancing.make_method(name, MODALITIES, balancing_config(), ctx)


def setup(method, *, fusion='late_linear', apply_to='gradients', weights=None, **opt):
  model = make_model(fusion)
  if isinstance(method, str):
    method = named_method(method, model)
  tx = make_tx(method, apply_to, **opt)
  batch = make_batch()
  state = make_init(model, tx, method)({m: batch[m] for m in MODALITIES}, jax.random.key(0))
  return model, state, jit_step(model, tx, method, weights)


def total_loss(model, state, batch, weights):
  out = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, batch, train=False)
  return float(losses.multi_loss(out.logits, batch['label'], weights)[0])


@pytest.mark.parametrize('method', ['joint', 'multiloss', 'mlb'])
def test_one_step_lowers_the_loss_on_a_fixed_batch(method):
  model, state, step = setup(method, learning_rate=1e-3)
  batch = make_batch(1)
  # Train-mode BatchNorm normalises with batch stats; compare in train mode via a step on the batch itself.
  before = None
  for _ in range(2):
    state, metrics = step(state, batch)
    before = before if before is not None else float(metrics['loss'])
  _, after = step(state, batch)
  assert float(after['loss']) < before


def test_metrics_cover_every_head_and_modality():
  _, state, step = setup('mlb')
  _, metrics = step(state, make_batch())
  for head in ('fused', *MODALITIES):
    assert f'loss_{head}' in metrics and f'acc_{head}' in metrics
  for m in MODALITIES:
    for key in ('score', 'ratio', 'scale', 'grad_norm'):
      assert f'{key}_{m}' in metrics
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_methods_without_scales_report_diagnostics_but_no_scale():
  # joint: score_<m> is the batch-mean true-class probability of the train-mode unimodal
  # logits (Eq. 4, the authors' reading) and ratio_<m> is Eq. 5; no k, so no scale_<m>.
  model, state, step = setup('joint')
  batch = make_batch(2)
  _, metrics = step(state, batch)
  out, _ = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, batch, train=True,
                       mutable=['batch_stats'])   # late_linear and these encoders have no dropout
  s = {m: float(true_class_probability(out.logits[m], jnp.asarray(batch['label']))) for m in MODALITIES}
  for m in MODALITIES:
    np.testing.assert_allclose(metrics[f'score_{m}'], s[m], rtol=1e-5)
    assert f'scale_{m}' not in metrics
  np.testing.assert_allclose(metrics['ratio_audio'], s['video'] / s['audio'], rtol=1e-5)
  np.testing.assert_allclose(metrics['ratio_video'], s['audio'] / s['video'], rtol=1e-5)


def fixed_scales(scales):
  """A method returning constant scales, to check where they land."""
  def scale_fn(inputs, state):
    del inputs
    out = {m: jnp.float32(v) for m, v in scales.items()}
    return out, state, {f'scale_{m}': v for m, v in out.items()}
  return Method('fixed', scales=scale_fn)


@pytest.mark.parametrize('apply_to', ['gradients', 'updates'])
@pytest.mark.parametrize('optimizer', ['adam', 'sgd'])
def test_zero_scale_freezes_exactly_that_modality(apply_to, optimizer):
  _, state, step = setup(fixed_scales({'audio': 0.0, 'video': 1.0}), apply_to=apply_to, name=optimizer)
  new, _ = step(state, make_batch())
  assert_trees_all_equal(new.params['audio'], state.params['audio'])
  for key in ('video', 'fusion'):
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         new.params[key], state.params[key])
    assert all(jax.tree.leaves(moved)), f'{key} params should all move'


def test_joint_heads_are_probes_encoders_see_only_the_fused_loss():
  weights = {'fused': 0.0, 'audio': 1.0, 'video': 1.0}
  _, state, step = setup('joint', weights=weights)
  new, _ = step(state, make_batch())
  for m in MODALITIES:
    assert_trees_all_equal(new.params[m]['encoder'], state.params[m]['encoder'])
    assert not np.allclose(new.params[m]['head']['kernel'], state.params[m]['head']['kernel'])
  # multiloss: the same unimodal losses do reach the encoders
  _, state, step = setup('multiloss', weights=weights)
  new, _ = step(state, make_batch())
  assert not np.allclose(new.params['audio']['encoder']['Dense_0']['kernel'],
                         state.params['audio']['encoder']['Dense_0']['kernel'])


def _identity_chain_step(model, method, state, apply_to, batch):
  """The same step with the optimizer chain's modality scaling replaced by the identity."""
  opt = optimizer_config()
  core = optim.base_optimizer(opt)
  tx = optax.chain(optax.identity(), core) if apply_to == 'gradients' else optax.chain(core, optax.identity())
  start = state.replace(opt_state=tx.init(state.params))
  return jit_step(model, tx, method)(start, batch)[0]


@pytest.mark.parametrize('name,apply_to', [('joint', 'gradients'), ('multiloss', 'gradients'), ('agm', 'gradients'),
                                           ('pmr', 'gradients'), ('mmcosine', 'gradients'), ('joint', 'updates')])
def test_methods_without_scales_scale_nothing(name, apply_to):
  # These methods have no k: `scales` is None, and their step equals the same step with
  # an optimizer chain that has no modality scaling at all.
  fusion = 'mmcosine' if name == 'mmcosine' else 'late_linear'
  model, state, step = setup(name, fusion=fusion, apply_to=apply_to)
  method = named_method(name, model)
  assert method.scales is None and method.optimizer_args is None
  batch = make_batch(4)
  new, metrics = step(state, batch)
  if name != 'agm':   # AGM reports its k (which acts inside its loss) as scale_<m>
    assert not any(k.startswith('scale_') for k in metrics)
  reference = _identity_chain_step(model, method, state, apply_to, batch)
  assert_trees_all_close(new.params, reference.params, rtol=1e-6, atol=1e-8)
  assert_trees_all_close(new.batch_stats, reference.batch_stats, rtol=1e-6, atol=1e-8)


def test_identity_chain_comparison_detects_scaling():
  # The comparison above can fail: MLB's k != 1 moves the encoders differently.
  model, state, step = setup('mlb')
  batch = make_batch(4)
  new, metrics = step(state, batch)
  assert abs(float(metrics['scale_audio']) - 1.0) > 1e-3
  method = named_method('mlb', model)
  reference = _identity_chain_step(model, method, state, 'gradients', batch)
  assert_trees_all_close(new.params['fusion'], reference.params['fusion'], rtol=1e-6, atol=1e-8)
  with pytest.raises(AssertionError):
    assert_trees_all_close(new.params['audio'], reference.params['audio'], rtol=1e-6, atol=1e-8)


def test_mlb_step_does_not_retrace_when_k_changes():
  traces = []
  base_method = named_method('mlb', make_model())

  def counting(inputs, state):
    traces.append(1)  # runs only while tracing
    return base_method.scales(inputs, state)

  _, state, step = setup(base_method._replace(scales=counting))
  scales = []
  for i in range(4):
    state, metrics = step(state, make_batch(i))
    scales.append(float(metrics['scale_audio']))
  assert len(traces) == 1
  assert len(set(scales)) > 1  # k really changed between steps


def test_batch_norm_statistics_update_in_training_only():
  model, state, step = setup('mlb')
  new, _ = step(state, make_batch())
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         new.batch_stats, state.batch_stats)
  assert all(jax.tree.leaves(changed))
  # inference mode neither updates the statistics (even when the collection is mutable) nor reads the batch's
  batch = make_batch()
  variables = {'params': new.params, 'batch_stats': new.batch_stats}
  _, updated = model.apply(variables, batch, train=False, mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, updated['batch_stats'], new.batch_stats)
  one = model.apply(variables, {k: v[:1] for k, v in batch.items()}, train=False).logits['fused']
  full = model.apply(variables, batch, train=False).logits['fused']
  np.testing.assert_allclose(np.asarray(one), np.asarray(full)[:1], rtol=1e-5, atol=1e-5)
  eval_step = jax.jit(functools.partial(steps.eval_step, model=model))
  logits = eval_step(new, make_batch())
  # late_linear decomposes per modality, so eval also returns each modality's share
  assert set(logits) == {'fused', *MODALITIES, *(f'contribution_{m}' for m in MODALITIES)}
  assert all(v.shape == (8, NUM_CLASSES) for v in logits.values())
  np.testing.assert_allclose(logits['contribution_audio'] + logits['contribution_video'], logits['fused'],
                             rtol=1e-5, atol=1e-5)


def test_eval_is_deterministic_and_batch_independent():
  model, state, _ = setup('mlb', fusion='mid_mlp')
  eval_step = jax.jit(functools.partial(steps.eval_step, model=model))
  batch = make_batch(3)
  full = eval_step(state, batch)
  half = eval_step(state, {k: v[:4] for k, v in batch.items()})
  np.testing.assert_allclose(np.asarray(full['fused'])[:4], np.asarray(half['fused']), rtol=1e-5, atol=1e-5)
  assert not any(k.startswith('contribution_') for k in full)   # mid_mlp does not decompose
