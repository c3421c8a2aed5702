"""Every method with every fusion on the synthetic smoke data: the build either refuses the pair
(ValueError naming both) or gives a training whose step runs.

Building compiles nothing, so the whole matrix is checked for build-or-refuse; one train step is
compiled and run for every method with `model.fusion = 'auto'` and for MLB with every fusion."""

import os
from typing import NamedTuple

import jax
import numpy as np
import pytest

import data_pipelines
from configs import arrays as arrays_config
from configs import synthetic as synthetic_config
from data_pipelines import common
from mlb_jax import balancing, build, loop, models
from mlb_jax.models import fusion as fusion_heads

METHODS = sorted(balancing.METHODS)
FUSIONS = [*sorted(models.FUSIONS), 'auto']
HEAD_CLASSES = {'late_linear': fusion_heads.LateLinearFusion, 'mid_mlp': fusion_heads.MidMLPFusion,
                'mmcosine': fusion_heads.MMCosineFusion, 'film': fusion_heads.FiLMFusion,
                'gated': fusion_heads.GatedFusion, 'transformer': fusion_heads.TransformerFusion,
                'mmtm': fusion_heads.MMTMFusion}


DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'methods.md')


class Row(NamedTuple):
  """One method's row of the methods table in docs/methods.md."""
  unimodal_heads: str            # 'probe' | 'trained'
  has_scales: bool               # a k for the optimizer ('k_m from' not '– (no k)' nor 'inside the loss')
  max_modalities: int | None     # '2' -> 2, '≥ 2' -> None
  fusions: frozenset             # the fusions it is defined for


def methods_table() -> dict[str, Row]:
  """{method: Row} parsed from the methods table of docs/methods.md."""
  with open(DOCS, encoding='utf-8') as f:
    lines = f.read().splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith('| method | objective |'))
  rows = {}
  for line in lines[header + 2:]:
    if not line.startswith('|'):
      break
    cells = [c.strip() for c in line.strip('|').split('|')]
    names, heads, source, modalities, fusions = cells[0], cells[2], cells[3], cells[5], cells[6]
    if fusions == 'any':
      allowed = frozenset(models.FUSIONS)
    elif fusions.startswith('all but '):
      allowed = frozenset(models.FUSIONS) - {f.strip() for f in fusions[len('all but '):].split(',')}
    else:
      allowed = frozenset(f.strip() for f in fusions.split(','))
    assert allowed <= set(models.FUSIONS), line
    has_scales = not source.startswith('–') and 'inside the loss' not in source
    row = Row(heads, has_scales, None if modalities.startswith('≥') else int(modalities), allowed)
    for name in names.split(','):
      rows[name.strip().strip('`')] = row
  return rows


def resolved(method: str, fusion: str) -> str:
  """docs/methods.md: 'auto' is the method's own fusion (mmcosine for MMCosine, mmtm for Greedy), else late_linear."""
  if fusion != 'auto':
    return fusion
  return {'mmcosine': 'mmcosine', 'greedy': 'mmtm'}.get(method, 'late_linear')


def defined(method: str, fusion: str) -> bool:
  """The fusions column of the methods table in docs/methods.md."""
  return resolved(method, fusion) in methods_table()[method].fusions


def smoke_config(method: str, fusion: str):
  config = synthetic_config.get_config(f'method={method},smoke')
  config.model.fusion = fusion
  t = config.model.transformer   # paper-sized by default; the smoke widths
  t.dim, t.layers, t.heads, t.ff_mult, t.kernel = 16, 1, 2, 2, 3
  return config


def smoke_spec(config) -> build.DataSpec:
  d = config.data
  return build.DataSpec(('audio', 'video'), {'audio': tuple(d.audio_shape), 'video': tuple(d.video_shape)},
                        d.num_classes, common.steps_per_epoch(d.num_train, d.batch_size))


@pytest.fixture(scope='module')
def smoke_dataset():
  return data_pipelines.load(smoke_config('mlb', 'auto').data)


def test_the_smoke_spec_is_the_datasets(smoke_dataset):
  config = smoke_config('mlb', 'auto')
  assert build.data_spec(config, smoke_dataset) == smoke_spec(config)
  assert smoke_spec(config).steps_per_epoch == 4


def test_the_matrix_covers_every_fusion():
  assert set(HEAD_CLASSES) == set(models.FUSIONS)


def test_every_method_has_a_row_in_the_methods_table():
  table = methods_table()
  assert set(balancing.METHODS) <= set(table), sorted(set(balancing.METHODS) - set(table))
  # spot checks of the parse against the table as written
  assert table['agm'].fusions == frozenset(models.FUSIONS) - {'transformer', 'mmtm'} and table['agm'].max_modalities == 2
  assert table['ogm'] == table['ogm_ge'] and table['ogm'].fusions == {'late_linear', 'mmcosine'}
  assert table['mmcosine'].fusions == {'mmcosine'} and not table['mmcosine'].has_scales
  assert table['mlb'].has_scales and table['mlb'].unimodal_heads == 'trained' and table['mlb'].max_modalities is None


@pytest.mark.parametrize('fusion', FUSIONS)
@pytest.mark.parametrize('method', METHODS)
def test_every_method_with_every_fusion_builds_or_is_refused(method, fusion):
  config = smoke_config(method, fusion)
  if not defined(method, fusion):
    with pytest.raises(ValueError) as info:
      build.build_training(config, smoke_spec(config))
    message = str(info.value)
    assert f"'{method}'" in message and f"'{resolved(method, fusion)}'" in message, message
    return
  training = build.build_training(config, smoke_spec(config))
  assert training.method.name == method
  assert training.model.fusion.func is HEAD_CLASSES[resolved(method, fusion)]


# Every method with its 'auto' fusion, MLB with every fusion, and AGM with the one fusion whose
# weight leaves are not named 'kernel' (its clip looks for them).
STEP_CASES = [(m, 'auto') for m in METHODS] + [('mlb', f) for f in sorted(models.FUSIONS)] + [('agm', 'mmcosine')]


@pytest.mark.parametrize('method,fusion', STEP_CASES)
def test_one_train_step_is_finite(smoke_dataset, method, fusion):
  config = smoke_config(method, fusion)
  training = build.build_training(config, build.data_spec(config, smoke_dataset))
  exp = build.Experiment(config, smoke_dataset, training)
  state = loop.initial_state([exp])
  if training.method.epoch_update is not None:   # as the loop does before the first step of epoch 0
    state = training.method.epoch_update(loop.epoch_context(exp, 0, 0), state)
  before = jax.device_get(state.params)
  it = common.train_batches(smoke_dataset.splits['train'], batch_size=config.data.batch_size, seed=0)
  try:
    batch = next(it)
  finally:
    if hasattr(it, 'close'):
      it.close()
  state, metrics = training.train_step(state, training.place_batch([batch]))
  metrics = jax.device_get(metrics)
  assert np.isfinite(metrics['loss']), metrics
  bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
  assert not bad, f'non-finite metrics {bad}'
  assert int(jax.device_get(state.step)) == 1
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), jax.device_get(state.params),
                       before)
  assert moved['fusion'] and any(jax.tree.leaves(moved['audio'])) and any(jax.tree.leaves(moved['video']))


def test_mmcosine_with_auto_fusion_builds_the_mmcosine_head():
  config = smoke_config('mmcosine', 'auto')
  assert config.model.fusion == 'auto'
  training = build.build_training(config, smoke_spec(config))
  assert training.model.fusion.func is fusion_heads.MMCosineFusion
  assert training.model.fusion.keywords['scale'] == config.model.mmcosine.scale


def test_arrays_config_runs_mmcosine_without_a_fusion_flag(tmp_path):
  rng = np.random.default_rng(0)
  n = 40
  label = (np.arange(n) % 3).astype(np.int64)
  split = np.array([0] * 24 + [1] * 8 + [2] * 8)
  path = str(tmp_path / 'features.npz')
  np.savez(path, audio=rng.normal(size=(n, 6)).astype(np.float32) + label[:, None],
           video=rng.normal(size=(n, 5)).astype(np.float32), label=label, split=split)
  config = arrays_config.get_config('method=mmcosine,smoke')
  config.data.path = path
  assert config.model.fusion == 'auto'
  exp = build.build(config)
  assert exp.training.model.fusion.func is fusion_heads.MMCosineFusion
  results = loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert results[0]['method'] == 'mmcosine'
  assert all(np.isfinite(d['loss']) for d in results[0]['test'].values())
  # the cosine head's parameters (one class-weight matrix per modality, no bias) are what trained
  state = loop.initial_state([exp])
  assert sorted(state.params['fusion']) == ['kernel_audio', 'kernel_video']


def test_agm_with_the_transformer_fusion_is_refused_before_training(tmp_path):
  config = smoke_config('agm', 'transformer')
  config.train.num_steps = 2
  workdir = tmp_path / 'w'
  with pytest.raises(ValueError, match="'agm' is not defined with model.fusion 'transformer'"):
    loop.train_and_evaluate(config, str(workdir))
  assert not os.path.exists(workdir / 'checkpoints') and not os.path.exists(workdir / loop.HISTORY)
