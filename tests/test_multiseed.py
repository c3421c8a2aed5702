"""Several seeds in one vmapped step equal the same seeds trained one after another; one seed is the
single-run step, compiled once."""

import json
import os

import jax
import numpy as np
import pytest

import data_pipelines
from configs import synthetic
from data_pipelines import common
from mlb_jax import build, checkpointing, loop
from mlb_jax.build import Experiment
from mlb_jax.experiments import runner
from tests.tree_asserts import assert_trees_all_close

STEPS = 3


def seed_config(method, seed):
  """A smoke config whose seed also redraws the data, as `--seed_fields=seed,data.seed`."""
  config = synthetic.get_config(f'method={method},smoke')
  config.seed = config.data.seed = seed
  return config


@pytest.mark.parametrize('method', ['mlb', 'ogm_ge'])
def test_vmapped_step_equals_single_runs(method):
  """S = 2 replicas, each with its own init, data draw, batches and balancing state:
  after 3 vmapped steps every replica's whole state equals its single run's."""
  exps = [build.build(seed_config(method, seed)) for seed in (0, 1)]
  loop.check_replicas(exps)
  batches = []
  for e in exps:
    it = common.train_batches(e.dataset.splits['train'], batch_size=e.config.data.batch_size, seed=e.config.seed)
    batches.append([next(it) for _ in range(STEPS)])
  single = exps[0].training  # one build serves every seed, as in the loop
  assert single.num_replicas == 1
  expected, expected_metrics, expected_init = [], [], []
  for e, bs in zip(exps, batches):
    state = loop.initial_state([Experiment(e.config, e.dataset, single)])
    expected_init.append(jax.device_get(state))
    for batch in bs:
      state, metrics = single.train_step(state, single.place_batch([batch]))
    expected.append(state)
    expected_metrics.append(metrics)

  multi = build.build_training(exps[0].config, single.spec, num_replicas=2)
  assert multi.num_replicas == 2
  state = loop.initial_state([Experiment(e.config, e.dataset, multi) for e in exps])  # the vmapped init
  assert state.step.shape == (2,)
  for s in range(2):  # replica s starts from its single run's initial state
    got = loop.unstack(state, s)
    for part in ('params', 'batch_stats', 'opt_state', 'method_state'):
      assert_trees_all_close(getattr(got, part), getattr(expected_init[s], part), rtol=1e-6, atol=1e-7)
  for t in range(STEPS):
    state, metrics = multi.train_step(state, multi.place_batch([bs[t] for bs in batches]))
  for s in range(2):
    got = loop.unstack(state, s)
    assert int(got.step) == STEPS
    for part in ('params', 'batch_stats', 'opt_state', 'method_state'):
      assert_trees_all_close(getattr(got, part), getattr(expected[s], part), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics['loss'][s], expected_metrics[s]['loss'], rtol=1e-5)
    if method == 'mlb':
      np.testing.assert_allclose(metrics['scale_video'][s], expected_metrics[s]['scale_video'], rtol=1e-5)
  assert jax.tree.leaves(got.batch_stats)  # BatchNorm statistics are compared, not an empty tree
  # the replicas really differ (own seed, own data)
  assert not np.allclose(metrics['loss'][0], metrics['loss'][1])


def test_one_seed_compiles_one_unvmapped_train_step(tmp_path, monkeypatch):
  """num_seeds=1 trains with the single-run step: one compiled program for every step, states and
  metrics without a seed axis, in the workdir itself (no seed_<seed>/ folder)."""
  built, outputs = [], []
  real_build = loop.build_lib.build

  def recording_build(*args, **kwargs):
    exp = real_build(*args, **kwargs)
    step = exp.training.train_step

    def recorded_step(state, batch):
      new_state, metrics = step(state, batch)
      outputs.append(([x.shape for x in jax.tree.leaves(new_state)], {k: v.shape for k, v in metrics.items()}))
      return new_state, metrics

    built.append((exp, step))
    return exp._replace(training=exp.training._replace(train_step=recorded_step))

  monkeypatch.setattr(loop.build_lib, 'build', recording_build)
  config = synthetic.get_config('method=mlb,smoke')
  config.train.num_steps = 4
  assert config.num_seeds == 1
  workdir = tmp_path / 'w'
  [results] = loop.train_and_evaluate(config, str(workdir))
  assert len(built) == 1
  exp, train_step = built[0]
  assert exp.training.num_replicas == 1
  assert len(outputs) == 4
  assert train_step._cache_size() == 1  # 4 steps, one program (no retrace after the first)
  unbatched = loop.initial_state([exp])
  assert unbatched.step.shape == ()
  for state_shapes, metric_shapes in outputs:  # no leading seed axis anywhere
    assert state_shapes == [x.shape for x in jax.tree.leaves(unbatched)]
    assert 'loss' in metric_shapes and set(metric_shapes.values()) == {()}
  assert os.path.exists(workdir / loop.RESULTS) and not os.path.exists(workdir / 'seed_0')
  assert results['config']['num_seeds'] == 1


@pytest.mark.slow  # 3 trainings with evaluation and checkpoints: 50-100 s on 2 shared cores
def test_num_seeds_writes_each_seed_as_its_single_run(tmp_path):
  """run.py's num_seeds=2: <workdir>/seed_0 and seed_1 hold what two single runs write,
  with the same test metrics and the same best checkpoint (to float rounding)."""
  config = synthetic.get_config('method=mlb,smoke')
  config.num_seeds = 2
  results = loop.train_and_evaluate(config, str(tmp_path / 'multi'))
  assert len(results) == 2
  for seed in (0, 1):
    workdir = tmp_path / 'multi' / f'seed_{seed}'
    assert set(os.listdir(workdir)) >= {'results.json', 'metrics.jsonl', 'checkpoints', loop.PREDICTIONS}
    on_disk = json.load(open(workdir / 'results.json'))
    assert on_disk['config']['seed'] == seed and on_disk['config']['num_seeds'] == 1
  for seed, got in [(1, results[1])]:  # seed 0 of the pair is checked step by step above
    single_config = synthetic.get_config('method=mlb,smoke')
    single_config.seed = seed
    [expected] = loop.train_and_evaluate(single_config, str(tmp_path / f'single_{seed}'))
    workdir = tmp_path / 'multi' / f'seed_{seed}'
    assert json.load(open(workdir / 'results.json'))['config'] == json.load(
        open(tmp_path / f'single_{seed}' / 'results.json'))['config']
    assert got['best_step'] == expected['best_step']
    for head, d in expected['test'].items():
      np.testing.assert_allclose(got['test'][head]['loss'], d['loss'], rtol=1e-5)
      assert got['test'][head]['accuracy'] == d['accuracy']
    exp = build.build(single_config)
    restored = []
    for w in (workdir, tmp_path / f'single_{seed}'):
      mngr = checkpointing.manager(str(w), checkpointing.BEST)
      restored.append(checkpointing.restore_latest(mngr, loop.initial_state([exp]))[0])
      mngr.close()
    assert_trees_all_close(restored[0].params, restored[1].params, rtol=1e-5, atol=1e-6)


def test_replicas_must_share_the_step():
  a, b = seed_config('mlb', 0), seed_config('mlb', 1)
  b.balancing.mlb.alpha = 0.5
  with pytest.raises(ValueError, match=r"differs from seed 0 in \['balancing'\]"):
    loop.check_replicas([build.build(a), build.build(b)])
  config = synthetic.get_config('smoke')
  config.num_seeds = 2
  with pytest.raises(ValueError, match=r'each run config is a single run \(num_seeds=1\), got num_seeds \[2\]'):
    loop.train_and_evaluate_many([config], ['/tmp/never_used'])
  with pytest.raises(ValueError, match='need one workdir per config'):
    loop.train_and_evaluate_many([a, b], ['/tmp/never_used'])


def test_runner_trains_unfinished_runs_num_seeds_at_a_time(tmp_path):
  """num_seeds=2 over 3 runs, one finished: the other two go to train_many together."""
  config = synthetic.get_config('method=mlb,smoke')
  config.num_seeds = 2
  runs = runner.make_runs(seeds=[0, 1, 2], seed_fields=('seed', 'data.seed'))
  calls = []

  def fake_results(run_config, workdir):
    os.makedirs(workdir, exist_ok=True)
    test = {h: {'accuracy': 0.5, 'ece': 0.1, 'loss': 1.0} for h in ('fused', 'audio', 'video')}
    return loop.write_results(workdir, run_config, 2, test, test)

  def train_many(configs, workdirs):
    calls.append(('many', [os.path.basename(w) for w in workdirs]))
    assert all(c.num_seeds == 1 for c in configs)
    return [fake_results(c, w) for c, w in zip(configs, workdirs)]

  fake_results(runner.with_fields(config, {**runs[1].assignments, 'num_seeds': 1}),
               str(tmp_path / 'mlb' / 'seed_1'))
  seen = []
  results = runner.run_variant(config, str(tmp_path), 'mlb', runs, train_many=train_many,
                               on_result=lambda name, run, res, reused: seen.append((run.name, reused)))
  assert calls == [('many', ['seed_0', 'seed_2'])]
  assert sorted(seen) == [('seed_0', False), ('seed_1', True), ('seed_2', False)]
  assert [r['config']['seed'] for r in results] == [0, 1, 2]
  config.num_seeds = 1  # how runs execute is not part of the comparison with finished runs
  runner.run_variant(config, str(tmp_path), 'mlb', runs, train_many=train_many)
  assert len(calls) == 1
  # num_seeds=1: every unfinished run is a group of one (the single-run step)
  runner.run_variant(config, str(tmp_path), 'mlb', runner.make_runs(seeds=[3, 4], seed_fields=('seed', 'data.seed')),
                     train_many=train_many)
  assert calls[1:] == [('many', ['seed_3']), ('many', ['seed_4'])]


def test_seeds_drawing_the_same_data_load_it_once(tmp_path, monkeypatch):
  """A group loads each distinct `config.data` once (seeds that differ only in `seed` share it)."""
  loads = []
  real_load = data_pipelines.load
  monkeypatch.setattr(data_pipelines, 'load', lambda cfg: loads.append(cfg.seed) or real_load(cfg))
  configs = [synthetic.get_config('method=mlb,smoke') for _ in range(3)]
  for s, c in enumerate(configs):
    c.seed = s
  configs[2].data.seed = 7          # the third seed draws other data
  results = loop.train_and_evaluate_many(configs, [str(tmp_path / f's{s}') for s in range(3)])
  assert sorted(loads) == [0, 7]
  assert [r['config']['seed'] for r in results] == [0, 1, 2]
  for s in range(3):
    assert os.path.exists(tmp_path / f's{s}' / 'results.json')
