"""Input-pipeline throughput on a generated CREMA-D-shaped dataset, and what the model consumes.

  python benchmarks/input_pipeline.py [--num_clips=96] [--warmup=16] [--batches=16] [--rounds=3]
                                      [--workers=0,1,2] [--train_steps=2] [--source=prepare] [--json]

1. `--source=prepare` (default): writes `--num_clips` clips in the CREMA-D layout
   (AudioWAV/*.wav 16 kHz, VideoFlash/*.flv 480x360 at 30 fps, 2.5 s, textured
   frames so the JPEGs have realistic sizes) and times `data_pipelines.prepare`
   on them: the one-off build rate in clips/s (decoding, log-STFT, 3 JPEG frames
   each); training reads the TFDS ArrayRecord files it wrote.
   `--source=records`: writes the records directly into one ArrayRecord file
   (`write_records`: the same textured frames as JPEG, a random float16
   spectrogram; no media files, no TFDS, no TensorFlow) read by `RecordSource`;
   what `benchmarks/gpu_suite.py` uses on machines without TensorFlow.
2. Reads the training split (prepare: all but 8 clips; records: all; RandomResizedCrop to 224, per-frame
   flip, ImageNet normalisation, batches of 32) with each `--workers` count of
   Grain worker processes. Each round times every worker count in turn
   (interleaved, so machine noise hits all alike) on a fresh iterator after
   `--warmup` untimed batches: worker start-up, and Grain's reading threads (16
   by default, in the training process or in each worker) work on up to 16
   batches at once, so the first batches hide the work already under way on
   the next ones. Reported is the median samples/s over rounds.
3. Times `--train_steps` jitted train steps of configs/cremad_mlb.py (two
   ResNet-18s at the real shapes, MLB) per round, after compilation, on
   batches already in memory: the samples/s the model consumes. The ratio
   pipeline / model is taken per round. The two are timed one after the
   other; in training they share the CPU cores.

Per core: `taskset -c 0 python benchmarks/input_pipeline.py --workers=0 --train_steps=0 --rounds=2 --json`
(docs/speed.md has the measurements).

The generator functions (`frame_texture`, `clip_frames`, `write_clip`, `write_records`,
`RecordSource`, `time_reader`) define no flags and import no media or TensorFlow
modules at import time, so other benchmarks import them.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import io  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

SIZE, FPS, SECONDS = (480, 360), 30, 2.5  # CREMA-D's VideoFlash format
AUDIO_SHAPE = (257, 188)                  # CREMA-D's log-STFT
NUM_FRAMES, NUM_CLASSES = 3, 6
JPEG_QUALITY = 90                         # data_pipelines.media.JPEG_QUALITY, what prepare stores
CODEC_QUALITY = 35  # write_records: a JPEG round trip standing in for the FLV codec's loss (same JPEG sizes)
SENTENCES = ('DFA', 'IEO', 'IOM', 'ITH', 'ITS', 'IWL', 'IWW', 'MTI', 'TAI', 'TIE', 'TSI', 'WSI')
EMOTIONS = ('NEU', 'HAP', 'SAD', 'FEA', 'DIS', 'ANG')  # data_pipelines.cremad.SENTENCES / CLASSES


def clip_ids(n: int) -> list[str]:
  """n distinct CREMA-D clip names, the emotions in turn (label = i % 6)."""
  return [f'{1001 + i % 91}_{SENTENCES[i // 91 % 12]}_{EMOTIONS[i % 6]}_XX' for i in range(n)]


def frame_texture(rng: np.random.Generator, size=SIZE) -> np.ndarray:
  """A smooth random texture a little wider than a frame (8 x 8 pixel cells): JPEG sizes
  like real faces, not flat grey. uint8 [H, W + 16, 3]."""
  w, h = size
  return rng.integers(0, 256, (h // 8 + 1, w // 8 + 2, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)


def clip_frames(texture: np.ndarray, indices, size=SIZE) -> list[np.ndarray]:
  """Frames `indices` of the texture drifting one pixel per frame: uint8 [H, W, 3] each."""
  w, h = size
  return [np.ascontiguousarray(texture[:h, i % 8:i % 8 + w]) for i in indices]


def write_clip(raw: str, clip_id: str, rng: np.random.Generator) -> None:
  """One clip in the CREMA-D layout: AudioWAV/<id>.wav and VideoFlash/<id>.flv."""
  import av
  import soundfile as sf
  t = np.arange(int(SECONDS * 16000)) / 16000
  wave = 0.2 * np.sin(2 * np.pi * rng.uniform(150, 600) * t) + 0.02 * rng.standard_normal(len(t))
  sf.write(os.path.join(raw, 'AudioWAV', clip_id + '.wav'), wave.astype(np.float32), 16000, subtype='PCM_16')
  w, h = SIZE
  texture = frame_texture(rng)
  with av.open(os.path.join(raw, 'VideoFlash', clip_id + '.flv'), 'w') as container:
    stream = container.add_stream('flv', rate=FPS)
    stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
    for frame in clip_frames(texture, range(int(SECONDS * FPS))):
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def _codec_loss(rgb: np.ndarray) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.open(io.BytesIO(encode_jpeg(rgb, CODEC_QUALITY))).convert('RGB'))


def write_records(path: str, n: int, *, seed: int = 0, audio_shape=AUDIO_SHAPE, num_frames: int = NUM_FRAMES,
                  frame_size=SIZE) -> str:
  """`n` CREMA-D-shaped records in one ArrayRecord file at `path`, without media files or TFDS.

  Each record holds what a prepared CREMA-D record decodes to: 'id', 'label'
  (i % 6), 'audio' float16 `audio_shape` (random, log-spectrogram-like values)
  and 'frames', `num_frames` JPEGs (quality 90) of the texture of `write_clip`
  at 1 fps (its frames 0, 30, 60), first put through a lossy JPEG round trip
  in place of the video codec: the stored JPEGs then have the sizes prepare
  stores from `write_clip`'s FLV files (about 40 kB at 480 x 360). Pickled
  dicts: `RecordSource` reads them.
  """
  from array_record.python.array_record_module import ArrayRecordWriter
  rng = np.random.default_rng(seed)
  writer = ArrayRecordWriter(path, 'group_size:1')
  try:
    for i, clip_id in enumerate(clip_ids(n)):
      audio = (rng.standard_normal(audio_shape, dtype=np.float32) - 4).astype(np.float16)
      frames = clip_frames(frame_texture(rng, frame_size), range(0, FPS * num_frames, FPS), frame_size)
      jpegs = [encode_jpeg(_codec_loss(f)) for f in frames]
      writer.write(pickle.dumps({'id': clip_id, 'label': i % NUM_CLASSES, 'audio': audio, 'frames': jpegs},
                                protocol=pickle.HIGHEST_PROTOCOL))
  finally:
    writer.close()
  return path


class RecordSource:
  """Random access to the records of `write_records` (picklable: Grain workers reopen the file)."""

  def __init__(self, path: str):
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    self.path = path
    self._records = ArrayRecordDataSource([path])

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    return pickle.loads(self._records[int(index)])


def build(workdir: str, n: int) -> tuple[str, float, list[str]]:
  """`n` clips in the CREMA-D layout under `workdir/raw`, prepared into `workdir/prepared`:
  (prepared dir, build clips/s, clip ids)."""
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


def data_config(out: str, ids: list[str], workdir: str, batch_size: int):
  from configs import cremad_mlb
  split_file = os.path.join(workdir, 'split.json')
  with open(split_file, 'w') as f:
    json.dump({'train': ids[8:], 'val': ids[:4], 'test': ids[4:8]}, f)
  config = cremad_mlb.get_config()
  config.data.update(dir=out, split='json', split_file=split_file, batch_size=batch_size)
  return config


def records_train_split(path: str, *, frame_size: int = 224, num_frames: int = NUM_FRAMES):
  """The training split over a `write_records` file, decoded as prepared CREMA-D's training
  split is (`data_pipelines.prepared.make_source`: per-frame crop and flip)."""
  import types
  from data_pipelines import prepared
  cfg = types.SimpleNamespace(video_shape=(num_frames, frame_size, frame_size, 3), num_workers=0)
  return prepared.make_source(RecordSource(path), None, cfg, per_frame=True, train=True)


def time_reader(train, workers: int, batches: int, seed: int, *, batch_size: int, warmup: int,
                cpu: dict | None = None) -> float:
  """Samples/s of `batches` training batches read with `workers` Grain worker processes
  from a fresh iterator, after `warmup` untimed batches.

  `cpu`: a dict that gets 'samples_per_cpu_s', the samples per second of this process's CPU time
  (user + system, every thread) over the same batches: with 0 workers all the work is done in
  this process, so it is the rate of one fully used core, whatever else runs on the machine.
  """
  from data_pipelines import common
  train.num_workers = workers
  it = common.train_batches(train, batch_size=batch_size, seed=seed)
  try:
    for _ in range(warmup):
      next(it)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
      next(it)
    if cpu is not None:
      cpu['samples_per_cpu_s'] = batches * batch_size / (time.process_time() - cpu_start)
    return batches * batch_size / (time.perf_counter() - start)
  finally:
    it.close()


def prepare_train_step(config, train, batch_size: int):
  """The jitted train step of `config`, compiled, with two batches from `train`."""
  import jax
  from data_pipelines import common
  from mlb_jax import build as build_lib
  spec = build_lib.DataSpec(('audio', 'video'), {'audio': tuple(config.data.audio_shape),
                                                 'video': tuple(config.data.video_shape)},
                            config.data.num_classes, 1)
  training = build_lib.build_training(config, spec)
  train.num_workers = 0
  it = common.train_batches(train, batch_size=batch_size, seed=0)
  host = [next(it) for _ in range(2)]
  it.close()
  state = training.initial_state({m: host[0][m][0] for m in spec.modalities}, [config.seed])
  batches = [training.place_batch([b]) for b in host]
  start = time.perf_counter()
  state, metrics = training.train_step(state, batches[0])
  jax.block_until_ready(metrics)
  return {'step': training.train_step, 'state': state, 'batches': batches,
          'compile_s': time.perf_counter() - start}


def time_train_steps(bench, n: int, batch_size: int) -> float:
  """Samples/s of `n` train steps (data already on the device)."""
  import jax
  state, step, batches = bench['state'], bench['step'], bench['batches']
  start = time.perf_counter()
  for i in range(n):
    state, metrics = step(state, batches[i % 2])
  jax.block_until_ready((state, metrics))
  bench['state'] = state
  return n * batch_size / (time.perf_counter() - start)


def define_flags():
  from absl import flags
  return dict(
      num_clips=flags.DEFINE_integer('num_clips', 96, 'Clips to generate.'),
      batch_size=flags.DEFINE_integer('batch_size', 32, 'Batch size (the authors use 32).'),
      warmup=flags.DEFINE_integer('warmup', 16, 'Untimed batches before timing each iterator.'),
      batches=flags.DEFINE_integer('batches', 16, 'Timed batches per round and worker count.'),
      rounds=flags.DEFINE_integer('rounds', 3, 'Interleaved rounds.'),
      workers=flags.DEFINE_list('workers', ['0', '1', '2'], 'Grain worker counts to time.'),
      train_steps=flags.DEFINE_integer('train_steps', 2,
                                       'Timed ResNet-18 train steps per round (0 skips the model).'),
      source=flags.DEFINE_enum('source', 'prepare', ['prepare', 'records'],
                               "'prepare': media files -> data_pipelines.prepare (TFDS); 'records': "
                               'write_records (no TFDS)'),
      workdir=flags.DEFINE_string('workdir', '', 'Where to write the generated data (default: a temp dir).'),
      json=flags.DEFINE_bool('json', False, 'Print a JSON line as well.'))


def main(f):
  batch = f['batch_size'].value
  workdir = f['workdir'].value or tempfile.mkdtemp(prefix='input_pipeline_')
  os.makedirs(workdir, exist_ok=True)
  n = f['num_clips'].value
  ids = clip_ids(n)
  if f['source'].value == 'prepare':
    from data_pipelines import cremad
    out, build_rate, ids = build(workdir, n)
    config = data_config(out, ids, workdir, batch)
    train = cremad.load(config.data).splits['train']
  else:
    start = time.perf_counter()
    path = write_records(os.path.join(workdir, 'cremad_like.array_record'), n)
    build_rate = n / (time.perf_counter() - start)
    train = records_train_split(path)
    from configs import cremad_mlb
    config = cremad_mlb.get_config()
    config.data.batch_size = batch
  workers = [int(w) for w in f['workers'].value]
  steps = f['train_steps'].value
  model = prepare_train_step(config, train, batch) if steps else None
  rates = {w: [] for w in workers}
  cpu_rates = []   # 0 workers: samples per second of this process's CPU time
  model_rates = []
  for r in range(f['rounds'].value):  # interleaved: machine noise hits every variant alike
    for w in workers:
      cpu = {}
      rates[w].append(time_reader(train, w, f['batches'].value, seed=r, batch_size=batch,
                                  warmup=f['warmup'].value, cpu=cpu))
      if w == 0:
        cpu_rates.append(cpu['samples_per_cpu_s'])
    if model:
      model_rates.append(time_train_steps(model, steps, batch))
  reader = {w: statistics.median(v) for w, v in rates.items()}
  print(f'{os.cpu_count()} CPU cores ({len(os.sched_getaffinity(0))} usable); {n} clips 480x360 '
        f"({f['source'].value}), batch {batch}, {f['rounds'].value} rounds x {f['batches'].value} batches "
        f"after {f['warmup'].value}, median")
  print(f"build ({f['source'].value}, 0 workers): {build_rate:.1f} clips/s")
  for w, v in reader.items():
    print(f'grain train pipeline, {w} workers: {v:7.1f} samples/s   (rounds: '
          f"{', '.join(f'{x:.1f}' for x in rates[w])})")
  result = {'cpu_count': os.cpu_count(), 'usable_cores': len(os.sched_getaffinity(0)), 'source': f['source'].value,
            'build_clips_per_s': build_rate, 'reader_samples_per_s': reader, 'reader_rounds': rates,
            'load_average': os.getloadavg()[0]}
  if cpu_rates:
    result['reader_0_samples_per_cpu_s'] = statistics.median(cpu_rates)
    print(f"grain train pipeline, 0 workers: {result['reader_0_samples_per_cpu_s']:7.1f} samples per CPU-second "
          f"(this process's CPU time; rounds: {', '.join(f'{x:.1f}' for x in cpu_rates)}); load average "
          f'{os.getloadavg()[0]:.1f}')
  if model:
    import jax
    consumed = statistics.median(model_rates)
    top = max(workers)
    ratios = [rates[top][r] / model_rates[r] for r in range(f['rounds'].value)]
    result.update(train_step_samples_per_s=consumed, train_step_rounds=model_rates,
                  compile_s=model['compile_s'], ratio_rounds=ratios, device=jax.devices()[0].device_kind)
    print(f'CREMA-D ResNet-18 MLB train step ({jax.devices()[0].device_kind}): {consumed:.2f} samples/s = '
          f'{batch / consumed:.1f} s/step (rounds: {", ".join(f"{x:.2f}" for x in model_rates)}; '
          f"compile {model['compile_s']:.0f} s)")
    print(f'pipeline with {top} workers / model consumption: median {statistics.median(ratios):.1f}x '
          f'(rounds: {", ".join(f"{x:.1f}" for x in ratios)})')
  if f['json'].value:
    print(json.dumps(result))


if __name__ == '__main__':
  from absl import app
  _FLAGS = define_flags()
  app.run(lambda argv: main(_FLAGS))
