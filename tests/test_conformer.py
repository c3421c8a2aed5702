"""Conformer (docs/methods.md, Conformer): relative-position attention, per-sample attention, padding masks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlb_jax.models import conformer


def torch_relative_shift(scores: np.ndarray) -> np.ndarray:
  """The reference `_relative_shift` with torch's row-major view semantics, element by element."""
  *lead, l1, l2 = scores.shape
  out = np.empty_like(scores)
  for i in range(l1):
    for j in range(l2):
      flat = l1 + i * l2 + j                  # index into the padded [l1, l2 + 1] buffer after dropping l1 entries
      row, col = divmod(flat, l2 + 1)
      out[..., i, j] = 0.0 if col == 0 else scores[..., row, col - 1]
  return out


def test_relative_shift_matches_the_reference_view_semantics():
  scores = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
  np.testing.assert_array_equal(conformer.relative_shift(jnp.asarray(scores)), torch_relative_shift(scores))
  # Below the diagonal, query i and key j read position L - 1 - (i - j).
  shifted = torch_relative_shift(scores)
  assert shifted[0, 0, 3, 1] == scores[0, 0, 3, 5 - 1 - 2]


def test_sinusoidal_encoding():
  pe = conformer.sinusoidal_encoding(6, 8)
  p, i = 5, 1
  np.testing.assert_allclose(pe[p, 2 * i], math.sin(p / 10000 ** (2 * i / 8)), rtol=1e-6)
  np.testing.assert_allclose(pe[p, 2 * i + 1], math.cos(p / 10000 ** (2 * i / 8)), rtol=1e-6)
  np.testing.assert_array_equal(pe[0, 1::2], 1.0)


def test_attention_scores_follow_the_reference_formula():
  # One head of width 4, L = 3: recompute ((q + u) k^T + shift((q + v) p^T)) / sqrt(dim) by hand.
  att = conformer.RelativeMultiHeadAttention(dim=4, heads=1, dropout=0.0)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 3, 4)), jnp.float32)
  params = att.init(jax.random.key(0), x, None, train=False)['params']
  lin = lambda name, t: t @ np.asarray(params[name]['kernel']) + (
      np.asarray(params[name]['bias']) if 'bias' in params[name] else 0.0)
  q, k, v = (lin(n, np.asarray(x[0])) for n in ('query', 'key', 'value'))
  pos = lin('pos_proj', conformer.sinusoidal_encoding(3, 4))
  content = (q + np.asarray(params['u_bias'])[0]) @ k.T
  position = torch_relative_shift(((q + np.asarray(params['v_bias'])[0]) @ pos.T)[None])[0]
  scores = (content + position) / math.sqrt(4)
  attn = np.exp(scores - scores.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  expected = lin('out', attn @ v)
  np.testing.assert_allclose(att.apply({'params': params}, x, None, train=False)[0], expected, rtol=1e-5, atol=1e-5)


def test_multi_head_attention_divides_by_sqrt_of_the_model_width():
  # Three heads of width 4 (dim 12): each head's scores are divided by sqrt(12) as the reference does,
  # not by sqrt(4) = sqrt(d_head); with one head the two coincide, with three they differ.
  dim, heads, length = 12, 3, 5
  att = conformer.RelativeMultiHeadAttention(dim=dim, heads=heads, dropout=0.0)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((1, length, dim)), jnp.float32)
  params = att.init(jax.random.key(1), x, None, train=False)['params']
  lin = lambda name, t: t @ np.asarray(params[name]['kernel']) + (
      np.asarray(params[name]['bias']) if 'bias' in params[name] else 0.0)
  q, k, v = (lin(n, np.asarray(x[0])).reshape(length, heads, dim // heads) for n in ('query', 'key', 'value'))
  pos = lin('pos_proj', conformer.sinusoidal_encoding(length, dim)).reshape(length, heads, dim // heads)
  u, w = np.asarray(params['u_bias']), np.asarray(params['v_bias'])

  def attend(divisor):
    outs = []
    for h in range(heads):
      content = (q[:, h] + u[h]) @ k[:, h].T
      position = torch_relative_shift(((q[:, h] + w[h]) @ pos[:, h].T)[None])[0]
      scores = (content + position) / divisor
      attn = np.exp(scores - scores.max(-1, keepdims=True))
      outs.append((attn / attn.sum(-1, keepdims=True)) @ v[:, h])
    return lin('out', np.concatenate(outs, -1))

  got = np.asarray(att.apply({'params': params}, x, None, train=False)[0])
  np.testing.assert_allclose(got, attend(math.sqrt(dim)), rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(got - attend(math.sqrt(dim // heads)))) > 1e-3  # the d_head reading is told apart


@pytest.fixture(scope='module')
def encoder():
  enc = conformer.ConformerEncoder(bottleneck=6, dim=16, layers=2, heads=2, kernel=3)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 7, 10)), jnp.float32)
  variables = jax.jit(lambda x: enc.init(jax.random.key(0), x, train=False))(x)
  return enc, variables, x


def test_encoder_shapes_params_and_errors(encoder):
  enc, variables, x = encoder
  pooled, tokens = enc.apply(variables, x, train=False, return_tokens=True)
  assert pooled.shape == (3, 16) and tokens.shape == (3, 7, 16)
  p = variables['params']
  assert p['bottleneck']['kernel'].shape == (10, 6) and 'bias' not in p['bottleneck']
  assert set(p['conformer']) == {'input_proj', 'block0', 'block1'}
  assert set(p['conformer']['block0']) == {'ff1', 'attn_norm', 'attn', 'conv', 'ff2', 'out_norm'}
  assert p['conformer']['block0']['attn']['u_bias'].shape == (2, 8)
  assert p['conformer']['block0']['conv']['depthwise']['kernel'].shape == (3, 1, 16)
  assert set(variables['batch_stats']['conformer']['block0']['conv']['bn']) == {'mean', 'var'}
  with pytest.raises(ValueError, match=r'expects frame features \[B, T, D\]'):
    enc.apply(variables, x[0], train=False)
  with pytest.raises(ValueError, match='mask must be'):
    enc.apply(variables, x, train=False, mask=jnp.ones((3, 6), bool))


def test_attention_is_within_each_sample(encoder):
  # Inference mode: a clip's output does not depend on the other clips of the batch
  # (the reference code attends across the batch axis; docs/methods.md, pretrained features).
  enc, variables, x = encoder
  apply = jax.jit(lambda x: enc.apply(variables, x, train=False))
  np.testing.assert_allclose(apply(x)[1:2], apply(x[1:2]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(apply(x)[1], apply(jnp.stack([x[1], x[0] * 3]))[0], rtol=1e-5, atol=1e-5)


def test_padded_frames_change_nothing(encoder):
  enc, variables, x = encoder
  mask = jnp.asarray([[True] * 7, [True] * 4 + [False] * 3, [True] * 2 + [False] * 5])
  garbage = jnp.where(mask[..., None], x, 50.0)
  apply = jax.jit(lambda x, m: enc.apply(variables, x, train=False, mask=m, return_tokens=True))
  (p1, t1), (p2, t2) = apply(x, mask), apply(garbage, mask)
  np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(t1[1, :4], t2[1, :4], rtol=1e-5, atol=1e-5)
  # The pooled vector is the mean over the real frames only.
  np.testing.assert_allclose(p1[2], t1[2, :2].mean(0), rtol=1e-5, atol=1e-6)
  # Without a mask, exactly-zero frames (the feature files' padding) are the padding.
  zero_padded = jnp.where(mask[..., None], x, 0.0)
  np.testing.assert_allclose(apply(zero_padded, None)[0], p1, rtol=1e-5, atol=1e-5)
  # Training-mode BatchNorm statistics ignore padded frames too.
  stats = jax.jit(lambda x: enc.apply(variables, x, train=True, mask=mask, mutable=['batch_stats'],
                                      rngs={'dropout': jax.random.key(0)})[1])
  for a, b in zip(jax.tree.leaves(stats(x)), jax.tree.leaves(stats(garbage))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
