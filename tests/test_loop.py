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


def test_cremad_config_authors_schedule_is_an_option():
  from configs import cremad_mlb
  default, authors = cremad_mlb.get_config(), cremad_mlb.get_config('authors_schedule')
  assert (default.train.eval_every_epochs, default.train.patience, default.train.num_steps,
          default.train.eval_every) == (0, 0, 16380, 126)
  assert (authors.train.eval_every_epochs, authors.train.patience, authors.train.num_steps) == (1, 300, 1500 * 126)
  build.validate(authors)


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
    ('train.patience', -1, r'config.train.patience must be an integer >= 0 \(0: off\), got -1'),
    ('train.patience', True, r'config.train.patience must be an integer >= 0 \(0: off\), got True'),
    ('train.eval_every_epochs', -2, r'config.train.eval_every_epochs must be an integer >= 0 \(0: off\), got -2'),
])
def test_bad_config_fails_before_training(field, value, message):
  config = synthetic_config('smoke')
  if field == 'model.encoder':
    config.model.encoders = {}
  section, _, key = field.rpartition('.')
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError, match=message):
    build.build(config)


def test_step_schedule_validates_on_epoch_boundaries_whatever_the_steps_per_epoch():
  cfg = base.get_config().train
  cfg.update(num_steps=1000, eval_every=126, log_every=50, checkpoint_every_steps=0)
  def steps(spe, which=1):
    return [s for s in range(1, cfg.num_steps + 1) if loop.step_schedule(cfg, s, spe)[which]]
  # eval_every steps: 126 is one epoch of 126 steps but drifts off the epoch ends of 125 steps
  assert steps(125) == steps(126) == [126 * k for k in range(1, 8)] + [1000]
  cfg.eval_every_epochs = 1          # after the last step of every epoch, and after the last step
  assert steps(125) == [125 * k for k in range(1, 9)]
  assert steps(126) == [126 * k for k in range(1, 8)] + [1000]
  assert steps(125, which=2) == steps(125)   # checkpoints/last goes with every validation
  assert steps(125, which=0) == list(range(50, 1001, 50))  # the log is untouched
  cfg.eval_every_epochs = 3          # every third epoch
  assert steps(125) == [375, 750, 1000]
  assert steps(126) == [378, 756, 1000]
  cfg.checkpoint_every_steps = 100
  assert steps(126, which=2) == sorted({378, 756, *range(100, 1001, 100)})
  with pytest.raises(ValueError, match='at least one step per epoch'):
    loop.step_schedule(cfg, 1, 0)


def test_selection_counts_validations_without_a_strictly_better_accuracy():
  sel = loop.Selection()
  improved = [sel.update(step, acc) for step, acc in [(10, 0.5), (20, 0.5), (30, 0.4), (40, 0.6), (50, 0.6)]]
  assert improved == [True, False, False, True, False]
  assert sel.best == {'step': 40, 'accuracy': 0.6} and sel.since_best == 1
  assert not sel.exhausted(2) and sel.exhausted(1) and not sel.exhausted(0)  # 0: no early stopping
  assert loop.Selection.from_meta(sel.meta()) == sel
  assert loop.Selection.from_meta({'best': {'step': 3, 'accuracy': 0.2}}).since_best == 0  # an older checkpoint


def stopping_config(num_steps, patience=3):
  """4 steps per epoch (64 training samples, batch 16), validation at every epoch end; learning rate 0
  and no BatchNorm (MLP encoders), so no validation after the first improves on it."""
  config = synthetic_config('smoke')
  config.model.encoders = {'audio': 'mlp', 'video': 'mlp'}
  config.optimizer.learning_rate = 0.0
  config.train.update(num_steps=num_steps, eval_every=1000, eval_every_epochs=1, patience=patience, log_every=5)
  return config


def history(workdir):
  with open(os.path.join(workdir, loop.HISTORY)) as f:
    return [json.loads(line) for line in f]


def last_steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints', 'last')) if n.isdigit())


@pytest.fixture(scope='module')
def stopped_run(tmp_path_factory):
  """A run of up to 40 steps with patience 3: validations at 4 (the best), 8, 12 and 16, where it stops."""
  workdir = str(tmp_path_factory.mktemp('stopped') / 'w')
  [results] = loop.train_and_evaluate(stopping_config(40), workdir)
  return workdir, results


def test_early_stopping_stops_saves_evaluates_and_is_not_trained_again(stopped_run):
  workdir, results = stopped_run
  assert results['stopped_early'] == {'step': 16, 'patience': 3} and results['best_step'] == 4
  assert json.load(open(os.path.join(workdir, loop.RESULTS))) == json.loads(json.dumps(results))
  rows = history(workdir)
  assert [r['step'] for r in rows if r['split'] == 'val'] == [4, 8, 12, 16]
  assert [r['step'] for r in rows if r['split'] == 'train'] == [5, 10, 15, 16]  # the stop logs its last window
  assert last_steps(workdir) == [12, 16]
  from mlb_jax import checkpointing
  mngr = checkpointing.manager(workdir, checkpointing.LAST)
  meta = checkpointing.restore_meta(mngr)
  mngr.close()
  assert meta['best']['step'] == 4 and meta[loop.SINCE_BEST] == 3
  assert meta[loop.STOPPED_EARLY] == {'step': 16, 'patience': 3}
  before = open(os.path.join(workdir, loop.HISTORY)).read()
  events = []
  [again] = loop.train_and_evaluate(stopping_config(40), workdir, progress=events.append)
  assert again == results
  assert open(os.path.join(workdir, loop.HISTORY)).read() == before and last_steps(workdir) == [12, 16]
  assert [e['event'] for e in events] == ['resumed', 'stopped'] and events[1]['step'] == 16


def test_early_stopping_count_survives_a_resume(tmp_path, stopped_run):
  workdir = str(tmp_path / 'w')
  [first] = loop.train_and_evaluate(stopping_config(8), workdir)  # validations at 4 (the best) and 8
  assert 'stopped_early' not in first
  from mlb_jax import checkpointing
  mngr = checkpointing.manager(workdir, checkpointing.LAST)
  assert checkpointing.restore_meta(mngr)[loop.SINCE_BEST] == 1
  mngr.close()
  [resumed] = loop.train_and_evaluate(stopping_config(40), workdir, allow_changed=('train.num_steps',))
  # the count goes on from 1: the third validation without improvement is at 16, as without the resume
  assert resumed['stopped_early'] == {'step': 16, 'patience': 3}
  assert [r['step'] for r in history(workdir) if r['split'] == 'val'] == [4, 8, 12, 16]
  assert [r['step'] for r in history(workdir) if r['split'] == 'train'] == [5, 8, 10, 15, 16]
  _, straight = stopped_run
  assert {k: resumed[k] for k in ('best_step', 'test', 'val')} == {k: straight[k] for k in ('best_step', 'test', 'val')}


@pytest.mark.slow  # one seed's early stop and resume run in the default lane
def test_early_stopping_of_one_seed_of_a_vmapped_step(tmp_path, monkeypatch, stopped_run):
  """Seed 0 stops at 16 (as alone); seed 1, whose validation is made to improve every time, trains on to 24."""
  real = loop.evaluate_split
  calls = []

  def evaluate_split(eval_step, state, source, **kwargs):
    out, logits, labels = real(eval_step, state, source, **kwargs)
    if len(source) == 48:  # seed 1's validation split
      calls.append(1)
      out['fused']['accuracy'] = len(calls) / 100
    return out, logits, labels

  monkeypatch.setattr(loop, 'evaluate_split', evaluate_split)
  first, second = stopping_config(24), stopping_config(24)
  second.seed, second.data.seed, second.data.num_val = 1, 1, 48
  dirs = [str(tmp_path / 'a'), str(tmp_path / 'b')]
  events = []
  a, b = loop.train_and_evaluate_many([first, second], dirs, progress=events.append)
  assert a['stopped_early'] == {'step': 16, 'patience': 3} and 'stopped_early' not in b
  assert [r['step'] for r in history(dirs[0]) if r['split'] == 'val'] == [4, 8, 12, 16]
  assert [r['step'] for r in history(dirs[0]) if r['split'] == 'train'] == [5, 10, 15, 16]
  assert [r['step'] for r in history(dirs[1]) if r['split'] == 'val'] == [4, 8, 12, 16, 20, 24]
  assert [r['step'] for r in history(dirs[1]) if r['split'] == 'train'] == [5, 10, 15, 20, 24]
  assert last_steps(dirs[0]) == [12, 16] and last_steps(dirs[1]) == [20, 24] and b['best_step'] == 24
  assert [e['runs'] for e in events if e['event'] == 'val'][-2:] == [['b'], ['b']]
  _, alone = stopped_run
  assert a['best_step'] == alone['best_step']
  for head, d in alone['test'].items():
    np.testing.assert_allclose(a['test'][head]['accuracy'], d['accuracy'])
  before = [open(os.path.join(w, loop.HISTORY)).read() for w in dirs]
  again, _ = loop.train_and_evaluate_many([first, second], dirs)  # finished apart: neither trains
  assert [open(os.path.join(w, loop.HISTORY)).read() for w in dirs] == before and again == a


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
    ('cremad_conformer', 'ogm', 'balancing.ogm.alpha', 1.25), ('cremad_conformer', 'pmr', 'balancing.pmr.alpha', 2.0),
    ('cremad_conformer', 'pmr', 'balancing.pmr.end_epoch', 1500), ('cremad_conformer', 'mlb', 'balancing.mlb.alpha', 0.8),
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


@pytest.mark.parametrize('dataset', ['cremad', 'cremad_conformer', 'ave', 'ucf101'])
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
