"""Configs build, smoke variants train, results.json has its documented shape, bad input fails early."""

import glob
import importlib.util
import json
import os

import numpy as np
import pytest

from configs import arrays as arrays_config
from configs.lib import base
from configs import synthetic as synthetic_module
from mlb_jax import balancing, build, loop
from tests.test_data import write_npz

CONFIG_FILES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), '..', 'configs', '*.py')))


def synthetic_config(arg):
  return synthetic_module.get_config(arg)


def load_config_module(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


RUNNABLE_CONFIGS = [p for p in CONFIG_FILES if not p.endswith('base.py') and 'def get_config' in open(p).read()]


@pytest.mark.parametrize('path', RUNNABLE_CONFIGS, ids=os.path.basename)
def test_every_config_builds_with_its_smoke_variant(path):
  module = load_config_module(path)
  full = module.get_config()
  smoke = module.get_config('smoke')
  assert full.method in balancing.METHODS
  assert smoke.train.num_steps <= 5
  if smoke.data.name == 'synthetic':   # real-data configs need a prepared dataset; smoke runs on synthetic
    exp = build.build(smoke)
    assert exp.training.method.name == smoke.method
    assert exp.training.num_replicas == 1 and exp.config is smoke


def test_parse_arg_rejects_unknown_keys():
  assert base.parse_arg('method=joint,smoke', {'method': 'mlb', 'smoke': False}) == {
      'method': 'joint', 'smoke': True}
  with pytest.raises(ValueError, match="unknown config argument 'metod'"):
    base.parse_arg('metod=joint', {'method': 'mlb'})


def check_results(results, modalities):
  assert set(results) >= {'method', 'best_step', 'test', 'config'}
  assert set(results['test']) == {'fused', *modalities}
  for head in results['test'].values():
    assert 0.0 <= head['accuracy'] <= 1.0
    assert 0.0 <= head['macro_f1'] <= 1.0
  assert 0.0 <= results['test']['fused']['ece'] <= 1.0


@pytest.mark.parametrize('method', ['joint', 'multiloss', 'mlb'])
def test_synthetic_smoke_trains_two_steps_and_writes_results(tmp_path, method):
  config = synthetic_config(f'method={method},smoke')
  [results] = loop.train_and_evaluate(config, str(tmp_path / 'w'))  # one seed: one results dict
  check_results(results, ('audio', 'video'))
  on_disk = json.load(open(tmp_path / 'w' / 'results.json'))
  assert on_disk['method'] == method and on_disk['best_step'] == results['best_step']
  assert on_disk['config']['method'] == method


def test_arrays_three_modalities_train(tmp_path):
  path = write_npz(tmp_path / 'three.npz', n=60)
  config = arrays_config.get_config('method=mlb,smoke')
  config.data.path = path
  [results] = loop.train_and_evaluate(config, str(tmp_path / 'w'))
  check_results(results, ('audio', 'video', 'text'))


def test_training_resumes_from_the_last_checkpoint(tmp_path):
  config = synthetic_config('smoke')
  config.train.num_steps = 4
  [straight] = loop.train_and_evaluate(config, str(tmp_path / 'a'))
  config.train.num_steps = 2
  loop.train_and_evaluate(config, str(tmp_path / 'b'))
  config.train.num_steps = 4
  with pytest.raises(ValueError, match=r'another config.*train.num_steps: 2 \(stored\) vs 4 \(now\)'):
    loop.train_and_evaluate(config, str(tmp_path / 'b'))  # a changed config is refused unless allowed
  [resumed] = loop.train_and_evaluate(config, str(tmp_path / 'b'), allow_changed=('train.num_steps',))
  assert resumed['best_step'] == straight['best_step']
  for head, d in straight['test'].items():
    np.testing.assert_allclose(resumed['test'][head]['loss'], d['loss'], rtol=1e-5)


@pytest.mark.parametrize('field, value, message', [
    ('method', 'nope', "unknown method 'nope'"),
    ('modalities', ('audio', 'text'), r"names \['text'\]"),
    ('model.fusion', 'nope', "unknown model.fusion 'nope'"),
    ('model.encoder', 'nope', "unknown encoder 'nope'"),
    ('balancing.apply_to', 'params', "unknown balancing.apply_to 'params'"),
    ('balancing.score', 'nope', "unknown balancing.score 'nope'"),
    ('optimizer.name', 'rmsprop', "unknown optimizer.name 'rmsprop'"),
    ('data.name', 'nope', "unknown data.name 'nope'"),
])
def test_bad_config_fails_before_training(field, value, message):
  config = synthetic_config('smoke')
  if field == 'model.encoder':
    config.model.encoders = {}
  section, _, key = field.rpartition('.')
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError, match=message):
    build.build(config)


def test_workdir_check(tmp_path):
  missing = tmp_path / 'no' / 'such' / 'w'
  assert loop.check_workdir(str(missing)) == str(missing)  # training creates it with its parents
  assert not os.path.exists(tmp_path / 'no')  # the check itself creates nothing
  (tmp_path / 'file').write_text('not a folder')
  with pytest.raises(NotADirectoryError, match='exists and is not a directory'):
    loop.check_workdir(str(tmp_path / 'file'))
  with pytest.raises(NotADirectoryError, match='exists and is not a directory'):
    loop.train_and_evaluate(synthetic_config('smoke'), str(tmp_path / 'file'))


def test_unimodal_reference_selects_its_own_head(tmp_path):
  config = synthetic_config('unimodal=video,smoke')
  assert config.train.select_head == 'video'
  assert config.loss.fused == 0.0 and config.loss.per_modality['video'] == 1.0
  config.train.select_head = 'text'
  with pytest.raises(ValueError, match="train.select_head 'text'"):
    build.build(config)


# The authors' released values, written out by hand from their configs and printed commands
# (docs/methods.md#released-hyperparameters), not read from configs/lib/released.py.
BY_HAND = [
    ('cremad', 'mlb', 'balancing.mlb.alpha', 0.8), ('cremad', 'mlb', 'balancing.mlb.beta_max', 2.0),
    ('cremad', 'ogm', 'balancing.ogm.alpha', 0.8), ('cremad', 'agm', 'balancing.agm.alpha', 1.5),
    ('cremad', 'pmr', 'balancing.pmr.alpha', 1.75), ('cremad', 'pmr', 'balancing.pmr.end_epoch', 70),
    ('cremad', 'mmcosine', 'model.mmcosine.scale', 10.0), ('cremad', 'mslr', 'balancing.mslr.keep_epochs', 5),
    ('ave', 'mlb', 'balancing.mlb.alpha', 2.0), ('ave', 'agm', 'balancing.agm.alpha', 1.0),
    ('ave', 'pmr', 'balancing.pmr.alpha', 1.5), ('ave', 'mmcosine', 'model.mmcosine.scale', 8.0),
    ('ave', 'mslr', 'balancing.mslr.keep_epochs', 10), ('ave', 'mslr', 'balancing.mslr.initial.audio', 0.7),
    ('ave', 'mslr', 'balancing.mslr.initial.video', 1.3),
    ('ucf101', 'mlb', 'balancing.mlb.alpha', 1.0), ('ucf101', 'ogm', 'balancing.ogm.alpha', 1.5),
    ('ucf101', 'agm', 'balancing.agm.alpha', 0.8), ('ucf101', 'pmr', 'balancing.pmr.alpha', 3.0),
]


def test_released_hyperparameters_by_hand():
  from configs.lib import released
  for dataset, method, dotted, value in BY_HAND:
    target = released.apply(base.get_config(), dataset, method)
    for part in dotted.split('.'):
      target = target[part]
    assert target == value, (dataset, method, dotted, target, value)
  # AVE with the Mid-MLP head takes the `--cls nonlinear` commands' values
  c = base.get_config()
  c.model.fusion = 'mid_mlp'
  assert released.apply(c, 'ave', 'mlb').balancing.mlb.alpha == 1.0
  c = base.get_config()
  c.model.fusion = 'mid_mlp'
  assert released.apply(c, 'ave', 'agm').balancing.agm.alpha == 2.0


@pytest.mark.parametrize('dataset', ['cremad', 'ave', 'ucf101'])
@pytest.mark.parametrize('method', sorted(balancing.METHODS))
def test_released_hyperparameters_apply_to_every_method(dataset, method):
  from configs.lib import released
  c = released.apply(base.get_config(), dataset, method)
  assert c.method == method
  for dotted, value in released.RELEASED[dataset].get(method, {}).items():
    target = c
    for part in dotted.split('.'):
      target = target[part]
    assert (target.to_dict() if hasattr(target, 'to_dict') else target) == value
  # model.fusion='auto' resolves to the method's own fusion: only mmcosine gets the mmcosine head
  modalities = ('audio', 'video')
  ctx = balancing.MethodContext(modalities, 10, 6, {m: 8 for m in modalities})
  built = balancing.make_method(method, modalities, c.balancing, ctx)
  assert (balancing.resolve_fusion(built, c.model.fusion) == 'mmcosine') == (method == 'mmcosine')
