"""Encoders, fusion heads and the multimodal classifier: shapes, parameter keys,
gradients reaching every encoder, hand-computed fusion formulas, configs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from absl import flags
from ml_collections import config_flags

from configs.lib import base
from mlb_jax import models
from tests.tree_asserts import assert_trees_all_close, assert_trees_all_equal

B, C = 4, 5
FUSION_KEYS = {
    'late_linear': {'kernel', 'bias'},
    'mid_mlp': {'Dense_0', 'Dense_1', 'Dense_2'},
    'mmcosine': {'kernel_audio', 'kernel_video'},
    'film': {'film', 'out'},
    'gated': {'gate', 'value', 'out'},
    'mmtm': {'squeeze', 'excite_audio', 'excite_video', 'classifier_audio', 'classifier_video'},
    'transformer': {'token_audio', 'token_video', 'proj_audio', 'proj_video', 'cls_token',
                    'conformer', 'out'},
}


def small_model_config(**overrides):
  c = base.get_config().model
  c.fusion = 'late_linear'
  c.features = 12
  c.mlp.hidden = (16,)
  c.conv.widths = (4,)
  c.resnet18.width = 4
  c.conformer.update(dim=16, heads=2, kernel=3, bottleneck=6, layers=1)
  c.transformer.update(dim=16, heads=2, kernel=3, layers=1)
  c.encoders = ml_collections.ConfigDict({'audio': 'conv', 'video': 'frames'})
  c.update(overrides)
  return c


SHAPES = {'audio': (16, 12), 'video': (2, 8, 8, 3), 'text': (7,)}


def make_batch(modalities, seed=0):
  rng = np.random.default_rng(seed)
  batch = {m: jnp.asarray(rng.standard_normal((B,) + SHAPES[m]), jnp.float32) for m in modalities}
  batch['label'] = jnp.asarray(rng.integers(0, C, B))
  return batch


def build(fusion, modalities=('audio', 'video'), dtype='float32', **overrides):
  cfg = small_model_config(fusion=fusion, **overrides)
  if 'text' in modalities:
    cfg.encoders.text = 'mlp'
  return models.build_model(cfg, modalities, SHAPES, C, dtype=dtype)


def init(model, batch):
  return jax.jit(lambda b: model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                                      b, train=False))(batch)


@pytest.mark.parametrize('fusion', [f if f != 'transformer' else pytest.param(f, marks=pytest.mark.slow)  # its step:
                                    for f in sorted(models.FUSIONS)])  # tests/test_methods_fusions.py
def test_fusion_shapes_keys_and_gradients_reach_every_encoder(fusion):
  model = build(fusion)
  batch = make_batch(('audio', 'video'))
  variables = init(model, batch)
  assert set(variables['params']) == {'audio', 'video', 'fusion'}
  assert set(variables['params']['audio']) == {'encoder', 'head'}
  assert set(variables['params']['fusion']) == FUSION_KEYS[fusion]

  def fused_loss(params):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch,
                         train=True, rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(out.logits['fused'], batch['label']).mean()
    return loss, out

  grads, out = jax.jit(jax.grad(fused_loss, has_aux=True))(variables['params'])
  assert {k: v.shape for k, v in out.logits.items()} == {'fused': (B, C), 'audio': (B, C), 'video': (B, C)}
  assert {k: v.shape for k, v in out.features.items()} == {'audio': (B, 12), 'video': (B, 12)}
  assert (out.contributions is not None) == (fusion in ('late_linear', 'mmcosine', 'mmtm'))
  # CE(fused) alone reaches every parameter of both encoders (heads get none).
  # The transformer fusion reads the un-pooled tokens, so the small encoders'
  # projection of the pooled vector ('Dense_0') only serves the unimodal heads.
  pooled_only = {'Dense_0'} if fusion == 'transformer' else set()
  for m in ('audio', 'video'):
    for path, g in jax.tree_util.tree_leaves_with_path(grads[m]['encoder']):
      if path[0].key not in pooled_only:
        assert np.any(np.asarray(g) != 0), f'{fusion}: no gradient at {m}{jax.tree_util.keystr(path)}'
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads[m]['head']))


@pytest.mark.parametrize('fusion', sorted(models.FUSIONS))
def test_three_modalities(fusion):
  model = build(fusion, modalities=('audio', 'video', 'text'))
  batch = make_batch(('audio', 'video', 'text'))
  variables = jax.eval_shape(lambda b: model.init(jax.random.key(0), b, train=False), batch)
  assert set(variables['params']) == {'audio', 'video', 'text', 'fusion'}
  out = jax.eval_shape(lambda v, b: model.apply(v, b, train=False), variables, batch)
  assert {k: v.shape for k, v in out.logits.items()} == {m: (B, C) for m in ('fused', 'audio', 'video', 'text')}


def test_film_and_gated_match_their_formulas():
  rng = np.random.default_rng(0)
  f_a = jnp.asarray(rng.standard_normal((B, 6)), jnp.float32)
  f_v = jnp.asarray(rng.standard_normal((B, 4)), jnp.float32)
  feats = {'audio': f_a, 'video': f_v}
  film = models.FiLMFusion(('audio', 'video'), C)
  p = film.init(jax.random.key(0), feats, train=False)['params']
  gamma_beta = f_a @ p['film']['kernel'] + p['film']['bias']          # audio conditions video
  gamma, beta = gamma_beta[:, :4], gamma_beta[:, 4:]
  expected = (gamma * f_v + beta) @ p['out']['kernel'] + p['out']['bias']
  np.testing.assert_allclose(film.apply({'params': p}, feats, train=False), expected, rtol=1e-5, atol=1e-6)
  bound = 1 / np.sqrt(6)   # PyTorch's default Linear init
  assert np.abs(p['film']['kernel']).max() <= bound and np.abs(p['film']['kernel']).max() > 0.8 * bound

  gated = models.GatedFusion(('audio', 'video'), C)
  p = gated.init(jax.random.key(0), feats, train=False)['params']
  gate = jax.nn.sigmoid(f_a @ p['gate']['kernel'] + p['gate']['bias'])
  value = f_v @ p['value']['kernel'] + p['value']['bias']
  expected = (gate * value) @ p['out']['kernel'] + p['out']['bias']
  np.testing.assert_allclose(gated.apply({'params': p}, feats, train=False), expected, rtol=1e-5, atol=1e-6)
  assert p['gate']['kernel'].shape == (6, 4) and p['value']['kernel'].shape == (4, 4)


def test_transformer_fusion_tokens_and_masks():
  fusion = models.TransformerFusion(('audio', 'video'), C, dim=8, layers=1, heads=2, kernel=3)
  rng = np.random.default_rng(0)
  tokens = {'audio': jnp.asarray(rng.standard_normal((B, 3, 6)), jnp.float32),
            'video': jnp.asarray(rng.standard_normal((B, 5, 4)), jnp.float32)}
  feats = {m: t.mean(1) for m, t in tokens.items()}
  p = fusion.init(jax.random.key(0), feats, train=False, tokens=tokens)
  assert p['params']['cls_token'].shape == (8,) and p['params']['token_video'].shape == (4,)
  apply = jax.jit(lambda t, mask: fusion.apply(p, feats, train=False, tokens=t, token_masks=mask))
  z = apply(tokens, None)
  assert z.shape == (B, C)
  changed = dict(tokens, video=tokens['video'].at[:, 4].add(1.0))
  assert not np.allclose(apply(changed, None), z)
  # A masked token does not reach the CLS output (inference mode: no dropout, running BN stats).
  mask = {'video': jnp.arange(5)[None, :].repeat(B, 0) < 4}
  np.testing.assert_allclose(apply(changed, mask), apply(tokens, mask), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='needs the token sequences'):
    fusion.apply(p, feats, train=False)


def test_resnet_tokens_feed_the_transformer_fusion():
  cfg = small_model_config(fusion='transformer', encoder='resnet18')
  cfg.encoders = ml_collections.ConfigDict()
  shapes = {'audio': (64, 47), 'video': (2, 64, 64, 3)}
  model = models.build_model(cfg, ('audio', 'video'), shapes, C)
  batch = {m: jnp.zeros((B,) + s) for m, s in shapes.items()}
  variables = jax.eval_shape(lambda b: model.init(jax.random.key(0), b, train=False), batch)
  # 1 CLS + 2 x 2 audio positions + 2 frames x 2 x 2 video positions, each 8 w = 32 wide.
  feats, tokens, masks = jax.eval_shape(
      lambda v, b: model.apply(v, b, train=False, method='encode_tokens'), variables, batch)
  assert tokens['audio'].shape == (B, 4, 32) and tokens['video'].shape == (B, 8, 32) and masks == {}
  assert variables['params']['fusion']['proj_audio']['kernel'].shape == (32, 16)


def test_padding_mask_reaches_the_conformer_encoder():
  cfg = small_model_config(encoders=ml_collections.ConfigDict({'audio': 'conformer', 'video': 'frames'}))
  shapes = {'audio': (6, 10), 'video': (2, 8, 8, 3)}
  model = models.build_model(cfg, ('audio', 'video'), shapes, C)
  rng = np.random.default_rng(0)
  batch = {'audio': jnp.asarray(rng.standard_normal((B, 6, 10)), jnp.float32),
           'video': jnp.asarray(rng.standard_normal((B, 2, 8, 8, 3)), jnp.float32),
           'audio_mask': jnp.arange(6)[None, :].repeat(B, 0) < 4}
  variables = init(model, {k: batch[k] for k in ('audio', 'video')})
  encode = jax.jit(lambda b: model.apply(variables, b, train=False, method='encode'))
  noisy = dict(batch, audio=batch['audio'].at[:, 4:].set(100.0))
  np.testing.assert_allclose(encode(noisy)['audio'], encode(batch)['audio'], rtol=1e-5, atol=1e-5)
  unmasked = {k: v for k, v in noisy.items() if k != 'audio_mask'}
  assert not np.allclose(encode(unmasked)['audio'], encode(batch)['audio'])


def test_unknown_names_raise():
  with pytest.raises(ValueError, match="unknown model.fusion 'concat'"):
    build('concat')
  with pytest.raises(ValueError, match="model.fusion 'auto' must be resolved"):
    build('auto')
  with pytest.raises(ValueError, match="unknown dtype 'float16'"):
    models.compute_dtype('float16')
  with pytest.raises(ValueError, match="unknown dtype 'float16'"):
    build('late_linear', dtype='float16')
  with pytest.raises(ValueError, match='FiLM fusion needs at least 2 modalities'):
    models.FiLMFusion(('audio',), C).init(jax.random.key(0), {'audio': jnp.ones((2, 3))}, train=False)


def test_model_kernels_setting():
  """`model.kernels` picks the encoders' ops; parameters and outputs do not depend on it."""
  cpu = jax.default_backend() == 'cpu'
  assert models.resolve_kernels('auto') == ('cpu' if cpu else 'plain')
  assert (models.resolve_kernels('plain'), models.resolve_kernels('cpu')) == ('plain', 'cpu')
  assert models.kernel_ops('cpu') is models.KERNELS['cpu'] and models.kernel_ops('plain') is models.PLAIN_OPS
  for bad in ('fast', 'gpu', ''):
    with pytest.raises(ValueError, match=rf"unknown model.kernels '{bad}'; expected one of \['auto', 'cpu', 'plain'\]"):
      build('late_linear', kernels=bad)
  batch = make_batch(('audio', 'video'))
  built = {k: build('late_linear', kernels=k) for k in ('plain', 'cpu', 'auto')}
  for k, model in built.items():
    assert all(enc.keywords['ops'] is models.kernel_ops(k) for enc in model.encoders.values()), k
  variables = {k: init(m, batch) for k, m in built.items()}
  assert_trees_all_equal(variables['cpu'], variables['plain'])
  apply = lambda m: jax.jit(lambda v, b: m.apply(v, b, train=True, mutable=['batch_stats'])[0].logits)
  assert_trees_all_close(apply(built['cpu'])(variables['plain'], batch),
                         apply(built['plain'])(variables['plain'], batch), rtol=1e-4, atol=1e-5)


def test_encoders_shapes_and_tokens():
  cfg = small_model_config()
  cases = {'mlp': ((7,), (B, 1, 12)), 'conv': ((16, 12), (B, 48, 4)), 'frames': ((2, 8, 8, 3), (B, 32, 4)),
           'resnet18': ((2, 32, 32, 3), (B, 2, 32)), 'conformer': ((6, 10), (B, 6, 16))}
  for name, (shape, token_shape) in cases.items():
    enc = models.ENCODERS[name](cfg, jnp.float32, models.PLAIN_OPS)()
    x = jnp.zeros((B,) + shape)
    variables = jax.eval_shape(lambda x: enc.init(jax.random.key(0), x, train=False), x)
    pooled, tokens = jax.eval_shape(lambda v, x: enc.apply(v, x, train=False, return_tokens=True), variables, x)
    assert tokens.shape == token_shape, name
    assert pooled.shape == (B, token_shape[-1] if name in ('resnet18', 'conformer') else 12), name


@pytest.mark.parametrize('kernels', ['plain', 'cpu'])
def test_patch_conv_is_nn_conv(kernels):
  """`PatchConv` (the small encoders' conv; im2col with the CPU kernels) computes nn.Conv's SAME, strided map."""
  from mlb_jax.models.encoders import PatchConv
  import flax.linen as nn
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 8, 3)), jnp.float32)
  for stride in (1, 2):
    ours = PatchConv(5, stride=stride, ops=models.KERNELS[kernels])
    params = ours.init(jax.random.key(0), x)
    reference = nn.Conv(5, (3, 3), strides=(stride, stride), use_bias=False)
    assert jax.tree.map(jnp.shape, reference.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)


BF16_CASES = {  # every encoder kind and every fusion head at least once
    'late_linear': {'audio': 'conv', 'video': 'resnet18', 'text': 'mlp'},
    'transformer': {'audio': 'mlp', 'video': 'frames'},
    'mid_mlp': {'audio': 'mlp', 'video': 'frames'},
    'mmcosine': {'audio': 'mlp', 'video': 'frames'},
    'film': {'audio': 'conformer', 'video': 'frames'},
    'gated': {'audio': 'mlp', 'video': 'frames'},
}


@pytest.mark.parametrize('fusion', [f if f not in ('transformer', 'film') else pytest.param(f, marks=pytest.mark.slow)
                                    for f in sorted(BF16_CASES)])  # slow: the transformer fusion, the conformer encoder
def test_bfloat16_computes_in_bfloat16_with_float32_params_logits_and_loss(fusion):
  """config.dtype reaches every encoder kind and the fusion head: they compute
  in bfloat16 inside, while parameters, features, logits and the loss stay float32."""
  from mlb_jax import losses
  encoders = BF16_CASES[fusion]
  modalities = tuple(encoders)
  shapes = dict(SHAPES, video=(1, 16, 16, 3) if encoders['video'] == 'resnet18' else SHAPES['video'],
                audio=(6, 10) if encoders['audio'] == 'conformer' else SHAPES['audio'])
  cfg = small_model_config(fusion=fusion, encoders=ml_collections.ConfigDict(encoders))
  batch = {m: jnp.asarray(np.random.default_rng(1).standard_normal((B,) + shapes[m]), jnp.float32)
           for m in modalities}
  labels = jnp.arange(B) % C
  fused = {}
  for dtype in ('float32', 'bfloat16'):
    model = models.build_model(cfg, modalities, shapes, C, dtype=dtype)
    variables = init(model, batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables)), dtype
    out, state = model.apply(variables, batch, train=True, rngs={'dropout': jax.random.key(2)},
                             capture_intermediates=lambda *_: True, mutable=['intermediates', 'batch_stats'])
    inter = state['intermediates']
    for part in (*modalities, 'fusion'):  # what the submodules computed
      inner = {x.dtype for x in jax.tree.leaves(inter[part]) if x.ndim >= 2}
      assert (jnp.dtype('bfloat16') in inner) == (dtype == 'bfloat16'), (dtype, part, inner)
    assert all(f.dtype == jnp.float32 for f in out.features.values())
    assert all(z.dtype == jnp.float32 for z in out.logits.values())
    total, _ = losses.multi_loss(out.logits, labels, {h: 1.0 for h in out.logits})
    assert total.dtype == jnp.float32 and np.isfinite(float(total))
    fused[dtype] = np.asarray(out.logits['fused'])
  diff = np.abs(fused['bfloat16'] - fused['float32'])  # same parameters, rounded computation
  assert 0 < diff.max() < 0.5, diff.max()


# ------------------------------------------------------------------ configs


def parse_config(argv):
  holder = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=holder, sys_argv=['prog'] + argv)
  holder(['prog'] + argv)
  return holder.config


def test_cremad_config_has_the_authors_hyperparameters():
  c = parse_config(['--config=configs/cremad_mlb.py'])
  # fusion 'auto': the build resolves it to late_linear for MLB.
  assert (c.method, c.model.encoder, c.model.fusion, c.model.resnet18.width) == ('mlb', 'resnet18', 'auto', 64)
  assert c.model.kernels == 'auto'
  o = c.optimizer
  assert (o.name, o.learning_rate, o.weight_decay, o.eps, o.b1, o.b2) == ('adam', 1e-4, 1e-4, 1e-7, 0.9, 0.999)
  assert (o.schedule, o.warmup_steps, o.restart_period, o.restart_mult) == ('cosine_restarts', 780, 4, 2)
  assert (c.balancing.mlb.alpha, c.balancing.mlb.beta_max, c.balancing.apply_to, c.balancing.score) == (
      0.8, 2.0, 'gradients', 'probability')
  assert (c.data.name, c.data.batch_size, tuple(c.data.audio_shape), tuple(c.data.video_shape)) == (
      'cremad', 32, (257, 188), (3, 224, 224, 3))
  assert (c.loss.fused, c.loss.unimodal, c.seed, c.data.fold) == (1.0, 1.0, 109, 1)
  assert parse_config(['--config=configs/cremad_mlb.py:fold=2']).seed == 337
  with pytest.raises(flags.IllegalFlagValueError, match='fold must be 0, 1 or 2'):
    parse_config(['--config=configs/cremad_mlb.py:fold=3'])


@pytest.mark.slow  # every fusion trains a step in tests/test_methods_fusions.py
@pytest.mark.parametrize('fusion', ['film', 'transformer'])
def test_cremad_smoke_with_a_fusion_from_the_command_line_takes_a_step(fusion):
  from mlb_jax import build
  c = parse_config(['--config=configs/cremad_mlb.py:smoke', f'--config.model.fusion={fusion}',
                    '--config.model.transformer.dim=16', '--config.model.transformer.heads=2',
                    '--config.model.transformer.kernel=3', '--config.model.transformer.layers=1'])
  assert c.model.fusion == fusion and c.data.name == 'synthetic'
  exp = build.build(c)
  training = exp.training
  state = jax.device_get(training.initial_state(exp.dataset.splits['train'][0], [c.seed]))
  assert set(state.params) == {'audio', 'video', 'fusion'} and set(state.params['fusion']) == FUSION_KEYS[fusion]
  assert state.params['video']['encoder']['resnet']['conv1']['kernel'].shape == (7, 7, 3, 8)
  assert state.params['audio']['encoder']['resnet']['conv1']['kernel'].shape == (7, 7, 1, 8)
  from data_pipelines import common
  batch = next(common.train_batches(exp.dataset.splits['train'], batch_size=c.data.batch_size, seed=0))
  new, metrics = training.train_step(jax.device_put(state), training.place_batch([batch]))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert 'scale_audio' in metrics and int(new.step) == 1
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new.params, state.params)
  assert all(jax.tree.leaves(moved['video']['encoder'])) and all(jax.tree.leaves(moved['fusion']))
  assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: np.allclose(a, b), new.batch_stats,
                                              state.batch_stats)))

