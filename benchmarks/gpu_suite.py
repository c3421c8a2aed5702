"""The speed suite for one GPU, in one process: writes `<out_dir>/gpu_suite.json`, prints a table last.

  bash benchmarks/gpu_suite.sh --out_dir=$OUT      # on the GPU machine (installs the wheels in .whl/ first)
  python benchmarks/gpu_suite.py [--out_dir=DIR] [--sections=1,2,3,4,5] [--budget_s=1=190,2=100,...]
  python benchmarks/gpu_suite.py --cpu_smoke       # every section at toy sizes on a CPU

Sections (independent: one that fails records its error and the suite goes on):
  1 step      the CREMA-D ResNet-18 pair (configs/cremad_mlb.py: spectrogram 257 x 188, 3 frames
              224 x 224, Late-Linear, Adam) on random batches: joint and mlb, float32 and bfloat16
              (`config.dtype`), batch 32 / 64 / 128: samples/s (median of rounds), compile seconds
              (lower + compile), the device's peak bytes in use after the configuration
              (`memory_stats()['peak_bytes_in_use']`, a process-wide peak: configurations run
              in increasing size, so it is that of the largest so far; null without
              memory stats) and XLA's own estimate of the step's memory (arguments +
              outputs + temporaries).
  2 pytorch   the same model and step in PyTorch (benchmarks/compare_pytorch.py's `torch_model`
              and `torch_step`, imported) on the same GPU, as a user writes it well: channels-last
              frames, bfloat16 autocast around the forward pass (float32 rows: TF32), cuDNN
              autotuning; eager at every batch and dtype, and `torch.compile` (bfloat16, the
              largest batch) where it compiles within the section's time. Each variant runs in
              a child process (a compile that overruns is stopped; the JSON says so). Ratio ours /
              PyTorch's best of the two at the same method, batch and dtype.
              Without torch: {"skipped": "torch not installed"}.
  3 seeds     S = 1, 2, 4, 8 seeds in one vmapped step (the build's `num_replicas`) of the
              CREMA-D model at batch 32 against S single-seed steps one after another:
              samples/s in all and per seed, and the ratio, per round (interleaved).
  4 pipeline  a CREMA-D-shaped ArrayRecord set written on the spot
              (benchmarks/input_pipeline.py's `write_records`, read with the training
              augmentation of data_pipelines/prepared.py) with 0 / 4 / 8 / 16 Grain worker
              processes, against what the fastest step of section 1 consumes; when no
              worker count keeps up, that is the headline.
  5 run       `python run.py --config=configs/synthetic.py --workdir=<tmp>` (the embedded
              benchmark, MLB, train + test) in a subprocess: wall seconds.

Time: every section has a budget (`--budget_s`, seconds, defaults below: about 8 minutes in all on
an H200 including start-up); a section stops starting new configurations when the next one would
not fit, and records those it left out as skipped. The JSON is written after every section.

Imports: nothing the suite imports pulls in TensorFlow, TensorFlow Datasets or the media
decoders (av, soundfile, soxr): the build, `data_pipelines.common`/`prepared`/`frames` and
benchmarks/input_pipeline.py's generators need none of them (tests/test_gpu_suite.py runs part
of the suite with them blocked). The GPU machine needs the wheels docs/speed.md lists.

`--cpu_smoke`: configs/cremad_mlb.py's `smoke` variant (width-8 ResNets, 32 x 24 spectrogram, 3
frames of 32 x 32), batch 4, 2 timed steps, S in (1, 2), 12 clips with 0 and 2 workers, eager
PyTorch only, and `configs/synthetic.py:smoke` for section 5.
"""

import argparse
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):   # benchmarks/ (input_pipeline, compare_pytorch), then the repository
  if _path not in sys.path:
    sys.path.insert(0, _path)

SECTIONS = {1: 'step', 2: 'pytorch', 3: 'seeds', 4: 'pipeline', 5: 'run'}
DEFAULT_BUDGET_S = {1: 190, 2: 100, 3: 70, 4: 40, 5: 50}
SMOKE_BUDGET_S = {1: 300, 2: 300, 3: 300, 4: 300, 5: 300}   # caps only: the smoke runs everything
NUM_CLASSES = 6                    # CREMA-D
GPU_SIZES = dict(methods=('joint', 'mlb'), dtypes=('bfloat16', 'float32'), batches=(32, 64, 128),
                 steps=20, rounds=3, warmup=3, torch_steps=10, torch_dtypes=('bfloat16', 'float32'),
                 seeds=(1, 2, 4, 8), seeds_batch=32, seeds_steps=10,
                 clips=256, pipeline_batch=32, workers=(0, 4, 8, 16), pipeline_batches=30, pipeline_warmup=8,
                 torch_compile=True, run_config='configs/synthetic.py')
SMOKE_SIZES = dict(methods=('joint', 'mlb'), dtypes=('bfloat16', 'float32'), batches=(4,),
                   step_configs=(('joint', 'float32', 4), ('mlb', 'bfloat16', 4)),   # both methods, both dtypes
                   steps=2, rounds=1, warmup=1, torch_steps=2, torch_dtypes=('bfloat16',), seeds=(1, 2),
                   seeds_batch=4, seeds_steps=1,
                   clips=12, pipeline_batch=4, workers=(0, 2), pipeline_batches=2, pipeline_warmup=1,
                   torch_compile=False, run_config='configs/synthetic.py:smoke')
SEEDS_METHOD, SEEDS_DTYPE = 'mlb', 'bfloat16'   # section 3's configuration (as section 1's row)
TORCH_METHOD = 'mlb'


# ----------------------------------------------------------- the library calls (ported in one place)


def suite_config(method: str, dtype: str, batch: int, smoke: bool):
  """configs/cremad_mlb.py for `method` (its `smoke` variant with --cpu_smoke) at compute `dtype`
  and `batch`: every config key the suite sets."""
  from configs import cremad_mlb
  config = cremad_mlb.get_config(f'method={method}' + (',smoke' if smoke else ''))
  config.dtype = dtype
  config.data.batch_size = batch
  return config


def sample_shapes(config) -> dict[str, tuple[int, ...]]:
  return {'audio': tuple(config.data.audio_shape), 'video': tuple(config.data.video_shape)}


def resnet_width(config) -> int:
  """The ResNet-18 stem width of `config` (the one model key the suite reads)."""
  return int(config.model.resnet18.width)


class Step(types.SimpleNamespace):
  """init(seeds) -> state; step(state, device batch) -> (state, metrics) (jitted);
  place(host batches, one per seed) -> device batch."""


def build_step(config, shapes, num_classes: int, num_seeds: int = 1) -> Step:
  """The train step a run of `config` takes, for data of `shapes` (random batches: no epochs,
  so steps_per_epoch 1); `num_seeds` > 1 is the vmapped many-seed step. Every call into the
  library's build is here."""
  import jax
  import numpy as np
  from mlb_jax import build
  modalities = tuple(shapes)
  training = build.build_training(config, build.DataSpec(modalities, dict(shapes), num_classes, 1),
                                  num_replicas=num_seeds)
  sample = {m: np.zeros(shapes[m], np.float32) for m in modalities}
  return Step(init=lambda seeds: training.initial_state(sample, list(seeds)), step=training.train_step,
              place=lambda hosts: jax.device_put(training.place_batch(hosts)))   # on the device before timing


# --------------------------------------------------------------------------------------- helpers


class Budget:
  def __init__(self, seconds: float):
    self.seconds, self.start = seconds, time.perf_counter()

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def left(self) -> float:
    return self.seconds - self.elapsed()

  def fits(self, estimate: float) -> bool:
    return estimate <= self.left()


def log(message: str) -> None:
  print(f'[gpu_suite {time.strftime("%H:%M:%S")}] {message}', flush=True)


def random_batch(rng, shapes, batch: int, num_classes: int) -> dict:
  import numpy as np
  out = {m: rng.standard_normal((batch, *s), dtype=np.float32) for m, s in shapes.items()}
  out['label'] = rng.integers(0, num_classes, batch).astype(np.int32)
  return out


def memory_stats() -> dict | None:
  import jax
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  (a backend without them)
    return None
  return stats or None


def peak_bytes():
  stats = memory_stats()
  return None if stats is None else stats.get('peak_bytes_in_use')


def compiled_bytes(compiled) -> int | None:
  """XLA's estimate of a compiled step's memory: arguments + outputs + temporaries - aliased."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def _abstract(tree):
  import jax
  return jax.tree.map(lambda x: (x.shape, str(x.dtype)), tree)


def initial_state(built: Step, seeds, like=None):
  """`built.init(seeds)`, or `like` when it is a state of the same structure, shapes and dtypes
  (the same method's parameters at another batch size or compute dtype): one init compile serves
  every configuration of a method. Only the timing uses these states."""
  import jax
  if like is not None:
    try:
      if _abstract(jax.eval_shape(lambda: built.init(seeds))) == _abstract(like):
        return like
    except Exception:  # pylint: disable=broad-except  (no shape inference: a real init)
      pass
  return built.init(seeds)


def stack_trees(trees):
  """S states stacked on a leading axis (the layout of an S-seed state)."""
  import jax
  import jax.numpy as jnp
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def copy_tree(tree):
  """A copy on the device (the train step donates its state)."""
  import jax
  import jax.numpy as jnp
  return jax.tree.map(lambda x: x.copy() if hasattr(x, 'copy') else jnp.array(x), tree)


def compile_step(built: Step, state, batch):
  """(compiled step, seconds to lower and compile)."""
  start = time.perf_counter()
  compiled = built.step.lower(state, batch).compile()
  return compiled, time.perf_counter() - start


def run_steps(fn, state, batches, n: int):
  """`n` steps, then waits for the device: (state, seconds)."""
  import jax
  start = time.perf_counter()
  metrics = None
  for i in range(n):
    state, metrics = fn(state, batches[i % len(batches)])
  jax.block_until_ready((state, metrics))
  return state, time.perf_counter() - start


# ------------------------------------------------------------------------------- section 1: step


def section_step(a, ctx, budget: Budget) -> dict:
  import jax
  import numpy as np
  sizes, smoke = ctx['sizes'], a.cpu_smoke
  # Increasing size (batch, then float32 after bfloat16), so the running peak is the configuration's own.
  keys = sizes.get('step_configs') or [(m, d, b) for b in sizes['batches'] for d in sizes['dtypes']
                                       for m in sizes['methods']]
  rows, last_cost, initial = [], 0.0, {}
  shapes0 = sample_shapes(suite_config(keys[0][0], keys[0][1], keys[0][2], smoke))
  for method, dtype, batch in keys:
    row = {'method': method, 'dtype': dtype, 'batch': batch}
    rows.append(row)
    if not budget.fits(last_cost):
      row['skipped'] = f'time budget ({budget.seconds:.0f} s) spent'
      continue
    start = time.perf_counter()
    try:
      config = suite_config(method, dtype, batch, smoke)
      shapes = sample_shapes(config)
      built = build_step(config, shapes, NUM_CLASSES)
      rng = np.random.default_rng(0)
      batches = [built.place([random_batch(rng, shapes, batch, NUM_CLASSES)]) for _ in range(2)]
      state = initial_state(built, [config.seed], initial.get(method))
      initial.setdefault(method, state)
      state = copy_tree(state)
      compiled, row['compile_s'] = compile_step(built, state, batches[0])
      state, _ = run_steps(compiled, state, batches, sizes['warmup'])
      times = []
      for _ in range(sizes['rounds']):
        state, seconds = run_steps(compiled, state, batches, sizes['steps'])
        times.append(seconds / sizes['steps'])
      step_s = statistics.median(times)
      row.update(samples_per_s=batch / step_s, ms_per_step=1e3 * step_s,
                 round_ms=[1e3 * t for t in times], peak_bytes_in_use=peak_bytes(),
                 step_bytes=compiled_bytes(compiled))
      if (method, dtype, batch) == (SEEDS_METHOD, SEEDS_DTYPE, sizes['seeds_batch']):
        ctx['single_seed'] = {'built': built, 'compiled': compiled, 'compile_s': row['compile_s']}
      del state, batches
      log(f"step {method} {dtype} b{batch}: {row['samples_per_s']:.1f} samples/s, compile {row['compile_s']:.1f} s")
    except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory: the next one may fit)
      row['error'] = _error(e)
      log(f'step {method} {dtype} b{batch}: {row["error"]["message"]}')
    last_cost = time.perf_counter() - start
  done = [r for r in rows if 'samples_per_s' in r]
  best = max(done, key=lambda r: r['samples_per_s']) if done else None
  return {'model': 'cremad_resnet18' + ('_smoke' if smoke else ''), 'shapes': {m: list(s) for m, s in shapes0.items()},
          'device': _device(), 'steps': sizes['steps'], 'rounds': sizes['rounds'], 'rows': rows,
          'fastest': None if best is None else {k: best[k] for k in ('method', 'dtype', 'batch', 'samples_per_s')}}


# ---------------------------------------------------------------------------- section 2: PyTorch


def section_pytorch(a, ctx, budget: Budget) -> dict:
  if importlib.util.find_spec('torch') is None:
    return {'skipped': 'torch not installed'}
  sizes, smoke = ctx['sizes'], a.cpu_smoke
  config = suite_config(TORCH_METHOD, 'float32', sizes['batches'][0], smoke)
  shapes = sample_shapes(config)
  spec = {'device': 'cpu' if smoke else 'cuda', 'width': resnet_width(config), 'method': TORCH_METHOD,
          'audio_shape': list(shapes['audio']), 'video_shape': list(shapes['video']), 'num_classes': NUM_CLASSES,
          'batches': list(sizes['batches']), 'dtypes': list(sizes['torch_dtypes']), 'steps': sizes['torch_steps'],
          'rounds': sizes['rounds'], 'warmup': sizes['warmup']}
  out = {'method': TORCH_METHOD, 'variants': {}}
  compile_too = sizes['torch_compile'] and not a.notorch_compile
  out['variants']['eager'] = _torch_child({**spec, 'compile': False}, budget.left() * (0.4 if compile_too else 1))
  if compile_too:   # one compile: bfloat16 autocast (the way to write it for speed) at the largest batch
    out['variants']['compiled'] = _torch_child({**spec, 'compile': True, 'dtypes': ['bfloat16'],
                                                'batches': [max(spec['batches'])]}, budget.left())
  else:
    out['variants']['compiled'] = {'skipped': 'torch.compile not tried (--cpu_smoke)' if smoke
                                   else 'torch.compile not tried (--notorch_compile)'}
  ours = {(r['dtype'], r['batch']): r for r in ctx['results'].get('step', {}).get('rows', [])
          if r.get('method') == TORCH_METHOD and 'samples_per_s' in r}
  rows = []
  for dtype in spec['dtypes']:
    for batch in spec['batches']:
      key = f'{dtype}_b{batch}'
      eager = out['variants']['eager'].get('rows', {}).get(key, {})
      compiled = out['variants']['compiled'].get('rows', {}).get(key, {})
      row = {'dtype': dtype, 'batch': batch, 'eager_samples_per_s': eager.get('samples_per_s'),
             'compiled_samples_per_s': compiled.get('samples_per_s')}
      # PyTorch's best of the two (torch.compile can lose to eager)
      if compiled.get('samples_per_s') and compiled['samples_per_s'] >= (eager.get('samples_per_s') or 0):
        row['theirs'], row['theirs_mode'] = compiled['samples_per_s'], 'torch.compile'
      elif eager.get('samples_per_s'):
        row['theirs'], row['theirs_mode'] = eager['samples_per_s'], 'eager'
        if not compiled.get('samples_per_s'):
          note = (compiled.get('error') or out['variants']['compiled'].get('skipped')
                  or out['variants']['compiled'].get('status') or 'not compiled for this row')
          row['compile_note'] = note['message'] if isinstance(note, dict) else note
      if (dtype, batch) in ours:
        row['ours'] = ours[(dtype, batch)]['samples_per_s']
        if row.get('theirs'):
          row['ratio_ours_to_theirs'] = row['ours'] / row['theirs']
      rows.append(row)
  out['rows'] = rows
  return out


def _torch_child(spec: dict, timeout: float) -> dict:
  """Runs `--torch_child` on `spec` for at most `timeout` s; its results so far."""
  if timeout < 5:
    return {'skipped': 'no time left in the section budget'}
  with tempfile.TemporaryDirectory(prefix='gpu_suite_torch_') as tmp:
    spec = {**spec, 'result': os.path.join(tmp, 'result.json')}
    with open(os.path.join(tmp, 'spec.json'), 'w') as f:
      json.dump(spec, f)
    cmd = [sys.executable, os.path.abspath(__file__), f'--torch_child={os.path.join(tmp, "spec.json")}']
    start = time.perf_counter()
    try:
      done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
      status = None if done.returncode == 0 else f'exit status {done.returncode}: {done.stderr[-1500:]}'
    except subprocess.TimeoutExpired:
      status = f'stopped after {timeout:.0f} s (the section budget)'
    result = {}
    if os.path.exists(spec['result']):
      with open(spec['result']) as f:
        result = json.load(f)
    result['wall_s'] = time.perf_counter() - start
    if status:
      result['status'] = status
    return result


def torch_child(spec_path: str) -> None:
  """The PyTorch side, in its own process: writes spec['result'] after every configuration."""
  with open(spec_path) as f:
    spec = json.load(f)
  result = {'compile': spec['compile'], 'rows': {}}

  def save():
    with open(spec['result'] + '.tmp', 'w') as f:
      json.dump(result, f)
    os.replace(spec['result'] + '.tmp', spec['result'])

  import torch
  import compare_pytorch   # the model and step of benchmarks/compare_pytorch.py
  result['torch'] = torch.__version__
  device = torch.device(spec['device'])
  if device.type == 'cuda':
    if not torch.cuda.is_available():
      result['skipped'] = 'torch sees no CUDA device'
      save()
      return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True   # float32 runs: TF32 matmuls and convolutions,
    torch.backends.cudnn.allow_tf32 = True         # as XLA's default precision on this GPU
    result['device'] = torch.cuda.get_device_name(0)
  else:
    result['device'] = 'cpu'
  save()
  for dtype in spec['dtypes']:
    for batch in spec['batches']:
      key = f'{dtype}_b{batch}'
      try:
        result['rows'][key] = _torch_time(torch, compare_pytorch, spec, device, dtype, batch)
      except Exception as e:  # pylint: disable=broad-except
        result['rows'][key] = {'error': _error(e)}
      save()
      if device.type == 'cuda':
        torch.cuda.empty_cache()


def _torch_time(torch, cp, spec, device, dtype: str, batch: int) -> dict:
  amp = dtype == 'bfloat16'

  class UserModel(torch.nn.Module):
    """compare_pytorch's network with the forward pass under bfloat16 autocast (and compiled)."""

    def __init__(self, net):
      super().__init__()
      self.net = net
      self.branches = net.branches   # torch_step scales each modality's own parameters
      self.forward_net = torch.compile(net) if spec['compile'] else net

    def forward(self, audio, video, detach):
      with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = self.forward_net(audio, video, detach=detach)
      return {k: v.float() for k, v in logits.items()}

  torch.manual_seed(0)
  net = cp.torch_model(torch, spec['width']).to(device).to(memory_format=torch.channels_last)
  net.train()
  model = UserModel(net)
  step = cp.torch_step(torch, model, spec['method'])
  t, h, w, c = spec['video_shape']
  audio = torch.randn(batch, *spec['audio_shape'], device=device)
  # [B, 3, T, H, W] as a view of [B, T, H, W, 3]: each frame reaches the convolutions channels-last.
  video = torch.randn(batch, t, h, w, c, device=device).permute(0, 4, 1, 2, 3)
  labels = torch.randint(0, spec['num_classes'], (batch,), device=device)
  sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  step(audio, video, labels)
  sync()
  first_s = time.perf_counter() - start
  for _ in range(max(spec['warmup'] - 1, 0)):
    step(audio, video, labels)
  sync()
  times = []
  for _ in range(spec['rounds']):
    start = time.perf_counter()
    for _ in range(spec['steps']):
      step(audio, video, labels)
    sync()
    times.append((time.perf_counter() - start) / spec['steps'])
  step_s = statistics.median(times)
  return {'samples_per_s': batch / step_s, 'ms_per_step': 1e3 * step_s, 'round_ms': [1e3 * x for x in times],
          'first_step_s': first_s, 'autocast_bf16': amp, 'channels_last': True,
          'peak_bytes': torch.cuda.max_memory_allocated() if device.type == 'cuda' else None}


# ------------------------------------------------------------------------------ section 3: seeds


def section_seeds(a, ctx, budget: Budget) -> dict:
  import numpy as np
  sizes, smoke = ctx['sizes'], a.cpu_smoke
  batch, steps = sizes['seeds_batch'], sizes['seeds_steps']
  config = suite_config(SEEDS_METHOD, SEEDS_DTYPE, batch, smoke)
  shapes = sample_shapes(config)
  seeds = sorted(sizes['seeds'])
  rng = np.random.default_rng(1)
  host = [[random_batch(rng, shapes, batch, NUM_CLASSES) for _ in range(2)] for _ in range(max(seeds))]
  single = ctx.get('single_seed')
  if single is None:   # section 1 did not run this configuration
    built = build_step(config, shapes, NUM_CLASSES)
    compiled, seconds = compile_step(built, built.init([0]), built.place([host[0][0]]))
    single = {'built': built, 'compiled': compiled, 'compile_s': seconds}
  one = single['built']
  seq_states = [one.init([s]) for s in range(max(seeds))]
  seq_batches = [[one.place([b]) for b in bs] for bs in host]
  for s in range(max(seeds)):   # warm-up
    seq_states[s], _ = run_steps(single['compiled'], seq_states[s], seq_batches[s], 1)
  out = {'method': SEEDS_METHOD, 'dtype': SEEDS_DTYPE, 'batch_per_seed': batch, 'steps': steps,
         'rounds': sizes['rounds'], 'single_compile_s': single['compile_s'], 'rows': []}
  last_cost = 0.0
  for num in seeds:
    row = {'S': num}
    out['rows'].append(row)
    if not budget.fits(last_cost * (1.5 if num > 1 else 1.0)):
      row['skipped'] = f'time budget ({budget.seconds:.0f} s) spent'
      continue
    start = time.perf_counter()
    try:
      if num == 1:
        multi_fn, batches, row['compile_s'] = single['compiled'], seq_batches[0], single['compile_s']
        state = copy_tree(seq_states[0])
      else:
        multi = build_step(config, shapes, NUM_CLASSES, num_seeds=num)
        state = initial_state(multi, range(num), stack_trees(seq_states[:num]))
        batches = [multi.place([host[s][i] for s in range(num)]) for i in range(2)]
        multi_fn, row['compile_s'] = compile_step(multi, state, batches[0])
        state, _ = run_steps(multi_fn, state, batches, 1)
      vmapped, sequential = [], []
      for _ in range(sizes['rounds']):
        state, seconds = run_steps(multi_fn, state, batches, steps)
        vmapped.append(seconds / steps)
        total = 0.0
        for s in range(num):
          seq_states[s], seconds = run_steps(single['compiled'], seq_states[s], seq_batches[s], steps)
          total += seconds
        sequential.append(total / steps)
      ratios = [q / v for q, v in zip(sequential, vmapped)]
      v, q = statistics.median(vmapped), statistics.median(sequential)
      row.update(vmapped_samples_per_s=num * batch / v, vmapped_samples_per_s_per_seed=batch / v,
                 sequential_samples_per_s=num * batch / q, sequential_samples_per_s_per_seed=batch / q,
                 ratio_vmapped_to_sequential=statistics.median(ratios), round_ratios=ratios,
                 peak_bytes_in_use=peak_bytes())
      del state, batches
      log(f"seeds S={num}: x{row['ratio_vmapped_to_sequential']:.2f} vmapped / sequential")
    except Exception as e:  # pylint: disable=broad-except
      row['error'] = _error(e)
      log(f"seeds S={num}: {row['error']['message']}")
    last_cost = time.perf_counter() - start
  return out


# --------------------------------------------------------------------------- section 4: pipeline


def section_pipeline(a, ctx, budget: Budget) -> dict:
  import input_pipeline
  sizes, smoke = ctx['sizes'], a.cpu_smoke
  frame_size = sample_shapes(suite_config('mlb', 'float32', sizes['pipeline_batch'], smoke))['video'][1]
  batch = sizes['pipeline_batch']
  out = {'clips': sizes['clips'], 'batch': batch, 'frame_size': frame_size, 'cpu_count': os.cpu_count(),
         'usable_cores': len(os.sched_getaffinity(0)), 'cpu_model': cpu_model(), 'rows': []}
  with tempfile.TemporaryDirectory(prefix='gpu_suite_records_') as tmp:
    start = time.perf_counter()
    path = input_pipeline.write_records(os.path.join(tmp, 'cremad_like.array_record'), sizes['clips'])
    out['write_s'] = time.perf_counter() - start
    train = input_pipeline.records_train_split(path, frame_size=frame_size)
    last_cost = 0.0
    for workers in sizes['workers']:
      row = {'workers': workers}
      out['rows'].append(row)
      if not budget.fits(last_cost):
        row['skipped'] = f'time budget ({budget.seconds:.0f} s) spent'
        continue
      start = time.perf_counter()
      try:
        row['samples_per_s'] = input_pipeline.time_reader(train, workers, sizes['pipeline_batches'], seed=0,
                                                          batch_size=batch, warmup=sizes['pipeline_warmup'])
        log(f"pipeline, {workers} workers: {row['samples_per_s']:.0f} samples/s")
      except Exception as e:  # pylint: disable=broad-except
        row['error'] = _error(e)
      last_cost = time.perf_counter() - start
  done = [r for r in out['rows'] if 'samples_per_s' in r]
  fastest_step = (ctx['results'].get('step') or {}).get('fastest')
  if done:
    best = max(done, key=lambda r: r['samples_per_s'])
    out['best'] = {'workers': best['workers'], 'samples_per_s': best['samples_per_s']}
  if done and fastest_step:
    out['step_consumes'] = fastest_step
    out['ratio_pipeline_to_step'] = out['best']['samples_per_s'] / fastest_step['samples_per_s']
    out['feeds_the_step'] = out['ratio_pipeline_to_step'] >= 1
    if not out['feeds_the_step']:
      out['headline'] = (f"THE INPUT PIPELINE CANNOT FEED THE STEP: at most {out['best']['samples_per_s']:.0f} "
                         f"samples/s ({out['best']['workers']} Grain workers, {out['usable_cores']} cores) against "
                         f"{fastest_step['samples_per_s']:.0f} samples/s consumed by the fastest step "
                         f"({fastest_step['method']}, {fastest_step['dtype']}, batch {fastest_step['batch']})")
  return out


# -------------------------------------------------------------------------------- section 5: run


def section_run(a, ctx, budget: Budget) -> dict:
  config = ctx['sizes']['run_config']
  env = dict(os.environ)
  if a.compilation_cache_dir:
    env['JAX_COMPILATION_CACHE_DIR'] = a.compilation_cache_dir
  if not a.cpu_smoke:   # this process holds its share of the GPU memory
    env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = a.child_mem_fraction
  with tempfile.TemporaryDirectory(prefix='gpu_suite_run_') as tmp:
    workdir = os.path.join(tmp, 'run')
    cmd = [sys.executable, 'run.py', f'--config={config}', f'--workdir={workdir}']
    out = {'command': ' '.join(['python', *cmd[1:3], '--workdir=<tmp>'])}
    start = time.perf_counter()
    try:
      done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(budget.left(), 1))
    except subprocess.TimeoutExpired:
      out['error'] = {'message': f'did not finish within the section budget ({budget.seconds:.0f} s)'}
      return out
    out['wall_s'] = time.perf_counter() - start
    if done.returncode:
      tail = done.stderr[-3000:]
      out['error'] = {'message': f'exit status {done.returncode}', 'stderr_tail': tail}
      missing = re.search(r"No module named '([\w.]+)'", tail)
      if missing:
        out['error']['missing_module'] = missing.group(1)
        out['error']['note'] = f'run.py imports {missing.group(1)}, which this machine lacks (docs/speed.md: wheels)'
      return out
    results = os.path.join(workdir, 'results.json')
    if os.path.exists(results):
      with open(results) as f:
        fused = json.load(f).get('test', {}).get('fused', {})
      out['test_fused_accuracy'] = fused.get('accuracy')
  return out


# ------------------------------------------------------------------------------------------- main


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def _device() -> str:
  import jax
  d = jax.devices()[0]
  return f'{d.device_kind} ({d.platform}) x{jax.device_count()}'


def _error(e: BaseException) -> dict:
  return {'type': type(e).__name__, 'message': str(e).splitlines()[0][:500] if str(e) else type(e).__name__,
          'traceback': traceback.format_exc()[-2000:]}


def _fmt(x, spec='.1f', none='-'):
  return none if x is None else format(x, spec)


def _gb(x):
  return '-' if x is None else f'{x / 2**30:.2f}'


def table(report: dict) -> str:
  """The report as text: the headline (if any) and one block per section."""
  lines = []
  sections = report['sections']
  pipe = sections.get('pipeline', {})
  if pipe.get('headline'):
    lines += ['=' * 100, pipe['headline'], '=' * 100]
  meta = report['meta']
  lines.append(f"device {meta.get('device')}; host CPU {meta['cpu_model']} ({meta['cpu_count']} cores); "
               f"jax {meta.get('jax')}; total {meta.get('wall_s', 0):.0f} s"
               + ('; CPU SMOKE' if meta['cpu_smoke'] else ''))
  for number, name in SECTIONS.items():
    s = sections.get(name)
    if s is None:
      continue
    lines.append(f'-- {number} {name}' + (f"  [{s.get('section_s', 0):.0f} s]" if 'section_s' in s else ''))
    if 'skipped' in s or ('error' in s and name != 'run'):
      lines.append(f"   {s.get('skipped') or s['error']['message']}")
      continue
    if name == 'step':
      lines.append(f"   {'method':7s} {'dtype':9s} {'batch':>5s} {'samples/s':>10s} {'ms/step':>9s} "
                   f"{'compile s':>9s} {'peak GiB':>8s} {'step GiB':>8s}")
      for r in s['rows']:
        if 'samples_per_s' in r:
          lines.append(f"   {r['method']:7s} {r['dtype']:9s} {r['batch']:5d} {r['samples_per_s']:10.1f} "
                       f"{r['ms_per_step']:9.2f} {r['compile_s']:9.1f} {_gb(r.get('peak_bytes_in_use')):>8s} "
                       f"{_gb(r.get('step_bytes')):>8s}")
        else:
          lines.append(f"   {r['method']:7s} {r['dtype']:9s} {r['batch']:5d} "
                       f"{r.get('skipped') or r.get('error', {}).get('message', '')}")
    elif name == 'pytorch':
      lines.append(f"   {'dtype':9s} {'batch':>5s} {'ours':>9s} {'eager':>9s} {'compiled':>9s} "
                   f"{'ours/theirs':>11s}  theirs")
      for r in s.get('rows', []):
        ratio = r.get('ratio_ours_to_theirs')
        lines.append(f"   {r['dtype']:9s} {r['batch']:5d} {_fmt(r.get('ours')):>9s} "
                     f"{_fmt(r.get('eager_samples_per_s')):>9s} {_fmt(r.get('compiled_samples_per_s')):>9s} "
                     f"{_fmt(ratio, '.2f'):>11s}  {r.get('theirs_mode', '-')}"
                     + (f" ({str(r['compile_note'])[:60]})" if r.get('compile_note') else ''))
    elif name == 'seeds':
      lines.append(f"   {s['method']} {s['dtype']} batch {s['batch_per_seed']} per seed")
      lines.append(f"   {'S':>3s} {'vmapped/s':>10s} {'per seed':>9s} {'sequential/s':>12s} {'vmap/seq':>8s} "
                   f"{'compile s':>9s}")
      for r in s['rows']:
        if 'vmapped_samples_per_s' in r:
          lines.append(f"   {r['S']:3d} {r['vmapped_samples_per_s']:10.1f} {r['vmapped_samples_per_s_per_seed']:9.1f} "
                       f"{r['sequential_samples_per_s']:12.1f} {r['ratio_vmapped_to_sequential']:8.2f} "
                       f"{_fmt(r.get('compile_s')):>9s}")
        else:
          lines.append(f"   {r['S']:3d} {r.get('skipped') or r.get('error', {}).get('message', '')}")
    elif name == 'pipeline':
      lines.append(f"   {s['clips']} clips, frames {s['frame_size']} px, batch {s['batch']}, "
                   f"{s['usable_cores']} cores ({s['cpu_model']})")
      for r in s['rows']:
        rate = (f"{r['samples_per_s']:8.1f} samples/s" if 'samples_per_s' in r
                else (r.get('skipped') or r.get('error', {}).get('message', '')))
        lines.append(f"   {r['workers']:3d} workers: {rate}")
      if 'ratio_pipeline_to_step' in s:
        step = s['step_consumes']
        lines.append(f"   best / fastest step ({step['method']} {step['dtype']} b{step['batch']}, "
                     f"{step['samples_per_s']:.0f} samples/s): x{s['ratio_pipeline_to_step']:.2f}"
                     + ('' if s['feeds_the_step'] else '  <- cannot feed the step'))
    elif name == 'run':
      if 'wall_s' in s and 'error' not in s:
        lines.append(f"   {s['command']}: {s['wall_s']:.1f} s wall (test fused accuracy "
                     f"{_fmt(s.get('test_fused_accuracy'), '.4f')})")
      else:
        err = s.get('error', {})
        lines.append(f"   {s.get('command', '')}: {err.get('message', '')}"
                     + (f" ({err['note']})" if err.get('note') else ''))
  return '\n'.join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--out_dir', default=os.environ.get('OUT') or os.getcwd(),
                 help='where gpu_suite.json goes (default: $OUT when set, else the current directory)')
  p.add_argument('--cpu_smoke', action='store_true', help='every section at toy sizes on a CPU')
  p.add_argument('--sections', default='1,2,3,4,5', help='section numbers to run')
  p.add_argument('--budget_s', default='', help='per-section budgets, e.g. 1=190,2=100 (seconds)')
  p.add_argument('--step_configs', default='', help='section 1: method:dtype:batch,... instead of the full grid')
  p.add_argument('--notorch_compile', action='store_true', help='section 2: eager PyTorch only')
  p.add_argument('--mem_fraction', default='0.5', help="this process's XLA_PYTHON_CLIENT_MEM_FRACTION (unless set)")
  p.add_argument('--child_mem_fraction', default='0.25', help="section 5's run.py process's share of GPU memory")
  p.add_argument('--compilation_cache_dir', default='', help="JAX's persistent compilation cache ('' off)")
  p.add_argument('--torch_child', default='', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> dict:
  a = parse_args(argv)
  if a.torch_child:
    torch_child(a.torch_child)
    return {}
  start = time.perf_counter()
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', a.mem_fraction)  # leaves room for PyTorch's child
  if a.cpu_smoke:
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax
  if a.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', a.compilation_cache_dir)
  budgets = dict(SMOKE_BUDGET_S if a.cpu_smoke else DEFAULT_BUDGET_S)
  for part in filter(None, a.budget_s.split(',')):
    k, v = part.split('=')
    budgets[int(k)] = float(v)
  wanted = [int(s) for s in a.sections.split(',') if s]
  os.makedirs(a.out_dir, exist_ok=True)
  out_path = os.path.join(a.out_dir, 'gpu_suite.json')
  report = {'meta': {'cpu_smoke': a.cpu_smoke, 'cpu_model': cpu_model(), 'cpu_count': os.cpu_count(),
                     'python': platform.python_version(), 'jax': jax.__version__, 'budgets_s': budgets,
                     'compilation_cache_dir': a.compilation_cache_dir or None,
                     'tensorflow_imported': False},
            'sections': {}}
  sizes = dict(SMOKE_SIZES if a.cpu_smoke else GPU_SIZES)
  if a.step_configs:
    sizes['step_configs'] = [(m, d, int(b)) for m, d, b in (c.split(':') for c in a.step_configs.split(','))]
  ctx = {'sizes': sizes, 'results': report['sections']}
  try:
    report['meta']['device'] = _device()
  except Exception as e:  # pylint: disable=broad-except
    report['meta']['device'] = f'unavailable: {e}'
  functions = {1: section_step, 2: section_pytorch, 3: section_seeds, 4: section_pipeline, 5: section_run}
  for number in sorted(wanted):
    name = SECTIONS[number]
    log(f'section {number} ({name}), budget {budgets[number]:.0f} s')
    section_start = time.perf_counter()
    try:
      result = functions[number](a, ctx, Budget(budgets[number]))
    except Exception as e:  # pylint: disable=broad-except
      result = {'error': _error(e)}
      log(f"section {number} ({name}) failed: {result['error']['message']}")
    result['section_s'] = time.perf_counter() - section_start
    report['sections'][name] = result
    report['meta']['tensorflow_imported'] = 'tensorflow' in sys.modules or 'tensorflow_datasets' in sys.modules
    report['meta']['wall_s'] = time.perf_counter() - start
    with open(out_path + '.tmp', 'w') as f:
      json.dump(report, f, indent=1, default=str)
    os.replace(out_path + '.tmp', out_path)
  print(f'wrote {out_path}')
  print(table(report))
  return report


if __name__ == '__main__':
  main()
