"""`balancing.mlb.fusion_slices`: k_m also scales modality m's rows of the fusion input layer
(mlb_jax/optim.py `fusion_slices`, `scale_fusion_slices`), as the authors' name-substring selection."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import synthetic as synthetic_config
from mlb_jax import build, optim

PAIR = ('audio', 'video')
DIMS = {'audio': 3, 'video': 2}


def test_slices_of_each_fusion():
  assert optim.fusion_slices('late_linear', PAIR, DIMS) == {('fusion', 'kernel'): (('audio', 0, 3), ('video', 3, 5))}
  assert optim.fusion_slices('mid_mlp', PAIR, DIMS) == {
      ('fusion', 'Dense_0', 'kernel'): (('audio', 0, 3), ('video', 3, 5))}
  three = ('audio', 'video', 'text')
  assert optim.fusion_slices('gated', three, {**DIMS, 'text': 4}) == {
      ('fusion', 'gate', 'kernel'): (('audio', 0, 3),),
      ('fusion', 'value', 'kernel'): (('video', 0, 2), ('text', 2, 6))}
  assert optim.fusion_slices('mmcosine', PAIR, DIMS) == {('fusion', 'kernel_audio'): (('audio', 0, 3),),
                                                         ('fusion', 'kernel_video'): (('video', 0, 2),)}
  for fusion in ('film', 'transformer', 'mmtm'):
    with pytest.raises(ValueError, match=f"fusion_slices is defined for .* got model.fusion '{fusion}'"):
      optim.fusion_slices(fusion, PAIR, DIMS)


def test_rows_of_the_late_linear_kernel_take_their_modality_scale():
  params = {'audio': {'encoder': {'kernel': jnp.ones((2, 3))}}, 'video': {'encoder': {'kernel': jnp.ones((2, 2))}},
            'fusion': {'kernel': jnp.ones((5, 4)), 'bias': jnp.ones(4)}}
  grads = jax.tree.map(lambda x: jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape) + 1, params)
  cfg = synthetic_config.get_config('smoke').optimizer
  cfg.name, cfg.learning_rate, cfg.weight_decay, cfg.schedule = 'sgd', 1.0, 0.0, 'constant'
  cfg.momentum = 0.0
  k = {'audio': jnp.float32(2.0), 'video': jnp.float32(0.5)}
  slices = optim.fusion_slices('late_linear', PAIR, DIMS)
  for apply_to in optim.APPLY_TO:
    tx = optim.make_optimizer(cfg, optim.modality_labels, apply_to, slices=slices)
    updates, _ = tx.update(grads, tx.init(params), params, modality_scales=k)
    kernel = np.asarray(grads['fusion']['kernel'])
    np.testing.assert_allclose(np.asarray(updates['fusion']['kernel'])[:3], -2.0 * kernel[:3])
    np.testing.assert_allclose(np.asarray(updates['fusion']['kernel'])[3:], -0.5 * kernel[3:])
    np.testing.assert_allclose(np.asarray(updates['fusion']['bias']), -np.asarray(grads['fusion']['bias']))
    np.testing.assert_allclose(np.asarray(updates['audio']['encoder']['kernel']),
                               -2.0 * np.asarray(grads['audio']['encoder']['kernel']))
    # without the option the fusion head keeps the base rate
    plain = optim.make_optimizer(cfg, optim.modality_labels, apply_to)
    updates, _ = plain.update(grads, plain.init(params), params, modality_scales=k)
    np.testing.assert_allclose(np.asarray(updates['fusion']['kernel']), -kernel)


def test_a_slice_naming_no_parameter_is_an_error():
  tx = optim.scale_fusion_slices({('fusion', 'Dense_0', 'kernel'): (('audio', 0, 3),)})
  params = {'fusion': {'kernel': jnp.ones((5, 4))}}
  with pytest.raises(ValueError, match='name no parameter'):
    tx.update(params, tx.init(params), modality_scales={'audio': 2.0})


@pytest.mark.parametrize('fusion', ['late_linear', pytest.param('gated', marks=pytest.mark.slow)])
def test_mlb_step_scales_the_fusion_rows_only_with_the_option(fusion):
  config = synthetic_config.get_config('method=mlb,smoke')
  config.model.fusion = fusion
  config.optimizer.name, config.optimizer.momentum, config.optimizer.weight_decay = 'sgd', 0.0, 0.0
  config.balancing.apply_to = 'updates'
  spec = build.DataSpec(PAIR, {'audio': tuple(config.data.audio_shape), 'video': tuple(config.data.video_shape)},
                        config.data.num_classes, 4)
  rng = np.random.default_rng(0)
  batch = {'audio': rng.normal(size=(16, *spec.sample_shapes['audio'])).astype(np.float32),
           'video': rng.normal(size=(16, *spec.sample_shapes['video'])).astype(np.float32),
           'label': rng.integers(0, config.data.num_classes, 16).astype(np.int32)}
  moved = {}
  for option in (False, True):
    config.balancing.mlb.fusion_slices = option
    training = build.build_training(config, spec, donate=False)
    state = training.initial_state({m: batch[m][0] for m in PAIR}, [0])
    new, metrics = training.train_step(state, training.place_batch([batch]))
    moved[option] = (jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new.params['fusion'], state.params['fusion']),
                     {m: float(metrics[f'scale_{m}']) for m in PAIR})
  (plain, k0), (sliced, k1) = moved[False], moved[True]
  assert k0 == k1 and k0['audio'] != k0['video']
  slices = optim.fusion_slices(fusion, PAIR, {'audio': config.model.features, 'video': config.model.features})
  for path, blocks in slices.items():
    a, b = plain, sliced
    for key in path[1:]:
      a, b = a[key], b[key]
    for m, lo, hi in blocks:
      np.testing.assert_allclose(b[lo:hi], k0[m] * a[lo:hi], rtol=1e-4, atol=1e-7)
  config.model.fusion = 'film'
  config.balancing.mlb.fusion_slices = True
  with pytest.raises(ValueError, match='fusion_slices'):
    build.build_training(config, spec)
