"""Methods compared on the embedded benchmark over several seeds.

  python benchmarks/synthetic_compare.py [--seeds=0,1,2] [--out=benchmarks/out/synthetic_compare]
  python benchmarks/synthetic_compare.py --methods=mlb,joint --set=dtype=bfloat16 --set=num_seeds=3 \
      --out=benchmarks/out/synthetic_bf16     # bfloat16 compute, the 3 seeds in one vmapped step

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
from mlb_jax import balancing, loop, runtime  # noqa: E402
from mlb_jax.experiments import aggregate, runner  # noqa: E402

_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (training and data draw).')
_METHODS = flags.DEFINE_list('methods', list(balancing.METHODS), 'Methods to compare (default: every method).')
_OUT = flags.DEFINE_string('out', 'benchmarks/out/synthetic_compare', 'Output directory.')
_SET = flags.DEFINE_multi_string('set', [], 'Config overrides for every run, e.g. balancing.mlb.alpha=1.5.')
_ALONE = flags.DEFINE_bool('alone', True, 'Also train each modality alone (the unimodal references).')

HEADS = ('fused', 'audio', 'video')


def variants(methods):
  out = {m: f'method={m}' for m in methods}
  if _ALONE.value:
    out.update({'audio_alone': 'unimodal=audio', 'video_alone': 'unimodal=video'})
  return out


def base_config(arg):
  config = synthetic.get_config(arg)
  for item in _SET.value:
    key, _, value = item.partition('=')
    config = runner.with_fields(config, {key: runner.parse_value(config, key, value)})
  return config


def run_variant(name, arg, seeds):
  """Every seed of one variant (finished runs reused), as [{'seed', 'test', 'best_step', 'seconds'}]."""
  seconds = {}

  def timed_train_many(configs, workdirs):  # --set=num_seeds=S: S seeds per vmapped step
    start = time.time()
    results = loop.train_and_evaluate_many(configs, workdirs)
    for workdir in workdirs:  # the group's time, shared out
      seconds[os.path.basename(workdir)] = (time.time() - start) / len(workdirs)
    return results

  def show(name, run, results, reused):
    acc = {h: results['test'][h]['accuracy'] for h in HEADS}
    print(f'{name:12s} {run.name}: ' + '  '.join(f'{h} {acc[h]:.4f}' for h in HEADS) +
          ('  (reused)' if reused else f'  ({seconds[run.name]:.0f} s)'), flush=True)

  runs = runner.make_runs(seeds=seeds, seed_fields=('seed', 'data.seed'))
  all_results = runner.run_variant(base_config(arg), _OUT.value, name, runs, train_many=timed_train_many, on_result=show)
  return [{'seed': seed, 'test': r['test'], 'best_step': r['best_step'],
           'seconds': seconds.get(run.name)}
          for seed, run, r in zip(seeds, runs, all_results)]


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  seeds = [int(s) for s in _SEEDS.value]
  runtime.use_compilation_cache(base_config('').compilation_cache_dir)
  runs, table = {}, {}
  os.makedirs(_OUT.value, exist_ok=True)
  for name, arg in variants(_METHODS.value).items():
    runs[name] = run_variant(name, arg, seeds)
    table[name] = {h: aggregate.mean_std([r['test'][h]['accuracy'] for r in runs[name]]) for h in HEADS}
    table[name]['fused_ece'] = aggregate.mean_std([r['test']['fused']['ece'] for r in runs[name]])

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
  with open(os.path.join(_OUT.value, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(f"\nwrote {os.path.join(_OUT.value, 'summary.json')}")


if __name__ == '__main__':
  app.run(main)
