"""Embedded audio-video benchmark with real modality competition.

Generative process (all draws from one `numpy.random.Generator(seed)`; class
templates come from `template_seed`, so train/val/test share them):

  y ~ Uniform{0..C-1}
  audio  [F, T] "log-spectrogram": Gaussian noise N(0, 1) plus, when the clip is
         *audible* (probability `audio_present`), the class's harmonic stack --
         `audio_harmonics` frequency rows at class-specific positions, switched
         on between a random onset and offset -- with amplitude `audio_amplitude`.
  video  [N, H, W, 3] frames: Gaussian noise N(0, 1) plus, when the clip is
         *visible* (probability `video_present`, drawn independently of the
         audio), the class's smooth colour texture shifted by a random offset
         per frame, with amplitude `video_amplitude`.

Why it produces the imbalance. Both modalities carry the label on a subset of
the clips and the subsets are independent, so they are complementary: the
Bayes-optimal fused classifier is right whenever either modality is present,
while each modality alone is right only on its own subset. The audio cue is
strong and position-locked (a few fixed rows: nearly linear to read); the
video cue is faint and moves from frame to frame (the encoder must learn
shift-invariant texture detectors). With the benchmark's sizes (1,000 training
clips, audio read by an MLP over the 1,024 spectrogram bins) the audio branch
both learns its cue and memorises the noise of the silent training clips within
a few epochs -- as real audio encoders overfit CREMA-D. Under joint training the
fused loss on every training clip is then driven down by audio alone, the
gradient reaching the video encoder vanishes, and the video branch stays
undertrained: its probe ends far below what the same encoder reaches on video
alone, and on test clips without audio the fused head has little to fall back
on. Unimodal losses (Multi-Loss) give the video encoder its own gradient on
every visible clip; MLB also slows the audio branch while it leads and speeds
the video branch up while it lags.

The pipeline returns `Dataset` (see `data_pipelines.common`): in-memory splits
read through Grain (per-epoch shuffle from the seed, batches with the remainder
dropped for training and padded with a mask for evaluation).
"""

import numpy as np

from data_pipelines.common import ArraySource, Dataset

MODALITIES = ('audio', 'video')


def _templates(cfg):
  """Per-class audio rows and video textures, fixed by `cfg.template_seed`."""
  rng = np.random.default_rng(cfg.template_seed)
  c, f = cfg.num_classes, cfg.audio_shape[0]
  rows = np.stack([rng.choice(f, size=cfg.audio_harmonics, replace=False) for _ in range(c)])
  h, w = cfg.video_shape[1], cfg.video_shape[2]
  # Smooth textures: low-frequency random fields, one per class and colour channel.
  ky, kx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing='ij')
  textures = np.zeros((c, h, w, 3), np.float32)
  for k in range(c):
    for ch in range(3):
      fy, fx = rng.integers(1, 4, size=2)
      phase = rng.uniform(0, 2 * np.pi, size=2)
      textures[k, :, :, ch] = (np.sin(2 * np.pi * fy * ky + phase[0]) *
                               np.cos(2 * np.pi * fx * kx + phase[1]))
  textures /= np.sqrt(np.mean(textures ** 2, axis=(1, 2, 3), keepdims=True))
  return rows, textures


def generate(cfg, num_examples: int, seed: int) -> dict[str, np.ndarray]:
  """Draws `num_examples` clips.

  Args:
    cfg: `config.data` of `configs/synthetic.py`.
    num_examples: N.
    seed: seed of this split's draws.

  Returns:
    {'audio': float32 [N, F, T], 'video': float32 [N, frames, H, W, 3],
     'label': int32 [N], 'audio_present': bool [N], 'video_present': bool [N]}.
  """
  rows, textures = _templates(cfg)
  rng = np.random.default_rng(seed)
  n, (f, t), vshape = num_examples, cfg.audio_shape, tuple(cfg.video_shape)
  labels = rng.integers(0, cfg.num_classes, size=n).astype(np.int32)
  audible = rng.random(n) < cfg.audio_present
  visible = rng.random(n) < cfg.video_present

  audio = rng.standard_normal((n, f, t), dtype=np.float32)
  onset = rng.integers(0, t // 4, size=n)
  offset = rng.integers(3 * t // 4, t + 1, size=n)
  time = np.arange(t)
  active = (time[None] >= onset[:, None]) & (time[None] < offset[:, None])  # [N, T]
  for i in np.flatnonzero(audible):
    audio[i, rows[labels[i]]] += cfg.audio_amplitude * active[i]

  frames, h, w = vshape[0], vshape[1], vshape[2]
  video = rng.standard_normal((n,) + vshape, dtype=np.float32)
  shifts = rng.integers(0, max(h, w), size=(n, frames, 2))
  for i in np.flatnonzero(visible):
    for j in range(frames):
      video[i, j] += cfg.video_amplitude * np.roll(textures[labels[i]], tuple(shifts[i, j]), axis=(0, 1))
  return {'audio': audio, 'video': video, 'label': labels,
          'audio_present': audible, 'video_present': visible}


def load(cfg) -> Dataset:
  """The three splits, drawn with seeds derived from `cfg.seed`."""
  sizes = {'train': cfg.num_train, 'val': cfg.num_val, 'test': cfg.num_test}
  splits = {}
  for k, (name, size) in enumerate(sizes.items()):
    arrays = generate(cfg, size, seed=cfg.seed * 1000 + k)
    splits[name] = ArraySource({key: arrays[key] for key in (*MODALITIES, 'label')})
  return Dataset(modalities=MODALITIES, num_classes=cfg.num_classes,
                 sample_shapes={'audio': tuple(cfg.audio_shape), 'video': tuple(cfg.video_shape)},
                 splits=splits)
