"""train_step / eval_step: loss goes down, scales reach exactly their subtrees, no retrace."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mlb_jax import balancing, losses, models, optim, steps
from mlb_jax.balancing import Method
from mlb_jax.train_state import create_train_state
from tests.tree_asserts import assert_trees_all_equal

MODALITIES = ('audio', 'video')
NUM_CLASSES = 4


def model_config(fusion='late_linear'):
  return ml_collections.ConfigDict(dict(
      encoder='auto', encoders={'audio': 'conv', 'video': 'frames'}, fusion=fusion, features=16,
      mlp_hidden=(16,), conv_widths=(4, 8), mid_hidden=16, dropout=0.1, mmcosine_scale=10.0))


def optimizer_config(**kw):
  cfg = dict(name='adam', learning_rate=1e-2, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-7,
             momentum=0.9, schedule='constant', warmup_steps=0, restart_period=4, restart_mult=2)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def make_batch(seed=0, b=8):
  rng = np.random.default_rng(seed)
  return {'audio': rng.standard_normal((b, 12, 12)).astype(np.float32),
          'video': rng.standard_normal((b, 2, 8, 8, 3)).astype(np.float32),
          'label': (np.arange(b) % NUM_CLASSES).astype(np.int32)}


def setup(method, *, fusion='late_linear', apply_to='gradients', weights=None, **opt):
  model = models.build_model(model_config(fusion), MODALITIES,
                             {'audio': (12, 12), 'video': (2, 8, 8, 3)}, NUM_CLASSES)
  tx = optim.make_optimizer(optimizer_config(**opt), optim.modality_labels, apply_to)
  if isinstance(method, str):
    method = balancing.make_method(method, MODALITIES, ml_collections.ConfigDict(
        dict(score='probability', alpha=0.8, beta_max=2.0)))
  state = create_train_state(model, tx, method, make_batch(), jax.random.key(0))
  weights = weights or {'fused': 1.0, 'audio': 1.0, 'video': 1.0}
  step = steps.make_train_step(model=model, tx=tx, method=method, loss_weights=weights, donate=False)
  return model, state, step


def total_loss(model, state, batch, weights):
  out = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, batch, train=False)
  return float(losses.multi_loss(out.logits, batch['label'], weights)[0])


@pytest.mark.parametrize('method', ['joint', 'multiloss', 'mlb'])
def test_one_step_lowers_the_loss_on_a_fixed_batch(method):
  weights = {'fused': 1.0, 'audio': 1.0, 'video': 1.0}
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


def fixed_scales(scales):
  """A method returning constant scales, to check where they land."""
  def coefficients(inputs, state):
    del inputs
    out = {m: jnp.float32(v) for m, v in scales.items()}
    return out, state, {f'scale_{m}': v for m, v in out.items()}
  return Method('fixed', False, lambda _: (), coefficients)


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


def test_mlb_step_does_not_retrace_when_k_changes():
  traces = []
  base = balancing.make_method('mlb', MODALITIES, ml_collections.ConfigDict(
      dict(score='probability', alpha=0.8, beta_max=2.0)))

  def counting(inputs, state):
    traces.append(1)  # runs only while tracing
    return base.coefficients(inputs, state)

  _, state, step = setup(base._replace(coefficients=counting))
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
  eval_step = steps.make_eval_step(model=model)
  logits = eval_step(new, make_batch())
  # late_linear decomposes per modality, so eval also returns each modality's share
  assert set(logits) == {'fused', *MODALITIES, *(f'contribution_{m}' for m in MODALITIES)}
  assert all(v.shape == (8, NUM_CLASSES) for v in logits.values())
  np.testing.assert_allclose(logits['contribution_audio'] + logits['contribution_video'], logits['fused'],
                             rtol=1e-5, atol=1e-5)


def test_eval_is_deterministic_and_batch_independent():
  model, state, _ = setup('mlb', fusion='mid_mlp')
  eval_step = steps.make_eval_step(model=model)
  batch = make_batch(3)
  full = eval_step(state, batch)
  half = eval_step(state, {k: v[:4] for k, v in batch.items()})
  np.testing.assert_allclose(np.asarray(full['fused'])[:4], np.asarray(half['fused']), rtol=1e-5, atol=1e-5)
