"""Read-time video transforms: JPEG frames -> ImageNet-normalised float32 [T, S, S, 3].

Training split (docs/methods.md §5): torchvision's RandomResizedCrop(S) with its
defaults (scale (0.08, 1), ratio (3/4, 4/3), bilinear) then RandomHorizontalFlip(0.5),
drawn per frame (CREMA-D, AVE) or once per clip (UCF101). Evaluation splits:
Resize((S, S)). Both end with Normalize(ImageNet mean, std) on [0, 1] RGB.

How a training frame is made (`train_frames`), cheapest first:
  1. the crop box and the flip are drawn from the JPEG header's size, before any
     pixel is decoded (the same draws, in the same order, as drawing them after
     decoding: box then flip, frame after frame);
  2. when the box is at least 2 S (4 S, 8 S) pixels in both directions, the JPEG is
     decoded at 1/2 (1/4, 1/8) scale in the DCT domain (PIL `Image.draft`) and the
     box mapped into the reduced image, so the crop still holds at least S x S
     pixels; smaller boxes (every box of a 480 x 360 CREMA-D frame at S = 224) are
     decoded in full and give exactly the pixels of decode-then-crop;
  3. PIL crops and resizes in one call (`resize(box=...)`: only the box is
     resampled), flips the S x S result, and the uint8 pixels are written once,
     normalised, into the clip's float32 output (one multiply-add over rows of
     3 S values; no per-frame float copies, no stacking).
The reduced-scale decode is the only step whose pixels differ from
decode -> crop -> resize (tests/test_frames.py bounds the difference).
"""

import functools
import io
import math
from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
DRAFT_SCALES = (8, 4, 2)  # the DCT-domain reductions libjpeg offers (and 1)


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


@functools.lru_cache(maxsize=16)
def _row_constants(width: int) -> tuple[np.ndarray, np.ndarray]:
  """The per-channel scale and offset tiled over a row of `width` RGB pixels: a
  multiply-add over [..., 3 * width] rows runs at full vector speed (a broadcast
  against the last axis of 3 works three values at a time)."""
  return np.tile(_SCALE, width), np.tile(_OFFSET, width)


def normalize(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
  """uint8 RGB [..., W, 3] -> (x / 255 - mean) / std, float32 (one multiply-add).

  `out`: a float32 array of the same shape to write into (e.g. a slice of a clip).
  """
  if out is None:
    out = np.empty(frames.shape, np.float32)
  scale, offset = _row_constants(frames.shape[-2])
  rows = out.reshape(-1, scale.size)
  rows[...] = frames.reshape(-1, scale.size)
  rows *= scale
  rows += offset
  return out


def _open(data: bytes) -> Image.Image:
  """A JPEG opened lazily: the header is read, no pixel is decoded yet."""
  return Image.open(io.BytesIO(data))


def draft_scale(box_width: float, box_height: float, size: int) -> int:
  """The largest DCT-domain reduction (8, 4, 2 or 1) after which a `box_width` x
  `box_height` crop still holds at least `size` pixels in both directions."""
  for s in DRAFT_SCALES:
    if box_width >= s * size and box_height >= s * size:
      return s
  return 1


def decode_crop(data: bytes, box: tuple[int, int, int, int], size: int, *, flip: bool = False,
                reduced: bool = True) -> np.ndarray:
  """The `box` (left, top, w, h) of a JPEG resized to `size` x `size` (bilinear), uint8 RGB.

  Args:
    data: JPEG bytes (any mode PIL reads; the result is RGB).
    box: the crop in the full image's pixel coordinates.
    size: output side.
    flip: mirror the result left-right.
    reduced: decode at the reduced scale `draft_scale` allows (see the module
      docstring); False decodes in full (the reference path).
  """
  return _crop_resize(_open(data), box, size, flip, reduced)


def _crop_resize(image: Image.Image, box, size: int, flip: bool, reduced: bool) -> np.ndarray:
  left, top, w, h = box
  factor = 1.0
  if reduced and image.format == 'JPEG' and image.mode in ('RGB', 'L'):
    scale = draft_scale(w, h, size)
    if scale > 1:
      full_width = image.width
      drafted = image.draft(image.mode, (image.width // scale, image.height // scale))
      if drafted is not None:
        factor = drafted[1][2] / full_width   # 1 / the reduction libjpeg applies
  if image.mode not in ('RGB', 'L'):
    image = image.convert('RGB')            # e.g. CMYK: converted before resampling
  region = (left * factor, top * factor, (left + w) * factor, (top + h) * factor)
  out = image.resize((size, size), Image.BILINEAR, box=region)
  if flip:
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  if out.mode != 'RGB':
    out = out.convert('RGB')                # grayscale: the same as converting first
  return np.asarray(out)


def eval_frames(jpegs: Sequence[bytes], size: int) -> np.ndarray:
  """Resize((size, size)) of every frame, then ImageNet normalisation: float32 [T, size, size, 3].

  Frames are decoded in full (no reduced-scale decode): evaluation sees exactly
  Resize of the stored frame.
  """
  out = np.empty((len(jpegs), size, size, 3), np.float32)
  for t, data in enumerate(jpegs):
    image = _open(data)
    if image.mode != 'RGB':
      image = image.convert('RGB')
    normalize(np.asarray(image.resize((size, size), Image.BILINEAR)), out[t])
  return out


def train_frames(jpegs: Sequence[bytes], size: int, rng: np.random.Generator, *,
                 per_frame: bool, reduced: bool = True) -> np.ndarray:
  """RandomResizedCrop(size) + horizontal flip, then ImageNet normalisation.

  Args:
    jpegs: T JPEG-encoded RGB frames.
    size: output side S.
    rng: this example's generator (Grain `random_map` gives one per example and epoch);
      per frame (or once per clip) it draws the crop box, then the flip.
    per_frame: True draws crop and flip for every frame independently (the
      reference's CREMA-D and AVE transforms); False draws them once and
      applies them to all frames (UCF101).
    reduced: allow the reduced-scale JPEG decode of large boxes (module docstring).

  Returns:
    float32 [T, size, size, 3].
  """
  out = np.empty((len(jpegs), size, size, 3), np.float32)
  box = flip = None
  for t, data in enumerate(jpegs):
    image = _open(data)
    if per_frame or box is None:
      box = random_resized_crop_box(image.width, image.height, rng)
      flip = rng.random() < 0.5
    normalize(_crop_resize(image, box, size, flip, reduced), out[t])
  return out
