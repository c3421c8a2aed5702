"""The multi-loss objective (Eq. 3) and its weights from config.loss."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mlb_jax.losses import cross_entropy, loss_weights, multi_loss


def _np_ce(logits, labels):
  z = logits.astype(np.float64)
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.mean(logp[np.arange(len(labels)), labels])


def _batch():
  rng = np.random.default_rng(0)
  logits = {h: (rng.normal(size=(6, 4)) * s).astype(np.float32)
            for h, s in [('fused', 1.0), ('audio', 2.0), ('video', 0.5)]}
  labels = rng.integers(0, 4, size=6).astype(np.int32)
  return logits, labels


def test_cross_entropy_matches_numpy():
  logits, labels = _batch()
  np.testing.assert_allclose(cross_entropy(jnp.asarray(logits['audio']), jnp.asarray(labels)),
                             _np_ce(logits['audio'], labels), rtol=1e-5)
  # uniform logits: CE = log(C)
  np.testing.assert_allclose(cross_entropy(jnp.zeros((3, 4)), jnp.array([0, 1, 3])), np.log(4.0), rtol=1e-6)


def test_multi_loss_weighted_sum():
  logits, labels = _batch()
  weights = {'fused': 1.0, 'audio': 0.5, 'video': 2.0}
  total, parts = multi_loss({h: jnp.asarray(z) for h, z in logits.items()}, jnp.asarray(labels), weights)
  ces = {h: _np_ce(z, labels) for h, z in logits.items()}
  expected = sum(weights[h] * ces[h] for h in logits)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  assert set(parts) == {'loss_fused', 'loss_audio', 'loss_video'}
  for h in logits:
    np.testing.assert_allclose(parts[f'loss_{h}'], ces[h], rtol=1e-5)  # unweighted


def test_multi_loss_jit_grad_and_zero_weight():
  logits, labels = _batch()
  logits = {h: jnp.asarray(z) for h, z in logits.items()}
  weights = {'fused': 1.0, 'audio': 0.0, 'video': 1.0}
  loss_fn = lambda lg: multi_loss(lg, jnp.asarray(labels), weights)[0]
  total = jax.jit(loss_fn)(logits)
  np.testing.assert_allclose(total, _np_ce(np.asarray(logits['fused']), labels)
                             + _np_ce(np.asarray(logits['video']), labels), rtol=1e-5)
  grads = jax.grad(loss_fn)(logits)
  np.testing.assert_array_equal(grads['audio'], np.zeros((6, 4)))
  assert np.abs(np.asarray(grads['video'])).sum() > 0


def test_multi_loss_bfloat16_logits():
  logits, labels = _batch()
  total, _ = multi_loss({h: jnp.asarray(z, jnp.bfloat16) for h, z in logits.items()}, jnp.asarray(labels),
                        {'fused': 1.0, 'audio': 1.0, 'video': 1.0})
  assert total.dtype == jnp.float32
  np.testing.assert_allclose(total, sum(_np_ce(z, labels) for z in logits.values()), rtol=2e-2)


def test_multi_loss_missing_weight_raises():
  logits, labels = _batch()
  with pytest.raises(ValueError, match='video'):
    multi_loss({h: jnp.asarray(z) for h, z in logits.items()}, jnp.asarray(labels),
               {'fused': 1.0, 'audio': 1.0})


def test_loss_weights_from_config():
  cfg = ml_collections.ConfigDict(dict(fused=1.0, unimodal=0.5, per_modality={'video': 2.0}))
  w = loss_weights(cfg, ('audio', 'video'))
  assert w == {'fused': 1.0, 'audio': 0.5, 'video': 2.0}
  assert all(isinstance(v, float) for v in w.values())
  cfg_empty = ml_collections.ConfigDict(dict(fused=1, unimodal=1, per_modality={}))
  assert loss_weights(cfg_empty, ('audio', 'video')) == {'fused': 1.0, 'audio': 1.0, 'video': 1.0}


def test_loss_weights_unknown_modality_raises():
  cfg = ml_collections.ConfigDict(dict(fused=1.0, unimodal=0.5, per_modality={'depth': 2.0}))
  with pytest.raises(ValueError, match='depth'):
    loss_weights(cfg, ('audio', 'video'))
