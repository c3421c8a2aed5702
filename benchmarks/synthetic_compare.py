"""Methods compared on the embedded benchmark over several seeds.

  python benchmarks/synthetic_compare.py [--seeds=0,1,2] [--out=benchmarks/out/synthetic_compare]

Trains every method of `--methods` plus each modality alone (the reference for
"what the modality reaches when trained alone") with `configs/synthetic.py`,
one workdir per (variant, seed); a run whose results.json exists is reused, so
an interrupted comparison continues. Seed s sets both the training seed and
the data draw. Prints mean ± std of test accuracy per head (std: population,
ddof = 0, as the paper reports) and writes `summary.json` with every run.
It then checks the benchmark's claims and prints PASS/FAIL for each.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import json
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from configs import synthetic  # noqa: E402  (path set above)

_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (training and data draw).')
_METHODS = flags.DEFINE_list('methods', ['joint', 'multiloss', 'mlb'], 'Methods to compare.')
_OUT = flags.DEFINE_string('out', 'benchmarks/out/synthetic_compare', 'Output directory.')
_SET = flags.DEFINE_multi_string('set', [], 'Config overrides for every run, e.g. balancing.alpha=1.5.')

HEADS = ('fused', 'audio', 'video')


def variants(methods):
  out = {m: f'method={m}' for m in methods}
  out.update({'audio_alone': 'unimodal=audio', 'video_alone': 'unimodal=video'})
  return out


def apply_overrides(config, overrides):
  for item in overrides:
    key, _, value = item.partition('=')
    section, _, leaf = key.rpartition('.')
    target = config
    for part in filter(None, section.split('.')):
      target = target[part]
    target[leaf] = type(target[leaf])(value)
  return config


def run_one(name, arg, seed):
  from mlb_jax import loop
  workdir = os.path.join(_OUT.value, name, f'seed_{seed}')
  path = os.path.join(workdir, loop.RESULTS)
  if os.path.exists(path):
    return json.load(open(path)), None
  config = apply_overrides(synthetic.get_config(arg), _SET.value)
  config.seed = seed
  config.data.seed = seed
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  start = time.time()
  results = loop.train_and_evaluate(config, workdir)
  return results, time.time() - start


def mean_std(values):
  n = len(values)
  mean = sum(values) / n
  return mean, (sum((v - mean) ** 2 for v in values) / n) ** 0.5


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  seeds = [int(s) for s in _SEEDS.value]
  runs, table = {}, {}
  for name, arg in variants(_METHODS.value).items():
    runs[name] = []
    for seed in seeds:
      results, seconds = run_one(name, arg, seed)
      acc = {h: results['test'][h]['accuracy'] for h in HEADS}
      runs[name].append({'seed': seed, 'test': results['test'], 'best_step': results['best_step'],
                         'seconds': seconds})
      print(f'{name:12s} seed {seed}: ' + '  '.join(f'{h} {acc[h]:.4f}' for h in HEADS) +
            (f'  ({seconds:.0f} s)' if seconds else '  (reused)'), flush=True)
    table[name] = {h: mean_std([r['test'][h]['accuracy'] for r in runs[name]]) for h in HEADS}
    table[name]['fused_ece'] = mean_std([r['test']['fused']['ece'] for r in runs[name]])

  print(f'\ntest accuracy, mean ± std over seeds {seeds} (population std), %')
  print(f"{'variant':12s} " + ' '.join(f'{h:>14s}' for h in (*HEADS, 'fused ECE')))
  for name, row in table.items():
    cells = [row[h] for h in HEADS] + [row['fused_ece']]
    print(f'{name:12s} ' + ' '.join(f'{100 * m:7.2f} ± {100 * s:4.2f}' for m, s in cells))

  checks = {}
  if {'joint', 'video_alone', 'audio_alone'} <= set(table):
    slow = min(('audio', 'video'), key=lambda m: table['joint'][m][0] - table[f'{m}_alone'][m][0])
    gap = table[f'{slow}_alone'][slow][0] - table['joint'][slow][0]
    checks['imbalance: joint probe of the slower modality >= 5 points below it alone'] = {
        'modality': slow, 'gap_points': 100 * gap, 'pass': gap >= 0.05}
  if {'joint', 'mlb'} <= set(table):
    gain = table['mlb']['fused'][0] - table['joint']['fused'][0]
    checks['mlb fused >= joint + 3 points'] = {'gain_points': 100 * gain, 'pass': gain >= 0.03}
  if {'multiloss', 'mlb'} <= set(table):
    diff = table['mlb']['fused'][0] - table['multiloss']['fused'][0]
    checks['mlb fused >= multiloss'] = {'diff_points': 100 * diff, 'pass': diff >= 0}
  print()
  for claim, c in checks.items():
    print(f"{'PASS' if c['pass'] else 'FAIL'}  {claim}: " +
          ', '.join(f'{k} {v:.2f}' if isinstance(v, float) else f'{k} {v}' for k, v in c.items() if k != 'pass'))

  summary = {'seeds': seeds, 'overrides': _SET.value, 'std': 'population (ddof=0)',
             'table': {n: {h: {'mean': m, 'std': s} for h, (m, s) in row.items()} for n, row in table.items()},
             'checks': checks, 'runs': runs}
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(f"\nwrote {os.path.join(_OUT.value, 'summary.json')}")


if __name__ == '__main__':
  app.run(main)
