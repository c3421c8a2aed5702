"""Train-step time of each method after compilation, measured in one run.

  python benchmarks/step_time.py [--config=configs/synthetic.py] [--steps=200] [--rounds=5] [--json]
  python benchmarks/step_time.py --model=cremad_resnet18 --methods=joint,mlb --batch_sizes=8,32 \
      [--frame_size=224] [--dtypes=float32,bfloat16] --steps=2 --rounds=3 [--malloc_reuse] [--json]
  python benchmarks/step_time.py --seeds=4 --methods=mlb [--cpu_devices=2] [--steps=50] [--whole_runs=2] [--json]
  python benchmarks/step_time.py --seeds=4 --methods=mlb --steps=20 --model=cremad_resnet18 \
      --dtypes=float32,bfloat16 --batch_sizes=8 --frame_size=64 --resnet_steps=1 --rounds=3   # both, one run

`--seeds=S` times many seeds at once (one vmapped step, mlb_jax/build.py) on the --config's
model, for the first of --methods: samples/s of one seed (S=1), of S seeds in
one vmapped step, and of the same S seeds stepped one after another with the
single-seed step ("sequential", what S separate runs do), interleaved rounds,
medians, the ratio vmapped / sequential and the compile time of each step.
`--cpu_devices=N` splits the CPU into N JAX devices first (as JAX_NUM_CPU_DEVICES
does): the vmapped step then spreads its seeds over them, the sequential runs
keep one. `--compilation_cache_dir` enables the persistent compilation cache
(run twice: the second run's compile times are cache loads). `--whole_runs=N`
then times N rounds of whole trainings as a user runs them: one `run.py`
process with `num_seeds=S` against S single `run.py` processes one after
another (import, data, compile, training, validation, checkpoints, test),
wall clock, with the --config and its --config.* overrides.

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
from mlb_jax import balancing  # noqa: E402  (after the path insert)

_METHODS = flags.DEFINE_list('methods', list(balancing.METHODS),
                             'Methods to time (default: every method, joint first); the first is the reference '
                             'of the ratios.')
_STEPS = flags.DEFINE_integer('steps', 200, 'Steps per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved rounds.')
_JSON = flags.DEFINE_bool('json', False, 'Print a JSON line as well.')
_MODEL = flags.DEFINE_enum('model', 'config', ['config', 'cremad_resnet18'],
                           "'config': the --config's model and data; 'cremad_resnet18': see above.")
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['8', '32'], 'cremad_resnet18: batch sizes.')
_FRAME_SIZE = flags.DEFINE_integer('frame_size', 224, 'cremad_resnet18: frame height and width.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32'], 'cremad_resnet18: config.dtype values (bfloat16 for GPUs).')
_SEEDS = flags.DEFINE_integer('seeds', 0, 'S > 1: time S seeds vmapped vs one after another (see above).')
_WHOLE_RUNS = flags.DEFINE_integer('whole_runs', 0, 'With --seeds=S: also time N rounds of whole `run.py` trainings '
                                   '(one S-seed run vs S single runs, one process each).')
_CPU_DEVICES = flags.DEFINE_integer('cpu_devices', 0, 'N > 0: split the CPU into N JAX devices first.')
_RESNET_STEPS = flags.DEFINE_integer('resnet_steps', 0, 'cremad_resnet18: steps per round (0: --steps).')
_CACHE = flags.DEFINE_string('compilation_cache_dir', '', 'Persistent compilation cache directory ("" off).')
_MALLOC_REUSE = flags.DEFINE_bool('malloc_reuse', False, 'Apply mlb_jax.cpu_malloc.reuse_freed_memory() '
                                  '(process-wide glibc settings, CPU) before anything runs.')

CREMAD_MODALITIES = ('audio', 'video')
CREMAD_CLASSES = 6


def prepare(config, method):
  from data_pipelines import common
  from mlb_jax import build, loop
  config = config.copy_and_resolve_references()
  config.method = method
  exp = build.build(config)
  state = loop.initial_state([exp])
  it = common.train_batches(exp.dataset.splits['train'], batch_size=config.data.batch_size, seed=0)
  # data loading is not timed
  batches = [exp.training.place_batch([next(it)]) for _ in range(8)]
  combine = exp.training.method.combine is not None
  passes = pass_functions(exp.training, state, batches[0]) if combine else None  # before the state is donated
  return {**compiled_bench(exp.training.train_step, state, batches), 'combine': combine, 'passes': passes,
          'name': method}


def compiled_bench(step, state, batches):
  """A bench of `step` after its first call (the compile time)."""
  start = time.perf_counter()
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics)
  return {'step': step, 'state': state, 'batches': batches, 'compile_s': time.perf_counter() - start}


def prepare_cremad(method, batch_size, frame_size, dtype):
  """The CREMA-D ResNet-18 step on random CREMA-D-shaped batches (two, alternated)."""
  import numpy as np
  from configs import cremad_mlb
  from mlb_jax import build
  config = cremad_mlb.get_config(f'method={method}')
  config.dtype = dtype
  shapes = {'audio': tuple(config.data.audio_shape), 'video': (config.data.video_shape[0], frame_size, frame_size, 3)}
  # Random batches: no epochs are simulated (steps_per_epoch 1 only places epoch-based windows).
  training = build.build_training(config, build.DataSpec(CREMAD_MODALITIES, shapes, CREMAD_CLASSES, 1))
  rng = np.random.default_rng(0)
  host = [{**{m: rng.standard_normal((batch_size,) + shapes[m], dtype=np.float32) for m in CREMAD_MODALITIES},
           'label': rng.integers(0, CREMAD_CLASSES, batch_size).astype(np.int32)} for _ in range(2)]
  state = training.initial_state({m: host[0][m][0] for m in CREMAD_MODALITIES}, [config.seed])
  return compiled_bench(training.train_step, state, [training.place_batch([b]) for b in host])


def main_cremad():
  """Interleaved timing of every (method, batch size, dtype) of the CREMA-D model."""
  keys = [(m, int(b), d) for d in _DTYPES.value for b in _BATCH_SIZES.value for m in _METHODS.value]
  benches = {k: prepare_cremad(k[0], k[1], _FRAME_SIZE.value, k[2]) for k in keys}
  for b in benches.values():
    time_round(b, 1)  # warm-up
  times = {k: [] for k in benches}
  for _ in range(_ROUNDS.value):
    for k, b in benches.items():
      times[k].append(time_round(b, _RESNET_STEPS.value or _STEPS.value))
  device = f'{jax.devices()[0].device_kind} x{jax.device_count()}'
  print(f'device: {device}; CREMA-D ResNet-18 (audio 257x188, 3 frames {_FRAME_SIZE.value}x{_FRAME_SIZE.value}); '
        f'{_ROUNDS.value} rounds x {_RESNET_STEPS.value or _STEPS.value} steps, median')
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


def main_seeds(config, method, num_seeds):
  """S=1, S seeds vmapped and S seeds one after another, interleaved (see the module docstring)."""
  from data_pipelines import common
  from mlb_jax import build, loop
  exps = []
  for s in range(num_seeds):
    c = config.copy_and_resolve_references()
    c.method, c.seed = method, s
    exps.append(build.build(c))
  iters = [common.train_batches(e.dataset.splits['train'], batch_size=config.data.batch_size, seed=s)
           for s, e in enumerate(exps)]
  batches = [[next(it) for _ in range(8)] for it in iters]  # data loading is not timed
  single, multi = exps[0].training, build.build_training(exps[0].config, exps[0].training.spec,
                                                         num_replicas=num_seeds)
  mesh = multi.mesh
  states, compile_single = [], None
  for e, bs in zip(exps, batches):
    bench = compiled_bench(single.train_step, loop.initial_state([e]), [single.place_batch([bs[0]])])
    states.append(bench['state'])
    compile_single = compile_single or bench['compile_s']
  stacked_batches = [multi.place_batch([bs[i] for bs in batches]) for i in range(8)]
  batches = [[single.place_batch([b]) for b in bs] for bs in batches]
  stacked_state = multi.initial_state(exps[0].dataset.splits['train'][0], [e.config.seed for e in exps])
  bench = compiled_bench(multi.train_step, stacked_state, stacked_batches)
  stacked, compile_multi, multi = bench['state'], bench['compile_s'], multi.train_step
  single = single.train_step
  benches = {'S=1': {'step': single, 'state': states[0], 'batches': batches[0]},
             f'S={num_seeds} vmapped': {'step': multi, 'state': stacked, 'batches': stacked_batches},
             **{f'seq_{s}': {'step': single, 'state': states[s], 'batches': batches[s]}
                for s in range(1, num_seeds)}}
  for b in benches.values():
    time_round(b, 5)  # warm-up
  times = {'S=1': [], 'vmapped': [], 'sequential': []}
  for _ in range(_ROUNDS.value):
    times['S=1'].append(time_round(benches['S=1'], _STEPS.value))
    times['vmapped'].append(time_round(benches[f'S={num_seeds} vmapped'], _STEPS.value))
    times['sequential'].append(times['S=1'][-1] + sum(time_round(benches[f'seq_{s}'], _STEPS.value)
                                                      for s in range(1, num_seeds)))
  batch = config.data.batch_size
  seeds_per_step = {'S=1': 1, 'vmapped': num_seeds, 'sequential': num_seeds}
  rows = {k: {'samples_per_s': seeds_per_step[k] * batch / statistics.median(ts),
              'ms_per_round_step': 1e3 * statistics.median(ts)} for k, ts in times.items()}
  ratios = [s / v for s, v in zip(times['sequential'], times['vmapped'])]
  rows['S=1']['compile_s'] = rows['sequential']['compile_s'] = compile_single
  rows['vmapped']['compile_s'] = compile_multi
  device = f'{jax.devices()[0].device_kind} x{jax.device_count()}'
  print(f"device: {device}; {config.data.name} model, method {method}, batch {batch} per seed; "
        f"{_ROUNDS.value} rounds x {_STEPS.value} steps, median; vmapped over "
        f"{1 if mesh is None else mesh.devices.size} device(s); load average {os.getloadavg()[0]:.1f}")
  names = {'S=1': 'S=1', 'vmapped': f'S={num_seeds} vmapped', 'sequential': f'{num_seeds} sequential'}
  for k, r in rows.items():
    print(f"{names[k]:14s} {r['samples_per_s']:9.1f} samples/s  (compile {r['compile_s']:.2f} s)")
  print(f'vmapped / sequential throughput: x{statistics.median(ratios):.2f} (median of per-round ratios; '
        f'rounds {", ".join(f"{x:.2f}" for x in ratios)})')
  if _JSON.value:
    print(json.dumps({'config': config.data.name, 'method': method, 'seeds': num_seeds, 'batch_size': batch,
                      'device': device, 'replica_devices': 1 if mesh is None else int(mesh.devices.size),
                      'rows': rows, 'ratio_vmapped_to_sequential': statistics.median(ratios),
                      'round_ratios': ratios, 'load_average': os.getloadavg()[0]}))


def main_whole_runs(method, num_seeds, rounds):
  """Whole trainings as a user runs them, one `run.py` process each, wall-clock.

  Per round: one run with `num_seeds=S` (seeds 0..S-1 in one vmapped step) and
  S single runs (seeds 0..S-1, one after another), in turn; each process
  imports, compiles, loads its data, trains `train.num_steps` steps with its
  validations and checkpoints, and tests. Throughput: S x steps x batch / wall
  seconds. The --config file and every --config.* override pass through.
  """
  import subprocess
  import tempfile
  config = _CONFIG.value
  config_file = flags.FLAGS['config'].config_filename
  overrides = [a for a in sys.argv[1:] if a.startswith('--config.')]
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')

  def run(workdir, *extra):
    cmd = [sys.executable, 'run.py', f'--config={config_file}', f'--config.method={method}', *overrides, *extra,
           f'--workdir={workdir}']
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode:
      raise SystemExit(f'{" ".join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}')
    return time.perf_counter() - start

  walls = {'vmapped': [], 'sequential': []}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(rounds):
      walls['vmapped'].append(run(f'{tmp}/v{r}', f'--config.num_seeds={num_seeds}'))
      walls['sequential'].append(sum(run(f'{tmp}/s{r}_{s}', f'--config.seed={s}') for s in range(num_seeds)))
  samples = num_seeds * config.train.num_steps * config.data.batch_size
  rows = {k: {'wall_s': statistics.median(v), 'samples_per_s': samples / statistics.median(v), 'round_wall_s': v}
          for k, v in walls.items()}
  ratios = [s / v for s, v in zip(walls['sequential'], walls['vmapped'])]
  print(f'whole runs: {config.data.name}, method {method}, {num_seeds} seeds x {config.train.num_steps} steps x '
        f'batch {config.data.batch_size}; {rounds} round(s); load average {os.getloadavg()[0]:.1f}')
  print(f"  1 run, num_seeds={num_seeds}: {rows['vmapped']['wall_s']:7.1f} s  "
        f"{rows['vmapped']['samples_per_s']:8.1f} samples/s")
  print(f"  {num_seeds} single runs:     {rows['sequential']['wall_s']:7.1f} s  "
        f"{rows['sequential']['samples_per_s']:8.1f} samples/s")
  print(f'  vmapped / sequential throughput: x{statistics.median(ratios):.2f} '
        f'(rounds {", ".join(f"{x:.2f}" for x in ratios)})')
  if _JSON.value:
    print(json.dumps({'whole_runs': True, 'config': config.data.name, 'method': method, 'seeds': num_seeds,
                      'steps': config.train.num_steps, 'batch_size': config.data.batch_size, 'rows': rows,
                      'ratio_vmapped_to_sequential': statistics.median(ratios), 'round_ratios': ratios,
                      'load_average': os.getloadavg()[0]}))


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
  if _MALLOC_REUSE.value:   # first: before any thread is given a malloc arena
    from mlb_jax import cpu_malloc
    print(f'malloc_reuse: {cpu_malloc.reuse_freed_memory()}')
  if _CPU_DEVICES.value:  # before anything initialises the CPU backend
    jax.config.update('jax_num_cpu_devices', _CPU_DEVICES.value)
  from mlb_jax import runtime
  runtime.use_compilation_cache(_CACHE.value)
  if _SEEDS.value > 1:
    main_seeds(_CONFIG.value, _METHODS.value[0], _SEEDS.value)
    if _WHOLE_RUNS.value:
      main_whole_runs(_METHODS.value[0], _SEEDS.value, _WHOLE_RUNS.value)
  if _MODEL.value == 'cremad_resnet18':
    main_cremad()
    return
  if _SEEDS.value > 1:
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
  for m, b in benches.items():
    if b['combine'] and 'multiloss' in rows:
      rows[m]['backward_passes'] = combine_cost(b, rows[m]['ms_per_step'], rows['multiloss']['ms_per_step'])
  if _JSON.value:
    print(json.dumps({'config': config.data.name, 'batch_size': batch, 'device': jax.devices()[0].device_kind,
                      'load_average': os.getloadavg()[0], 'methods': rows}))


def pass_functions(training, state, batch):
  """Jitted (forward of the method's objectives, gradient of their sum) on `batch`, and the number of
  objectives: the pieces of a `combine` method's step (one forward, one backward per objective)."""
  from mlb_jax import steps
  key = jax.random.key(0)

  def total(params):
    objectives, _ = steps.method_objectives(params, state, batch, model=training.model, method=training.method,
                                            loss_weights=training.loss_weights, dropout_rng=key, method_rng=key)
    return sum(objectives.values()), len(objectives)

  count = total(state.params)[1]
  return jax.jit(lambda p: total(p)[0]), jax.jit(jax.grad(lambda p: total(p)[0])), count


def combine_cost(bench, ms_step, ms_multiloss):
  """Expected vs measured step time of a `combine` method (one backward pass per objective, batched).

  Expected: Multi-Loss's step (one forward, one backward of the summed loss) plus K - 1 more backward
  passes, each costing (gradient - forward) of the method's objectives, timed here on the same batch.
  """
  forward, backward, count = bench['passes']
  params = bench['state'].params
  times = {}
  for name, fn in (('forward', forward), ('gradient', backward)):
    jax.block_until_ready(fn(params))
    samples = []
    for _ in range(_ROUNDS.value):
      start = time.perf_counter()
      for _ in range(_STEPS.value):
        out = fn(params)
      jax.block_until_ready(out)
      samples.append((time.perf_counter() - start) / _STEPS.value)
    times[name] = 1e3 * statistics.median(samples)
  one_backward = max(times['gradient'] - times['forward'], 0.0)
  expected = ms_multiloss + (count - 1) * one_backward
  out = {'objectives': count, 'forward_ms': times['forward'], 'gradient_ms': times['gradient'],
         'one_backward_ms': one_backward, 'expected_ms_per_step': expected, 'measured_ms_per_step': ms_step,
         'measured_over_expected': ms_step / expected}
  print(f"{bench['name']}: {count} objectives = {count} backward passes per step. One backward costs "
        f"{one_backward:.2f} ms (gradient {times['gradient']:.2f} - forward {times['forward']:.2f}); expected "
        f"multiloss + {count - 1} x backward = {expected:.2f} ms/step, measured {ms_step:.2f} "
        f"(x{ms_step / expected:.3f} of expected)")
  return out


if __name__ == '__main__':
  app.run(main)
