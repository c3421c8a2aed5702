"""Input-pipeline throughput on a generated CREMA-D-shaped dataset, and what the model consumes.

  python benchmarks/input_pipeline.py [--num_clips=96] [--warmup=16] [--batches=16] [--rounds=3] [--train_steps=2] [--json]

1. Writes `--num_clips` clips in the CREMA-D layout (AudioWAV/*.wav 16 kHz,
   VideoFlash/*.flv 480x360 at 30 fps, 2.5 s, textured frames so the JPEGs
   have realistic sizes) and times `data_pipelines.prepare` on them: the
   one-off build rate in clips/s (decoding, log-STFT, 3 JPEG frames each).
2. Reads the training split (all but 8 clips, RandomResizedCrop to 224, per-frame
   flip, ImageNet normalisation, batches of 32) with 0, 1 and 2 Grain worker
   processes. Each round times every worker count in turn (interleaved, so
   machine noise hits all alike) on a fresh iterator after `--warmup`
   untimed batches: worker start-up, and Grain's reading threads (16 by
   default, in the training process or in each worker) work on up to 16
   batches at once, so the first batches hide the work already under way on
   the next ones. Reported is the median samples/s over rounds.
3. Times `--train_steps` jitted train steps of configs/cremad_mlb.py (two
   ResNet-18s at the real shapes, MLB) per round, after compilation, on
   batches already in memory: the samples/s the model consumes. The ratio
   pipeline / model is taken per round. The two are timed one after the
   other; in training they share the CPU cores.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import json
import statistics
import sys
import tempfile
import time

import av
import numpy as np
import soundfile as sf
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

_NUM_CLIPS = flags.DEFINE_integer('num_clips', 96, 'Clips to generate.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Batch size (the authors use 32).')
_WARMUP = flags.DEFINE_integer('warmup', 16, 'Untimed batches before timing each iterator.')
_BATCHES = flags.DEFINE_integer('batches', 16, 'Timed batches per round and worker count.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Interleaved rounds.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'], 'Grain worker counts to time.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 2, 'Timed ResNet-18 train steps per round (0 skips the model).')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Where to write the generated data (default: a temp dir).')
_JSON = flags.DEFINE_bool('json', False, 'Print a JSON line as well.')

SIZE, FPS, SECONDS = (480, 360), 30, 2.5  # CREMA-D's VideoFlash format


def clip_ids(n: int) -> list[str]:
  from data_pipelines import cremad
  return [f'{1001 + i % 91}_{cremad.SENTENCES[i // 91 % 12]}_{cremad.CLASSES[i % 6]}_XX' for i in range(n)]


def write_clip(raw: str, clip_id: str, rng: np.random.Generator) -> None:
  t = np.arange(int(SECONDS * 16000)) / 16000
  wave = 0.2 * np.sin(2 * np.pi * rng.uniform(150, 600) * t) + 0.02 * rng.standard_normal(len(t))
  sf.write(os.path.join(raw, 'AudioWAV', clip_id + '.wav'), wave.astype(np.float32), 16000, subtype='PCM_16')
  w, h = SIZE
  # A smooth random texture drifting across the frame: JPEG sizes like real faces, not flat grey.
  texture = rng.integers(0, 256, (h // 8 + 1, w // 8 + 2, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
  with av.open(os.path.join(raw, 'VideoFlash', clip_id + '.flv'), 'w') as container:
    stream = container.add_stream('flv', rate=FPS)
    stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
    for i in range(int(SECONDS * FPS)):
      frame = np.ascontiguousarray(texture[:h, i % 8:i % 8 + w])
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def build(workdir: str, n: int) -> tuple[str, float, list[str]]:
  from data_pipelines import prepare
  raw, out = os.path.join(workdir, 'raw'), os.path.join(workdir, 'prepared')
  os.makedirs(os.path.join(raw, 'AudioWAV'), exist_ok=True)
  os.makedirs(os.path.join(raw, 'VideoFlash'), exist_ok=True)
  rng = np.random.default_rng(0)
  ids = clip_ids(n)
  for clip_id in ids:
    write_clip(raw, clip_id, rng)
  start = time.perf_counter()
  prepare.prepare('cremad', raw, out, progress=False, overwrite=True)
  return out, n / (time.perf_counter() - start), ids


def data_config(out: str, ids: list[str], workdir: str):
  from configs import cremad_mlb
  split_file = os.path.join(workdir, 'split.json')
  with open(split_file, 'w') as f:
    json.dump({'train': ids[8:], 'val': ids[:4], 'test': ids[4:8]}, f)
  config = cremad_mlb.get_config()
  config.data.update(dir=out, split='json', split_file=split_file, batch_size=_BATCH.value)
  return config


def time_reader(train, workers: int, batches: int, seed: int) -> float:
  from data_pipelines import common
  train.num_workers = workers
  it = common.train_batches(train, batch_size=_BATCH.value, seed=seed)
  try:
    for _ in range(_WARMUP.value):
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    return batches * _BATCH.value / (time.perf_counter() - start)
  finally:
    it.close()


def prepare_train_step(config, train):
  """The jitted train step of `config`, compiled, with two batches from `train`."""
  import jax
  from data_pipelines import common
  from mlb_jax import loop, steps
  exp = loop.build(config)
  state = loop.initial_state(exp)
  train.num_workers = 0
  it = common.train_batches(train, batch_size=_BATCH.value, seed=0)
  batches = [jax.device_put(next(it)) for _ in range(2)]
  it.close()
  step = steps.make_train_step(model=exp.model, tx=exp.tx, method=exp.method, loss_weights=exp.loss_weights)
  start = time.perf_counter()
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics)
  return {'step': step, 'state': state, 'batches': batches, 'compile_s': time.perf_counter() - start}


def time_train_steps(bench, n: int) -> float:
  """Samples/s of `n` train steps (data already on the device)."""
  import jax
  state, step, batches = bench['state'], bench['step'], bench['batches']
  start = time.perf_counter()
  for i in range(n):
    state, metrics = step(state, batches[i % 2])
  jax.block_until_ready((state, metrics))
  bench['state'] = state
  return n * _BATCH.value / (time.perf_counter() - start)


def main(argv):
  del argv
  import jax
  from data_pipelines import cremad
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix='input_pipeline_')
  out, build_rate, ids = build(workdir, _NUM_CLIPS.value)
  config = data_config(out, ids, workdir)
  train = cremad.load(config.data).splits['train']
  workers = [int(w) for w in _WORKERS.value]
  model = prepare_train_step(config, train) if _TRAIN_STEPS.value else None
  rates = {w: [] for w in workers}
  model_rates = []
  for r in range(_ROUNDS.value):  # interleaved: machine noise hits every variant alike
    for w in workers:
      rates[w].append(time_reader(train, w, _BATCHES.value, seed=r))
    if model:
      model_rates.append(time_train_steps(model, _TRAIN_STEPS.value))
  reader = {w: statistics.median(v) for w, v in rates.items()}
  print(f'{os.cpu_count()} CPU cores; {_NUM_CLIPS.value} clips 480x360, batch {_BATCH.value}, '
        f'{_ROUNDS.value} rounds x {_BATCHES.value} batches after {_WARMUP.value}, median')
  print(f'build (prepare, 0 workers): {build_rate:.1f} clips/s')
  for w, v in reader.items():
    print(f'grain train pipeline, {w} workers: {v:7.1f} samples/s   (rounds: '
          f"{', '.join(f'{x:.1f}' for x in rates[w])})")
  result = {'cpu_count': os.cpu_count(), 'build_clips_per_s': build_rate, 'reader_samples_per_s': reader,
            'reader_rounds': rates}
  if model:
    consumed = statistics.median(model_rates)
    top = max(workers)
    ratios = [rates[top][r] / model_rates[r] for r in range(_ROUNDS.value)]
    result.update(train_step_samples_per_s=consumed, train_step_rounds=model_rates,
                  compile_s=model['compile_s'], ratio_rounds=ratios, device=jax.devices()[0].device_kind)
    print(f'CREMA-D ResNet-18 MLB train step ({jax.devices()[0].device_kind}): {consumed:.2f} samples/s = '
          f'{_BATCH.value / consumed:.1f} s/step (rounds: {", ".join(f"{x:.2f}" for x in model_rates)}; '
          f"compile {model['compile_s']:.0f} s)")
    print(f'pipeline with {top} workers / model consumption: median {statistics.median(ratios):.1f}x '
          f'(rounds: {", ".join(f"{x:.1f}" for x in ratios)})')
  if _JSON.value:
    print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
