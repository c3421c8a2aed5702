"""Read-time video transforms: JPEG frames -> ImageNet-normalised float32 [T, S, S, 3].

Training split (METHODS.md §5): torchvision's RandomResizedCrop(S) with its
defaults (scale (0.08, 1), ratio (3/4, 4/3), bilinear) then RandomHorizontalFlip(0.5),
drawn per frame (CREMA-D, AVE) or once per clip (UCF101). Evaluation splits:
Resize((S, S)). Both end with Normalize(ImageNet mean, std) on [0, 1] RGB.
"""

import math
from typing import Sequence

import numpy as np
from PIL import Image

from data_pipelines.media import decode_jpeg

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
  """(left, top, w, h) of a crop, as `torchvision.transforms.RandomResizedCrop.get_params`.

  Ten tries at an area fraction ~ U(scale) and a log-uniform aspect ratio; if
  none fits, the largest central crop whose aspect ratio lies in `ratio`.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


_SCALE = (1 / (255 * IMAGENET_STD)).astype(np.float32)
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalize(frames: np.ndarray) -> np.ndarray:
  """uint8 RGB [..., 3] -> (x / 255 - mean) / std, float32 (one multiply-add)."""
  out = frames.astype(np.float32)
  out *= _SCALE
  out += _OFFSET
  return out


def eval_frames(jpegs: Sequence[bytes], size: int) -> np.ndarray:
  """Resize((size, size)) of every frame, then ImageNet normalisation: float32 [T, size, size, 3]."""
  images = [decode_jpeg(b).resize((size, size), Image.BILINEAR) for b in jpegs]
  return normalize(np.stack([np.asarray(im) for im in images]))


def _crop_flip(image: Image.Image, size: int, rng: np.random.Generator, box=None, flip=None) -> np.ndarray:
  if box is None:
    box = random_resized_crop_box(image.width, image.height, rng)
    flip = rng.random() < 0.5
  left, top, w, h = box
  out = np.asarray(image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h)))
  return out[:, ::-1] if flip else out


def train_frames(jpegs: Sequence[bytes], size: int, rng: np.random.Generator, *,
                 per_frame: bool) -> np.ndarray:
  """RandomResizedCrop(size) + horizontal flip, then ImageNet normalisation.

  Args:
    jpegs: T JPEG-encoded RGB frames.
    size: output side S.
    rng: this example's generator (Grain `random_map` gives one per example and epoch).
    per_frame: True draws crop and flip for every frame independently (the
      reference's CREMA-D and AVE transforms); False draws them once and
      applies them to all frames (UCF101).

  Returns:
    float32 [T, size, size, 3].
  """
  images = [decode_jpeg(b) for b in jpegs]
  if per_frame:
    out = [_crop_flip(im, size, rng) for im in images]
  else:
    box = random_resized_crop_box(images[0].width, images[0].height, rng)
    flip = rng.random() < 0.5
    out = [_crop_flip(im, size, rng, box, flip) for im in images]
  return normalize(np.stack(out))
