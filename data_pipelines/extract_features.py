"""Pretrained-feature inputs of the paper's Conformer models (docs/methods.md#conformer-encoder), for users
who have the pretrained weights locally.

Three steps; the first two need PyTorch (`pip install torch==2.13.0`) and, for
audio, `pip install transformers soundfile`; nothing here is needed by the tests
except `pack`'s numpy core:

  # 1. wav2vec 2.0 hidden states (first 12 layers of wav2vec2-large-robust), one .npy per clip
  python -m data_pipelines.extract_features audio --wav_dir=CREMA-D/AudioWAV \\
      --model_dir=/models/wav2vec2-large-robust --out_dir=feats/audio [--fold=0]
  # 2. face embeddings (HSEmotion EfficientNet-B2, classifier removed), one .npy per clip,
  #    from aligned face crops <faces_dir>/<clip>/<frame>.jpg made by your face detector
  python -m data_pipelines.extract_features faces --faces_dir=faces --model=/models/enet_b2_8_best.pt \\
      --out_dir=feats/video [--fold=0]
  # 3. one training file: zero-padded arrays, labels from the file names, the VAVL split
  python -m data_pipelines.extract_features pack --audio_dir=feats/audio --video_dir=feats/video \\
      --fold=0 --out=cremad_features_fold0.npz
  python run.py --config=configs/arrays.py:method=mlb --config.data.path=cremad_features_fold0.npz \\
      --config.model.encoder=conformer --config.data.batch_size=8 --workdir=w

Feature file format (step 3's output; the `.npz` layout of data_pipelines/arrays.py):
  audio  float16 [N, T_a, 1024]  wav2vec 2.0 frames (50 per second), zeros after a clip's end
  video  float16 [N, T_v, 1408]  one face embedding per video frame with a detected face,
                                 at most 150 frames (the authors' cut), zeros after the end
  label  int32 [N]               CREMA-D emotion from the file name: NEU 0, HAP 1, SAD 2,
                                 FEA 3, DIS 4, ANG 5
  split  int32 [N]               0 train, 1 val, 2 test (VAVL partition `fold + 1`)
A frame that is exactly a zero vector is padding: the `conformer` encoder masks it
out of attention, BatchNorm statistics and the time mean. Per-clip files of
steps 1-2 are `<out_dir>/<clip>.npy`, float32 [T, D].

Normalisation as the authors: the waveform is resampled to 16 kHz and
standardised with the fold's training mean/std (docs/methods.md#crema-d, below); face
embeddings are standardised per dimension with the training clips' statistics
in `pack`. The authors fine-tune wav2vec 2.0's transformer layers; precomputed
features keep it frozen, which is what a feature file can offer.
"""

import argparse
import json
import os

import numpy as np

CLASSES = ('NEU', 'HAP', 'SAD', 'FEA', 'DIS', 'ANG')
WAV_STATS = {0: (-2.794e-5, 0.061323), 1: (-2.675e-5, 0.060996), 2: (-2.778e-5, 0.061540)}
MAX_FACE_FRAMES = 150
VAVL_FOLDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lists', 'cremad_vavl_folds.json')


def label_of(clip: str) -> int:
  """CREMA-D label from '<actor>_<sentence>_<EMOTION>_<level>'."""
  parts = clip.split('_')
  if len(parts) != 4 or parts[2] not in CLASSES:
    raise ValueError(f"'{clip}' is not a CREMA-D clip name <actor>_<sentence>_<EMOTION>_<level> "
                     f'with EMOTION in {CLASSES}')
  return CLASSES.index(parts[2])


def pad_frames(arrays: list[np.ndarray], max_frames: int | None = None) -> np.ndarray:
  """[T_i, D] arrays -> [N, T, D] with zeros after each array's end (T = longest, or max_frames)."""
  dims = {a.shape[1] for a in arrays}
  if len(dims) != 1 or any(a.ndim != 2 for a in arrays):
    raise ValueError(f'frame features must all be [T, D] with one D, got shapes {[a.shape for a in arrays][:5]}')
  t = max(len(a) for a in arrays) if max_frames is None else max_frames
  out = np.zeros((len(arrays), t, dims.pop()), np.float32)
  for i, a in enumerate(arrays):
    a = a[:t]
    if np.any(np.all(a == 0, axis=-1)):
      raise ValueError(f'clip {i} has an all-zero frame, which would read as padding')
    out[i, :len(a)] = a
  return out


def pack(audio: dict[str, np.ndarray], video: dict[str, np.ndarray], splits: dict[str, list[str]]) -> dict:
  """The feature file's arrays from per-clip features {clip: [T, D]} and {'train'|'val'|'test': clips}.

  Face embeddings are standardised per dimension with the training clips' mean
  and std (over their frames) before padding; clips missing a modality are
  dropped, as the authors' loader drops them.
  """
  codes = {'train': 0, 'val': 1, 'test': 2}
  clips, split = [], []
  for name, members in splits.items():
    for clip in members:
      if clip in audio and clip in video and len(video[clip]):
        clips.append(clip)
        split.append(codes[name])
  if not clips:
    raise ValueError('no clip has both audio and video features')
  train = [c for c, s in zip(clips, split) if s == 0]
  frames = np.concatenate([video[c][:MAX_FACE_FRAMES] for c in train])
  mean, std = frames.mean(0), frames.std(0) + 1e-6
  return {'audio': pad_frames([audio[c] for c in clips]).astype(np.float16),
          'video': pad_frames([(video[c] - mean) / std for c in clips], MAX_FACE_FRAMES).astype(np.float16),
          'label': np.asarray([label_of(c) for c in clips], np.int32),
          'split': np.asarray(split, np.int32)}


def vavl_split(fold: int) -> dict[str, list[str]]:
  with open(VAVL_FOLDS) as f:
    folds = json.load(f)
  part = folds[str(fold + 1)]
  return {k: [os.path.splitext(c.split('-')[0])[0] for c in part[k]] for k in ('train', 'val', 'test')}


def load_dir(path: str) -> dict[str, np.ndarray]:
  return {f[:-4]: np.load(os.path.join(path, f)) for f in sorted(os.listdir(path)) if f.endswith('.npy')}


def extract_audio(args):
  import soundfile
  import torch
  from scipy.signal import resample_poly
  from transformers import Wav2Vec2Model
  model = Wav2Vec2Model.from_pretrained(args.model_dir)
  model.encoder.layers = model.encoder.layers[:12]   # the authors keep the first 12 layers
  model.eval()
  mean, std = WAV_STATS[args.fold]
  os.makedirs(args.out_dir, exist_ok=True)
  for name in sorted(os.listdir(args.wav_dir)):
    if not name.endswith('.wav'):
      continue
    wav, rate = soundfile.read(os.path.join(args.wav_dir, name), dtype='float32', always_2d=True)
    wav = resample_poly(wav[:, 0], 16000, rate) if rate != 16000 else wav[:, 0]
    with torch.no_grad():
      hidden = model(torch.from_numpy(((wav - mean) / std).astype(np.float32))[None]).last_hidden_state
    np.save(os.path.join(args.out_dir, name[:-4] + '.npy'), hidden[0].numpy())


def extract_faces(args):
  import torch
  from PIL import Image
  model = torch.load(args.model, map_location='cpu', weights_only=False)
  model.classifier = torch.nn.Identity()             # 1408-d embeddings
  model.eval()
  mean = np.asarray([0.485, 0.456, 0.406], np.float32)
  std = np.asarray([0.229, 0.224, 0.225], np.float32)
  os.makedirs(args.out_dir, exist_ok=True)
  for clip in sorted(os.listdir(args.faces_dir)):
    files = sorted(os.listdir(os.path.join(args.faces_dir, clip)))[:MAX_FACE_FRAMES]
    if not files:
      continue
    images = [np.asarray(Image.open(os.path.join(args.faces_dir, clip, f)).convert('RGB').resize((224, 224)),
                         np.float32) / 255.0 for f in files]
    x = torch.from_numpy(((np.stack(images) - mean) / std).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
      np.save(os.path.join(args.out_dir, clip + '.npy'), model(x).numpy())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='step', required=True)
  a = sub.add_parser('audio')
  a.add_argument('--wav_dir', required=True)
  a.add_argument('--model_dir', required=True)
  a.add_argument('--out_dir', required=True)
  a.add_argument('--fold', type=int, default=0, choices=(0, 1, 2))
  f = sub.add_parser('faces')
  f.add_argument('--faces_dir', required=True)
  f.add_argument('--model', required=True)
  f.add_argument('--out_dir', required=True)
  p = sub.add_parser('pack')
  p.add_argument('--audio_dir', required=True)
  p.add_argument('--video_dir', required=True)
  p.add_argument('--fold', type=int, default=0, choices=(0, 1, 2))
  p.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  if args.step == 'audio':
    extract_audio(args)
  elif args.step == 'faces':
    extract_faces(args)
  else:
    arrays = pack(load_dir(args.audio_dir), load_dir(args.video_dir), vavl_split(args.fold))
    np.savez(args.out, **arrays)
    print(f"{args.out}: {len(arrays['label'])} clips, audio {arrays['audio'].shape}, video {arrays['video'].shape}")


if __name__ == '__main__':
  main()
