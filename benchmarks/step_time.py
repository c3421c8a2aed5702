"""Train-step time of each method after compilation, measured in one run.

  python benchmarks/step_time.py [--config=configs/synthetic.py] [--steps=200] [--rounds=5] [--json]

For every method the jitted step is compiled first (compile time reported),
then `--rounds` rounds each time `--steps` steps of every method in turn
(interleaved, so machine noise hits all methods alike). Reported: the median
over rounds of ms/step and samples/s, and each method's ratio to the first
method (`joint`). Epoch-level work (MSLR's validation, PMR's prototypes) is
outside the step and not timed here.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import json
import statistics
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/synthetic.py', 'Config file.')
_METHODS = flags.DEFINE_list(
    'methods', ['joint', 'multiloss', 'mlb', 'ogm', 'ogm_ge', 'mslr', 'agm', 'pmr', 'mmcosine'],
    'Methods to time; the first is the reference of the ratios.')
_STEPS = flags.DEFINE_integer('steps', 200, 'Steps per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved rounds.')
_JSON = flags.DEFINE_bool('json', False, 'Print a JSON line as well.')


def prepare(config, method):
  from data_pipelines import common
  from mlb_jax import loop, steps
  config = config.copy_and_resolve_references()
  config.method = method
  if method == 'mmcosine':
    config.model.fusion = 'mmcosine'
  exp = loop.build(config)
  state = loop.initial_state(exp)
  it = common.train_batches(exp.dataset.splits['train'], batch_size=config.data.batch_size, seed=0)
  batches = [jax.device_put(next(it)) for _ in range(8)]  # data loading is not timed
  step = steps.make_train_step(model=exp.model, tx=exp.tx, method=exp.method,
                               loss_weights=exp.loss_weights)
  start = time.perf_counter()
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics)
  return {'step': step, 'state': state, 'batches': batches, 'compile_s': time.perf_counter() - start}


def time_round(bench, n):
  state, step, batches = bench['state'], bench['step'], bench['batches']
  start = time.perf_counter()
  for i in range(n):
    state, metrics = step(state, batches[i % len(batches)])
  jax.block_until_ready((state, metrics))
  bench['state'] = state
  return (time.perf_counter() - start) / n


def main(argv):
  del argv
  config = _CONFIG.value
  benches = {m: prepare(config, m) for m in _METHODS.value}
  for b in benches.values():
    time_round(b, 10)  # warm-up
  times = {m: [] for m in benches}
  for _ in range(_ROUNDS.value):
    for m, b in benches.items():
      times[m].append(time_round(b, _STEPS.value))
  batch = config.data.batch_size
  base = statistics.median(times[next(iter(times))])
  rows = {}
  for m, ts in times.items():
    med = statistics.median(ts)
    rows[m] = {'ms_per_step': 1e3 * med, 'samples_per_s': batch / med,
               'ratio_to_first': med / base, 'compile_s': benches[m]['compile_s']}
  first = next(iter(times))
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; batch {batch}; '
        f'{_ROUNDS.value} rounds x {_STEPS.value} steps, median')
  for m, r in rows.items():
    print(f"{m:10s} {r['ms_per_step']:8.2f} ms/step  {r['samples_per_s']:9.1f} samples/s  "
          f"x{r['ratio_to_first']:.3f} vs {first}  (compile {r['compile_s']:.1f} s)")
  if 'agm' in rows:
    from mlb_jax.balancing import agm
    passes = agm.extra_forward_passes(config.balancing.agm.reencode)
    rows['agm']['extra_forward_passes'] = passes
    print(f"agm makes {passes['encoder']} extra encoder and {passes['fusion']} extra fusion passes per step "
          f"(balancing.agm.reencode='{config.balancing.agm.reencode}'): x{rows['agm']['ratio_to_first']:.3f}")
  if _JSON.value:
    print(json.dumps({'config': config.data.name, 'batch_size': batch, 'device': jax.devices()[0].device_kind,
                      'methods': rows}))


if __name__ == '__main__':
  app.run(main)
