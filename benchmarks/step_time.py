"""Train-step time of each method after compilation, measured in one run.

  python benchmarks/step_time.py [--config=configs/synthetic.py] [--steps=200] [--rounds=5] [--json]
  python benchmarks/step_time.py --model=cremad_resnet18 --methods=joint,mlb --batch_sizes=8,32 \
      [--frame_size=224] [--dtypes=float32,bfloat16] --steps=2 --rounds=3 [--json]

`--model=cremad_resnet18` times the paper's CREMA-D model (configs/cremad_mlb.py:
two ResNet-18, Late-Linear, Adam, the method's released settings) on random
CREMA-D-shaped batches made here (spectrogram 257 x 188, 3 frames of
`frame_size`^2 RGB, 6 classes), for every batch size and compute dtype, no
data pipeline involved.

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
_MODEL = flags.DEFINE_enum('model', 'config', ['config', 'cremad_resnet18'],
                           "'config': the --config's model and data; 'cremad_resnet18': see above.")
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['8', '32'], 'cremad_resnet18: batch sizes.')
_FRAME_SIZE = flags.DEFINE_integer('frame_size', 224, 'cremad_resnet18: frame height and width.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32'], 'cremad_resnet18: model.dtype values (bfloat16 for GPUs).')

CREMAD_MODALITIES = ('audio', 'video')
CREMAD_CLASSES = 6


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


def prepare_cremad(method, batch_size, frame_size, dtype):
  """The CREMA-D ResNet-18 step on random CREMA-D-shaped batches (two, alternated)."""
  import numpy as np
  from configs import cremad_mlb
  from mlb_jax import balancing, losses, models, optim, steps
  from mlb_jax.train_state import create_train_state
  config = cremad_mlb.get_config(f'method={method}')
  config.model.dtype = dtype
  shapes = {'audio': tuple(config.data.audio_shape), 'video': (config.data.video_shape[0], frame_size, frame_size, 3)}
  model = models.build_model(config.model, CREMAD_MODALITIES, shapes, CREMAD_CLASSES)
  method_ = balancing.make_method(config.method, CREMAD_MODALITIES, config.balancing)
  tx = optim.make_optimizer(config.optimizer, optim.modality_labels, config.balancing.apply_to)
  rng = np.random.default_rng(0)
  batches = [jax.device_put({**{m: rng.standard_normal((batch_size,) + shapes[m], dtype=np.float32)
                                for m in CREMAD_MODALITIES},
                             'label': rng.integers(0, CREMAD_CLASSES, batch_size).astype(np.int32)})
             for _ in range(2)]
  state = create_train_state(model, tx, method_, batches[0], jax.random.key(config.seed))
  step = steps.make_train_step(model=model, tx=tx, method=method_,
                               loss_weights=losses.loss_weights(config.loss, CREMAD_MODALITIES))
  start = time.perf_counter()
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics)
  return {'step': step, 'state': state, 'batches': batches, 'compile_s': time.perf_counter() - start}


def main_cremad():
  """Interleaved timing of every (method, batch size, dtype) of the CREMA-D model."""
  keys = [(m, int(b), d) for d in _DTYPES.value for b in _BATCH_SIZES.value for m in _METHODS.value]
  benches = {k: prepare_cremad(k[0], k[1], _FRAME_SIZE.value, k[2]) for k in keys}
  for b in benches.values():
    time_round(b, 1)  # warm-up
  times = {k: [] for k in benches}
  for _ in range(_ROUNDS.value):
    for k, b in benches.items():
      times[k].append(time_round(b, _STEPS.value))
  device = f'{jax.devices()[0].device_kind} x{jax.device_count()}'
  print(f'device: {device}; CREMA-D ResNet-18 (audio 257x188, 3 frames {_FRAME_SIZE.value}x{_FRAME_SIZE.value}); '
        f'{_ROUNDS.value} rounds x {_STEPS.value} steps, median')
  rows = {}
  for (m, b, d), ts in times.items():
    med = statistics.median(ts)
    first = statistics.median(times[(_METHODS.value[0], b, d)])
    rows[f'{m}_b{b}_{d}'] = r = {'method': m, 'batch_size': b, 'dtype': d, 'ms_per_step': 1e3 * med,
                                 'samples_per_s': b / med, 'ratio_to_first': med / first,
                                 'compile_s': benches[(m, b, d)]['compile_s']}
    print(f"{m:10s} batch {b:4d} {d:9s} {r['ms_per_step']:9.1f} ms/step {r['samples_per_s']:8.2f} samples/s  "
          f"x{r['ratio_to_first']:.3f} vs {_METHODS.value[0]}  (compile {r['compile_s']:.1f} s)")
  if _JSON.value:
    print(json.dumps({'model': 'cremad_resnet18', 'frame_size': _FRAME_SIZE.value, 'device': device,
                      'rows': rows}))


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
  if _MODEL.value == 'cremad_resnet18':
    main_cremad()
    return
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
