"""Runner (seeds/folds, skipping finished runs), aggregation, sweep, report, CLI and TensorBoard scalars."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import synthetic
from mlb_jax import loop, metrics, report
from mlb_jax.experiments import aggregate, runner, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = ('fused', 'audio', 'video')
N_TEST = 20


def results_json(config, test_acc, val_acc=None, best_step=10):
  """A results.json payload as `loop.write_results` writes it, from accuracies per head."""
  def head(accuracy):
    return {'accuracy': accuracy, 'ece': 0.05, 'loss': 1.0, 'macro_f1': accuracy - 0.1}

  payload = {'method': config.method, 'best_step': best_step,
             'test': {h: head(a) for h, a in test_acc.items()},
             'config': json.loads(json.dumps(config.to_dict()))}
  if val_acc is not None:
    payload['val'] = {h: head(a) for h, a in val_acc.items()}
  return payload


def write_json(path, payload):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(payload, f)


# ---------------------------------------------------------------- runs and fields

def test_make_runs_seeds_folds_and_paired():
  assert runner.make_runs(seeds=[0, 1, 2]) == [
      runner.Run('seed_0', {'seed': 0}), runner.Run('seed_1', {'seed': 1}), runner.Run('seed_2', {'seed': 2})]
  assert runner.make_runs(seeds=['3'], seed_fields=('seed', 'data.seed')) == [
      runner.Run('seed_3', {'seed': 3, 'data.seed': 3})]
  assert [r.name for r in runner.make_runs(folds=[1, 2, 3])] == ['fold_1', 'fold_2', 'fold_3']
  paired = runner.make_runs(folds=[0, 1, 2], seeds=[109, 19, 337])  # CREMA-D: fold i, seed [109, 19, 337][i]
  assert paired[1] == runner.Run('fold_1_seed_19', {'data.fold': 1, 'seed': 19})
  assert runner.make_runs(folds=[2], fold_field='data.split')[0].assignments == {'data.split': 2}
  with pytest.raises(ValueError, match='equally many'):
    runner.make_runs(folds=[0, 1], seeds=[0])
  with pytest.raises(ValueError, match='needs seeds or folds'):
    runner.make_runs()
  with pytest.raises(ValueError, match='runs repeat'):
    runner.make_runs(seeds=[1, 1])


def test_fields_are_typed_and_checked():
  config = synthetic.get_config('smoke')
  assert runner.parse_value(config, 'balancing.mlb.alpha', '1') == 1.0
  assert isinstance(runner.parse_value(config, 'balancing.mlb.alpha', '1'), float)
  assert runner.parse_value(config, 'seed', '3') == 3 and isinstance(runner.parse_value(config, 'seed', '3'), int)
  assert runner.parse_value(config, 'method', 'joint') == 'joint'
  with pytest.raises(ValueError, match="'seed' is int; got '1.5'"):
    runner.parse_value(config, 'seed', '1.5')
  with pytest.raises(ValueError, match="'balancing.mlb.alpha' is float; got 'big'"):
    runner.parse_value(config, 'balancing.mlb.alpha', 'big')
  with pytest.raises(ValueError, match=r"no field 'balancing.alpha' \('alpha' is not in balancing\)"):
    runner.get_field(config, 'balancing.alpha')  # the flat pre-section name is gone
  with pytest.raises(ValueError, match="no field 'data.fold' \\('fold' is not in data\\)"):
    runner.with_fields(config, {'data.fold': 0})
  with pytest.raises(ValueError, match="config field 'seed' cannot take 'abc'"):
    runner.with_fields(config, {'seed': 'abc'})
  changed = runner.with_fields(config, {'seed': 5, 'balancing.mlb.beta_max': 3.0})
  assert (changed.seed, changed.balancing.mlb.beta_max) == (5, 3.0)
  assert (config.seed, config.balancing.mlb.beta_max) == (0, 4.0)  # the input is left alone


# ---------------------------------------------------------------- aggregation on fixed files

@pytest.fixture
def fixed_experiment(tmp_path):
  """joint: fused 70/74/78 %, audio 50 % x3; audio_alone: fused head untrained (zero loss weight)."""
  joint = synthetic.get_config('method=joint,smoke')
  for seed, fused in zip((0, 1, 2), (0.70, 0.74, 0.78)):
    write_json(str(tmp_path / 'joint' / f'seed_{seed}' / 'results.json'),
               results_json(joint, {'fused': fused, 'audio': 0.5, 'video': 0.3 + 0.1 * seed},
                            {'fused': fused + 0.01, 'audio': 0.5, 'video': 0.3}))
  alone = synthetic.get_config('unimodal=audio,smoke')
  write_json(str(tmp_path / 'audio_alone' / 'seed_0' / 'results.json'),
             results_json(alone, {'fused': 0.1, 'audio': 0.6, 'video': 0.1}, {'fused': 0.1, 'audio': 0.62,
                                                                              'video': 0.1}))
  os.makedirs(tmp_path / 'joint' / 'seed_3')  # unfinished: no results.json
  return tmp_path


def test_mean_std_population_and_sample():
  values = [0.70, 0.74, 0.78]
  mean, pop = aggregate.mean_std(values)
  assert mean == pytest.approx(0.74)
  assert pop == pytest.approx(np.sqrt((0.04 ** 2 * 2) / 3))  # ddof = 0, the paper's np.std
  assert aggregate.mean_std(values, 'sample')[1] == pytest.approx(0.04)  # sqrt(0.0032 / 2)
  assert np.isnan(aggregate.mean_std([0.5], 'sample')[1])
  assert aggregate.mean_std([0.5])[1] == 0.0
  with pytest.raises(ValueError, match='std must be one of'):
    aggregate.mean_std(values, 'ddof1')


def test_aggregator_on_fixed_files(fixed_experiment):
  collected = aggregate.collect(str(fixed_experiment))
  assert list(collected) == ['audio_alone', 'joint']  # no experiment.json: name order
  assert [r.run for r in collected['joint']] == ['seed_0', 'seed_1', 'seed_2']  # seed_3 unfinished
  summary = aggregate.summarize_experiment(collected)
  joint = summary['joint']
  assert joint['heads'] == ['fused', 'audio', 'video']
  assert joint['test']['fused']['accuracy']['mean'] == pytest.approx(0.74)
  assert joint['test']['fused']['accuracy']['std'] == pytest.approx(0.0326599, abs=1e-6)
  assert joint['test']['audio']['accuracy']['std'] == 0.0
  assert joint['val']['fused']['accuracy']['mean'] == pytest.approx(0.75)
  assert joint['test']['fused']['macro_f1']['mean'] == pytest.approx(0.64)
  assert set(joint['test']['fused']) == {'accuracy', 'ece', 'loss', 'macro_f1'}
  assert summary['audio_alone']['heads'] == ['audio']  # loss.fused = 0 and video weight 0
  table = aggregate.markdown_table(summary)
  assert ('| variant | runs | test acc fused | test acc audio | test acc video | test ECE fused | '
          'test macro-F1 fused | val acc (selected head) |') in table
  assert ('| joint | 3 | 74.00 ± 3.27 | 50.00 ± 0.00 | 40.00 ± 8.16 | 5.00 ± 0.00 | 64.00 ± 3.27 | '
          '75.00 ± 3.27 (fused) |') in table
  assert '| audio_alone | 1 | — | 60.00 ± 0.00 | — | — | — | 62.00 ± 0.00 (audio) |' in table
  assert 'population standard deviation (ddof = 0)' in table
  sample = aggregate.markdown_table(aggregate.summarize_experiment(collected, 'sample'), 'sample')
  assert '| joint | 3 | 74.00 ± 4.00 |' in sample and '| audio_alone | 1 | — | 60.00 | — | — | — | 62.00 (audio) |' in sample


def test_aggregator_reads_results_without_macro_f1(fixed_experiment):
  # results.json written before macro_f1 existed: the other metrics are summarized, its cell is '—'
  for path in glob.glob(str(fixed_experiment / '*' / '*' / 'results.json')):
    payload = json.load(open(path))
    for split in ('test', 'val'):
      for d in payload[split].values():
        del d['macro_f1']
    write_json(path, payload)
  summary = aggregate.summarize_experiment(aggregate.collect(str(fixed_experiment)))
  assert set(summary['joint']['test']['fused']) == {'accuracy', 'ece', 'loss'}
  table = aggregate.markdown_table(summary)
  assert '| joint | 3 | 74.00 ± 3.27 | 50.00 ± 0.00 | 40.00 ± 8.16 | 5.00 ± 0.00 | — | 75.00 ± 3.27 (fused) |' in table


def test_collect_follows_experiment_json_and_reports_bad_files(fixed_experiment):
  write_json(str(fixed_experiment / runner.EXPERIMENT), {'variants': ['joint', 'audio_alone']})
  assert list(aggregate.collect(str(fixed_experiment))) == ['joint', 'audio_alone']
  write_json(str(fixed_experiment / 'broken' / 'seed_0' / 'results.json'), {'method': 'mlb'})
  with pytest.raises(ValueError, match=r"broken/seed_0/results.json' lacks \['test', 'config'\]"):
    aggregate.collect(str(fixed_experiment))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    aggregate.collect(str(fixed_experiment / 'nope'))


def test_history_last_record_wins(tmp_path):
  lines = [{'step': 2, 'split': 'train', 'loss': 3.0}, {'step': 4, 'split': 'train', 'loss': 2.0},
           {'step': 4, 'split': 'val', 'accuracy_fused': 0.2},
           {'step': 4, 'split': 'train', 'loss': 1.5},  # logged again after a resume
           {'step': 6, 'split': 'train', 'loss': 1.0}]
  (tmp_path / loop.HISTORY).write_text('\n'.join(json.dumps(x) for x in lines) + '\n')
  history = aggregate.load_history(str(tmp_path))
  assert [(r['step'], r['loss']) for r in history['train']] == [(2, 3.0), (4, 1.5), (6, 1.0)]
  assert history['val'] == [lines[2]]
  (tmp_path / loop.HISTORY).write_text('{"step": 1}\n')
  with pytest.raises(ValueError, match="metrics.jsonl' line 1"):
    aggregate.load_history(str(tmp_path))


# ---------------------------------------------------------------- runner: skip finished runs

def many(train):
  """A runner `train_many(configs, workdirs)` from a single-run `train(config, workdir)`."""
  return lambda configs, workdirs: [train(c, w) for c, w in zip(configs, workdirs)]


def make_fake_train(accuracy_of):
  """A `train(config, workdir)` that writes what the loop writes, without training (`many(train)`
  serves it to the runner).

  `accuracy_of(config) -> (test_acc, val_acc)`, each {head: accuracy}. Test
  predictions get exactly that accuracy (the first round(acc * N) samples right).
  """
  calls = []

  def train(config, workdir):
    calls.append(workdir)
    os.makedirs(workdir, exist_ok=True)
    test_acc, val_acc = accuracy_of(config)
    labels = np.arange(N_TEST) % 4
    logits = {}
    for i, (h, acc) in enumerate(test_acc.items()):
      right = np.roll(np.arange(N_TEST) < round(acc * N_TEST), 3 * i)
      logits[h] = np.eye(4)[np.where(right, labels, (labels + 1) % 4)] * 3.0
    np.savez(os.path.join(workdir, loop.PREDICTIONS), label=labels, **{f'logits_{h}': z for h, z in logits.items()})
    with open(os.path.join(workdir, loop.HISTORY), 'w') as f:
      for step in (1, 2):
        f.write(json.dumps({'step': step, 'split': 'train', 'loss': 2.0 / step,
                            **{f'acc_{h}': 0.3 * step for h in HEADS},
                            **{f'ratio_{m}': r for m, r in (('audio', 0.8), ('video', 1.25))},
                            **{f'scale_{m}': k for m, k in (('audio', 0.7), ('video', 1.6))}}) + '\n')
      f.write(json.dumps({'step': 2, 'split': 'val', **{f'accuracy_{h}': a for h, a in val_acc.items()}}) + '\n')
    test = {h: metrics.head_metrics(z, labels) for h, z in logits.items()}
    return loop.write_results(workdir, config, 2, test, {h: {'accuracy': a, 'ece': 0.1, 'loss': 1.0}
                                                         for h, a in val_acc.items()})

  train.calls = calls
  return train


def constant_accuracy(config):
  return {h: 0.5 for h in HEADS}, {h: 0.5 for h in HEADS}


def test_runner_skips_finished_runs_and_resumes_the_rest(tmp_path):
  config = synthetic.get_config('method=mlb,smoke')
  runs = runner.make_runs(seeds=[0, 1, 2], seed_fields=('seed', 'data.seed'))
  train = make_fake_train(constant_accuracy)
  # seed_0 finished before an interruption; seed_1 was interrupted (no results.json)
  write_json(str(tmp_path / 'mlb' / 'seed_0' / 'results.json'),
             results_json(runner.with_fields(config, runs[0].assignments), {h: 0.9 for h in HEADS}))
  os.makedirs(tmp_path / 'mlb' / 'seed_1')
  seen = []
  results = runner.run_variant(config, str(tmp_path), 'mlb', runs, train_many=many(train),
                               on_result=lambda name, run, res, reused: seen.append((name, run.name, reused)))
  assert train.calls == [str(tmp_path / 'mlb' / 'seed_1'), str(tmp_path / 'mlb' / 'seed_2')]
  assert seen == [('mlb', 'seed_0', True), ('mlb', 'seed_1', False), ('mlb', 'seed_2', False)]
  assert results[0]['test']['fused']['accuracy'] == 0.9  # the stored run, not retrained
  assert [r['config']['data']['seed'] for r in results] == [0, 1, 2]
  runner.run_variant(config, str(tmp_path), 'mlb', runs, train_many=many(train))  # all finished: nothing trains
  assert len(train.calls) == 2
  assert json.load(open(tmp_path / runner.EXPERIMENT)) == {'variants': ['mlb']}


def test_runner_refuses_a_finished_run_with_another_config(tmp_path):
  config = synthetic.get_config('method=mlb,smoke')
  runs = runner.make_runs(seeds=[0])
  train = make_fake_train(constant_accuracy)
  runner.run_variant(config, str(tmp_path), 'mlb', runs, train_many=many(train))
  config.balancing.mlb.alpha = 0.5
  with pytest.raises(ValueError, match=r'trained with another config.*balancing.mlb.alpha: 2.0 \(stored\) vs 0.5'):
    runner.run_variant(config, str(tmp_path), 'mlb', runs, train_many=many(train))
  assert len(train.calls) == 1  # refused before anything trains
  with pytest.raises(ValueError, match='plain folder name'):
    runner.run_variant(config, str(tmp_path), '../mlb', runs, train_many=many(train))


# ---------------------------------------------------------------- sweep

def test_sweep_space_parsing_and_points():
  config = synthetic.get_config('smoke')
  space = sweep.parse_space(config, ['balancing.mlb.alpha=0.5,1,2', 'balancing.mlb.beta_max=2,4'])
  assert space['balancing.mlb.alpha'] == sweep.Choice((0.5, 1.0, 2.0))
  points = sweep.grid_points(space)
  assert len(points) == 6 and points[1] == {'balancing.mlb.alpha': 0.5, 'balancing.mlb.beta_max': 4.0}
  assert sweep.point_name(points[1]) == 'alpha=0.5,beta_max=4'
  drawn = sweep.random_points(space, 4, seed=0)
  assert len(drawn) == 4 and all(p in points for p in drawn) and len({sweep.point_name(p) for p in drawn}) == 4
  assert drawn == sweep.random_points(space, 4, seed=0)
  assert len(sweep.random_points(space, 10, seed=0)) == 6  # at most the grid
  ranged = sweep.parse_space(config, ['optimizer.learning_rate=loguniform(1e-4, 1e-2)', 'balancing.mlb.beta_max=2,4'])
  assert ranged['optimizer.learning_rate'] == sweep.Range(1e-4, 1e-2, True)
  lrs = [p['optimizer.learning_rate'] for p in sweep.random_points(ranged, 50, seed=1)]
  assert min(lrs) >= 1e-4 and max(lrs) <= 1e-2 and min(lrs) < 1e-3 < max(lrs)
  with pytest.raises(ValueError, match='needs listed values'):
    sweep.grid_points(ranged)
  with pytest.raises(ValueError, match="no field 'balancing.mlb.gamma'"):
    sweep.parse_space(config, ['balancing.mlb.gamma=1,2'])
  with pytest.raises(ValueError, match="'seed' is int, ranges need a float field"):
    sweep.parse_space(config, ['seed=uniform(0,3)'])
  with pytest.raises(ValueError, match="must be 'field=v1,v2,...'"):
    sweep.parse_space(config, ['balancing.mlb.alpha'])


def test_sweep_selects_on_validation_only(tmp_path):
  # validation peaks at alpha = 1, test peaks at alpha = 2: the choice must follow validation
  val_of = {0.5: 0.60, 1.0: 0.70, 2.0: 0.65}
  test_of = {0.5: 0.55, 1.0: 0.62, 2.0: 0.80}

  def accuracy_of(config):
    a, seed = config.balancing.mlb.alpha, config.seed
    return ({h: test_of[a] + 0.05 * seed for h in HEADS}, {h: val_of[a] + 0.02 * seed for h in HEADS})

  config = synthetic.get_config('method=mlb,smoke')
  train = make_fake_train(accuracy_of)
  space = sweep.parse_space(config, ['balancing.mlb.alpha=0.5,1,2'])
  summary = sweep.run_sweep(config, str(tmp_path), sweep.grid_points(space), runner.make_runs(seeds=[0, 1]),
                            train_many=many(train))
  assert len(train.calls) == 6
  chosen = summary['chosen']
  assert chosen['name'] == 'alpha=1'
  assert chosen['val']['mean'] == pytest.approx(0.71)
  assert chosen['test']['mean'] == pytest.approx(0.625) and chosen['test']['std'] == pytest.approx(0.025)
  text = (tmp_path / sweep.SWEEP_MD).read_text()
  assert '| alpha=1 **(chosen)** | 71.00 ± 1.00 |' in text and '(mean ± std, population (ddof=0), %)' in text
  assert 'Chosen: **alpha=1** — validation 71.00 ± 1.00, test 62.50 ± 2.50.' in text
  assert '80.' not in text  # other points' test accuracy is not shown
  assert json.load(open(tmp_path / sweep.SWEEP_JSON))['chosen']['name'] == 'alpha=1'


# ---------------------------------------------------------------- report

def test_report_from_fake_runs_with_reference_models(tmp_path):
  def accuracy_of(config):
    base = {'joint': 0.5, 'multiloss': 0.6, 'mlb': 0.7}.get(config.method, 0.4)
    return {'fused': base, 'audio': 0.6, 'video': 0.3}, {'fused': base, 'audio': 0.6, 'video': 0.3}

  train = make_fake_train(accuracy_of)
  runs = runner.make_runs(seeds=[0, 1])
  for method in ('joint', 'mlb'):
    runner.run_variant(synthetic.get_config(f'method={method},smoke'), str(tmp_path), method, runs,
                       train_many=many(train))
  for m in ('audio', 'video'):
    runner.run_variant(synthetic.get_config(f'unimodal={m},smoke'), str(tmp_path), f'{m}_alone', runs,
                       train_many=many(train))
  path = report.write_report(str(tmp_path), reference={'audio': 'audio_alone', 'video': 'video_alone'})
  text = open(path).read()
  assert '| mlb | 2 | 70.00 ± 0.00 |' in text
  assert 'Unimodal predictions: separately trained unimodal models: audio from `audio_alone`' in text
  links = [line[line.index('](') + 2:-1] for line in text.splitlines() if line.startswith('![')]
  assert 'figures/comparison.png' in links and 'figures/agreement.png' in links
  assert 'figures/balancing_mlb_seed_0.png' in links and 'figures/balancing_audio_alone_seed_0.png' not in links
  for link in links:
    assert os.path.getsize(tmp_path / link) > 5000, link
  summary = json.load(open(tmp_path / report.SUMMARY))
  assert summary['std'] == 'population (ddof=0)'
  assert set(summary['agreement']) == {'joint', 'mlb'}  # reference variants are not analysed
  assert sum(summary['agreement']['mlb']['counts']) == 2 * N_TEST
  with pytest.raises(ValueError, match="reference variants {'text': 'text_alone'} are not in the experiment"):
    report.write_report(str(tmp_path), reference={'text': 'text_alone'})


# ---------------------------------------------------------------- the command line, for real

def run_cli(*args, timeout=600):
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', 'TF_ENABLE_ONEDNN_OPTS': '0'}
  return subprocess.run([sys.executable, '-m', 'mlb_jax.experiments', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_trains_reports_continues_and_logs_tensorboard(tmp_path):
  """One real (smoke) training through the command line; everything else here uses fake runs."""
  from tensorboard.backend.event_processing import event_accumulator

  out = tmp_path / 'exp'
  args = ['--config=configs/synthetic.py:smoke', '--methods=mlb', '--seeds=0', '--seed_fields=seed,data.seed',
          f'--out={out}']
  first = run_cli(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  workdir = out / 'mlb' / 'seed_0'
  stamp = os.stat(workdir / loop.RESULTS).st_mtime_ns
  assert 'mlb seed_0: test accuracy fused' in first.stdout and '(reused)' not in first.stdout
  results = json.load(open(workdir / loop.RESULTS))
  assert results['method'] == 'mlb' and results['config']['data']['seed'] == 0
  assert (out / 'figures' / 'balancing_mlb_seed_0.png').exists()
  command = json.load(open(out / runner.EXPERIMENT))['commands']['mlb']
  assert command == 'python -m mlb_jax.experiments ' + ' '.join(args)
  assert command in (out / report.REPORT).read_text()

  second = run_cli(*args, '--noreport')  # the same command again: the finished run is reused
  assert second.returncode == 0 and 'mlb seed_0: test accuracy' in second.stdout and '(reused)' in second.stdout
  assert os.stat(workdir / loop.RESULTS).st_mtime_ns == stamp

  # TensorBoard reads the scalars the loop logged (plain scalar summaries, read with its defaults)
  events = glob.glob(str(workdir / 'events.out.tfevents.*'))
  assert len(events) == 1
  acc = event_accumulator.EventAccumulator(events[0])
  acc.Reload()
  tags = set(acc.Tags()['scalars'])
  for tag in ('train/loss', 'train/scale_audio', 'train/ratio_video', 'val/accuracy_fused', 'val/ece_fused'):
    assert tag in tags, sorted(tags)
  history = aggregate.load_history(str(workdir))
  logged = {e.step: e.value for e in acc.Scalars('train/loss')}
  assert logged == pytest.approx({r['step']: r['loss'] for r in history['train']})


def test_cli_reports_bad_input_in_one_line(tmp_path):
  bad = run_cli('--config=configs/synthetic.py:smoke', '--seeds=0', '--folds=0', f'--out={tmp_path / "x"}')
  assert bad.returncode == 1
  assert "error: config has no field 'data.fold'" in bad.stderr
