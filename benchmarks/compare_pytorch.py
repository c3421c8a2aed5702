"""Our CREMA-D ResNet-18 train step against the same model and step in PyTorch, in one run.

  pip install torch==2.13.0          # optional, benchmark-only (CPU build)
  python benchmarks/compare_pytorch.py [--frame_sizes=224,112] [--batch=8] [--methods=mlb]
                                       [--rounds=5] [--steps=2] [--cores=2] [--malloc_reuse]
                                       [--kernels=auto] [--json]
  python benchmarks/compare_pytorch.py --frame_sizes= --kernels=plain,cpu   # the same-step check only

Both sides: two ResNet-18 encoders (audio [257, 188] spectrogram, 1-channel
stem; video 3 frames per clip, per-frame ResNet, one mean over frames and
positions), a linear unimodal head each, Late-Linear fusion, 6 classes; one
train-mode forward pass, loss CE(fused) + CE(audio) + CE(video) (for `joint`:
the heads see detached features), MLB coefficients from the unimodal heads'
batch-mean true-class probability (alpha 0.8, beta_max 2), k_i scaling the raw
gradients of modality i's encoder and head, then Adam (lr 1e-4, betas 0.9/0.999,
eps 1e-7, coupled L2 weight decay 1e-4). Ours is the train step of
`mlb_jax.build.build_training` (`mlb_jax.steps.train_step`, jitted, with its
metrics) for `config.model.kernels` = `--kernels` (auto: the CPU formulations
and XLA:CPU options on a CPU backend); PyTorch runs eagerly with oneDNN.

Before timing, `--check` copies our initial parameters into the PyTorch model
and runs one step on both at a small input size, for each `--kernels` setting:
the losses and every updated parameter and BatchNorm statistic must agree, so the
two are the same model and step (with `--frame_sizes=`, empty, only the check
runs). Timing then alternates: for each round, `--steps` PyTorch steps, then
`--steps` of ours, so machine noise hits both alike; reported are medians of
samples/s (wall clock) and of process CPU seconds per step, and ours / PyTorch.
`--cores=1` pins the process to one core (both frameworks then share it), the
comparison least disturbed by other load on the machine. Also reported: minor
page faults per step (`ru_minflt`). `--malloc_reuse` applies
`mlb_jax.cpu_malloc.reuse_freed_memory()` first (glibc keeps freed memory, so
XLA's per-step scratch buffer is not page-faulted in afresh every step); it is
process-wide, so it applies to the PyTorch side as well.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import json
import resource
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

_FRAME_SIZES = flags.DEFINE_list('frame_sizes', ['224', '112'], 'Video frame sizes S (S x S) to compare.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Clips per batch.')
_METHODS = flags.DEFINE_list('methods', ['mlb'], 'joint and/or mlb.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved rounds.')
_STEPS = flags.DEFINE_integer('steps', 2, 'Steps per framework per round.')
_CORES = flags.DEFINE_integer('cores', 0, 'Pin the process to this many cores (0 = leave as is).')
_CHECK = flags.DEFINE_bool('check', True, 'Check both sides compute the same step first.')
_JSON = flags.DEFINE_bool('json', False, 'Print a JSON line as well.')
_KERNELS = flags.DEFINE_list('kernels', ['auto'], 'config.model.kernels of our step: auto | plain | cpu; '
                              'the check runs for each, the timing for the first.')
_MALLOC_REUSE = flags.DEFINE_bool('malloc_reuse', False, 'Apply mlb_jax.cpu_malloc.reuse_freed_memory() '
                                  '(process-wide glibc settings) before anything runs.')

AUDIO_SHAPE = (257, 188)
FRAMES = 3
NUM_CLASSES = 6
MODALITIES = ('audio', 'video')


def import_torch():
  try:
    import torch
  except ImportError as e:
    raise SystemExit('benchmarks/compare_pytorch.py needs PyTorch: pip install torch==2.13.0') from e
  return torch


# ------------------------------------------------------------------ the PyTorch side


def torch_model(torch, width: int = 64):
  """The same network in PyTorch, with our parameter names (see `copy_params`)."""
  nn, F = torch.nn, torch.nn.functional

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.downsample_conv = self.downsample_bn = None
      if stride != 1 or cin != cout:
        self.downsample_conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.downsample_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      shortcut = x if self.downsample_conv is None else self.downsample_bn(self.downsample_conv(x))
      return F.relu(y + shortcut)

  class ResNet18(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      c = width
      self.blocks = []
      for stage in range(4):
        cout = width * 2 ** stage
        for b in range(2):
          name = f'layer{stage + 1}_{b}'
          setattr(self, name, Block(c, cout, 2 if stage > 0 and b == 0 else 1))
          self.blocks.append(name)
          c = cout
      for m in self.modules():   # the authors' init (docs/methods.md, ResNet-18 encoders)
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, nn.BatchNorm2d):
          nn.init.normal_(m.weight, 1.0, 0.02)
          nn.init.zeros_(m.bias)

    def forward(self, x):
      x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
      for name in self.blocks:
        x = getattr(self, name)(x)
      return x

  class Branch(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.encoder = ResNet18(cin)
      self.head = nn.Linear(8 * width, NUM_CLASSES)

  class AudioVisual(nn.Module):
    def __init__(self):
      super().__init__()
      self.branches = nn.ModuleDict({'audio': Branch(1), 'video': Branch(3)})
      self.fusion = nn.Linear(16 * width, NUM_CLASSES)

    def forward(self, audio, video, detach: bool):
      """audio [B, F, T]; video [B, 3, T, H, W] (the authors' layout)."""
      f_a = self.branches['audio'].encoder(audio.unsqueeze(1)).mean((2, 3))
      b, c, t, h, w = video.shape
      maps = self.branches['video'].encoder(video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
      maps = maps.reshape(b, t, *maps.shape[1:]).permute(0, 2, 1, 3, 4)
      f_v = F.adaptive_avg_pool3d(maps, 1).flatten(1)
      fused = self.fusion(torch.cat([f_a, f_v], 1))
      if detach:
        f_a, f_v = f_a.detach(), f_v.detach()
      return {'fused': fused, 'audio': self.branches['audio'].head(f_a),
              'video': self.branches['video'].head(f_v)}

  return AudioVisual()


def torch_step(torch, model, method: str, alpha: float = 0.8, beta_max: float = 2.0):
  """One optimizer step, as ours: Eq. 3, MLB k_i on raw gradients, Adam with coupled L2."""
  F = torch.nn.functional
  opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-7, weight_decay=1e-4)
  groups = {m: list(model.branches[m].parameters()) for m in MODALITIES}

  def step(audio, video, labels):
    opt.zero_grad(set_to_none=True)
    logits = model(audio, video, detach=(method == 'joint'))
    loss = sum(F.cross_entropy(z, labels) for z in logits.values())
    loss.backward()
    if method == 'mlb':
      with torch.no_grad():
        s = torch.stack([F.softmax(logits[m], -1).gather(1, labels[:, None]).mean() for m in MODALITIES])
        r = torch.stack([s[1] / s[0], s[0] / s[1]])        # Eq. 5, M = 2
        beta = torch.where(r > 1, torch.tensor(beta_max), torch.tensor(2.0))
        k = 1 + (beta - 1) * torch.tanh(alpha * (r - 1))    # Eqs. 6-7
        for i, m in enumerate(MODALITIES):
          for p in groups[m]:
            p.grad.mul_(k[i])
    opt.step()
    return loss

  return step


def copy_params(torch, model, params, batch_stats):
  """Writes our parameters and BatchNorm statistics into the PyTorch model."""
  tensors = dict(model.named_parameters())
  tensors.update({k: v for k, v in model.named_buffers() if not k.endswith('num_batches_tracked')})
  for tree, kind in ((params, 'params'), (batch_stats, 'stats')):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      name = torch_name([p.key for p in path], kind)
      value = np.asarray(leaf)
      if value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)      # HWIO -> OIHW
      elif value.ndim == 2:
        value = value.T                          # [in, out] -> [out, in]
      with torch.no_grad():
        tensors.pop(name).copy_(torch.from_numpy(np.array(value, np.float32)))
  if tensors:
    raise ValueError(f'PyTorch tensors without a counterpart: {sorted(tensors)[:5]}')


def torch_name(keys, kind: str) -> str:
  keys = [k for k in keys if k != 'resnet']
  if keys[0] in MODALITIES:
    keys = ['branches'] + keys
  leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
          'mean': 'running_mean', 'var': 'running_var'}[keys[-1]]
  return '.'.join(keys[:-1] + [leaf])


def torch_state_as_ours(model, params, batch_stats):
  """The PyTorch tensors, reshaped into our trees (for comparison)."""
  tensors = dict(model.named_parameters())
  tensors.update(dict(model.named_buffers()))

  def get(kind):
    def fn(path, leaf):
      value = tensors[torch_name([p.key for p in path], kind)].detach().numpy()
      return value.transpose(2, 3, 1, 0) if value.ndim == 4 else (value.T if value.ndim == 2 else value)
    return fn
  return (jax.tree_util.tree_map_with_path(get('params'), params),
          jax.tree_util.tree_map_with_path(get('stats'), batch_stats))


# ----------------------------------------------------------------------- our side


def our_config(method: str, kernels: str = 'auto'):
  from configs import cremad_mlb
  c = cremad_mlb.get_config(f'method={method}')
  c.optimizer.schedule = 'constant'   # both sides: a fixed lr of 1e-4
  c.model.fusion = 'late_linear'      # both sides (MLB's own fusion, spelled out)
  c.model.kernels = kernels
  return c


def our_step(method: str, frame_size: int, batch: int, kernels: str = 'auto'):
  """(jitted train step, initial state, device batch of a host batch) of our model for one frame size."""
  from mlb_jax import build
  c = our_config(method, kernels)
  shapes = {'audio': AUDIO_SHAPE, 'video': (FRAMES, frame_size, frame_size, 3)}
  spec = build.DataSpec(MODALITIES, shapes, NUM_CLASSES, 1)   # no epochs
  training = build.build_training(c, spec, donate=False)
  state = training.initial_state({m: np.zeros(shapes[m], np.float32) for m in MODALITIES}, [0])
  return training.train_step, state, lambda host: training.place_batch([host])


def make_batch(rng, frame_size: int, batch: int):
  audio = rng.standard_normal((batch,) + AUDIO_SHAPE, dtype=np.float32)
  video = rng.standard_normal((batch, FRAMES, frame_size, frame_size, 3), dtype=np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  return {'audio': audio, 'video': video, 'label': labels}


def torch_inputs(torch, batch):
  return (torch.from_numpy(batch['audio']),
          torch.from_numpy(np.ascontiguousarray(batch['video'].transpose(0, 4, 1, 2, 3))),
          torch.from_numpy(batch['label'].astype(np.int64)))


def check_same_step(torch, method: str, frame_size: int = 64, batch: int = 4, kernels: str = 'auto') -> dict:
  """One step on both sides from the same parameters: max differences."""
  step, state, place = our_step(method, frame_size, batch, kernels)
  model = torch_model(torch)
  copy_params(torch, model, state.params, state.batch_stats)
  model.train()
  data = make_batch(np.random.default_rng(1), frame_size, batch)
  new_state, metrics = step(state, place(data))
  torch_loss = torch_step(torch, model, method)(*torch_inputs(torch, data)).item()
  t_params, t_stats = torch_state_as_ours(model, new_state.params, new_state.batch_stats)
  delta = lambda new, ref: jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new, ref)
  ours_d, torch_d = delta(new_state.params, state.params), delta(t_params, state.params)
  upd = np.concatenate([np.abs(a - b).ravel() for a, b in zip(jax.tree.leaves(ours_d), jax.tree.leaves(torch_d))])
  stats = np.concatenate([np.abs(np.asarray(a) - b).ravel()
                          for a, b in zip(jax.tree.leaves(new_state.batch_stats), jax.tree.leaves(t_stats))])
  return {'loss_ours': float(metrics['loss']), 'loss_torch': torch_loss,
          'update_max_abs_diff': float(upd.max()), 'update_p999_abs_diff': float(np.quantile(upd, 0.999)),
          'batch_stats_max_abs_diff': float(stats.max())}


# ------------------------------------------------------------------------- timing


def cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def page_faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def compare(torch, method: str, frame_size: int, batch: int, rounds: int, steps: int,
            kernels: str = 'auto') -> dict:
  rng = np.random.default_rng(0)
  data = make_batch(rng, frame_size, batch)
  step, state, place = our_step(method, frame_size, batch, kernels)
  ours_batch = place(data)
  start = time.perf_counter()
  state, metrics = step(state, ours_batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start

  model = torch_model(torch)
  model.train()
  t_step = torch_step(torch, model, method)
  t_inputs = torch_inputs(torch, data)
  t_step(*t_inputs)                                     # warm-up (oneDNN primitive caches)

  def run_ours(state):
    for _ in range(steps):
      state, m = step(state, ours_batch)
    jax.block_until_ready(m)
    return state

  def run_torch(_):
    for _ in range(steps):
      t_step(*t_inputs)

  state = run_ours(state)
  times = {'torch': [], 'ours': []}
  cpu = {'torch': [], 'ours': []}
  faults = {'torch': [], 'ours': []}
  for _ in range(rounds):
    for name in ('torch', 'ours'):
      f0, c0, t0 = page_faults(), cpu_seconds(), time.perf_counter()
      if name == 'ours':
        state = run_ours(state)
      else:
        run_torch(None)
      times[name].append((time.perf_counter() - t0) / steps)
      cpu[name].append((cpu_seconds() - c0) / steps)
      faults[name].append((page_faults() - f0) / steps)
  out = {k: {'samples_per_s': batch / statistics.median(v), 'cpu_s_per_step': statistics.median(cpu[k]),
             'page_faults_per_step': statistics.median(faults[k])}
         for k, v in times.items()}
  out['ours']['compile_s'] = compile_s
  out['ratio_samples_per_s'] = out['ours']['samples_per_s'] / out['torch']['samples_per_s']
  out['ratio_cpu_time'] = out['torch']['cpu_s_per_step'] / out['ours']['cpu_s_per_step']
  return out


def main(argv):
  del argv
  malloc_reuse = False
  if _MALLOC_REUSE.value:   # first: before any thread is given a malloc arena
    from mlb_jax import cpu_malloc
    malloc_reuse = cpu_malloc.reuse_freed_memory()
  if _CORES.value:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:_CORES.value]))
  torch = import_torch()
  if _CORES.value:
    torch.set_num_threads(_CORES.value)
  report = {'device': f'{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs visible, '
                      f'{len(os.sched_getaffinity(0))} used', 'torch': torch.__version__,
            'torch_threads': torch.get_num_threads(), 'jax': jax.__version__, 'batch': _BATCH.value,
            'kernels': _KERNELS.value,
            'malloc_reuse': malloc_reuse, 'load_average_start': os.getloadavg()[0], 'results': {}}
  if _CHECK.value:
    for method in _METHODS.value:
      for kernels in _KERNELS.value:
        suffix = '' if len(_KERNELS.value) == 1 else f'_{kernels}'
        report[f'check_{method}{suffix}'] = check = check_same_step(torch, method, kernels=kernels)
        print(f'check ({method}, kernels {kernels}, 64 px, batch 4): loss ours {check["loss_ours"]:.6f} '
              f'torch {check["loss_torch"]:.6f}; '
              f'max |update diff| {check["update_max_abs_diff"]:.2e} (99.9 %: {check["update_p999_abs_diff"]:.2e}); '
              f'max |BN stats diff| {check["batch_stats_max_abs_diff"]:.2e}', flush=True)
  for method in _METHODS.value:
    for size in (int(s) for s in _FRAME_SIZES.value):
      r = compare(torch, method, size, _BATCH.value, _ROUNDS.value, _STEPS.value, _KERNELS.value[0])
      report['results'][f'{method}_{size}'] = r
      print(f'{method:5s} {size}x{size} batch {_BATCH.value}: torch {r["torch"]["samples_per_s"]:.2f} samples/s, '
            f'ours {r["ours"]["samples_per_s"]:.2f} samples/s -> ours/torch x{r["ratio_samples_per_s"]:.2f}; '
            f'CPU s/step torch {r["torch"]["cpu_s_per_step"]:.2f}, ours {r["ours"]["cpu_s_per_step"]:.2f} '
            f'(compile {r["ours"]["compile_s"]:.0f} s); page faults/step torch '
            f'{r["torch"]["page_faults_per_step"]:.0f}, ours {r["ours"]["page_faults_per_step"]:.0f}', flush=True)
  report['load_average_end'] = os.getloadavg()[0]
  print(f'{report["device"]}; malloc_reuse {malloc_reuse}; '
        f'load average {report["load_average_start"]:.1f} -> {report["load_average_end"]:.1f}')
  if _JSON.value:
    print(json.dumps(report))


if __name__ == '__main__':
  app.run(main)
