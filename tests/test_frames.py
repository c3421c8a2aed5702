"""data_pipelines/frames.py: the crop distribution against torchvision's definition, the
reduced-scale JPEG decode against the full decode, and the training transform against the
plain decode -> crop -> resize -> flip -> normalise path."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from data_pipelines import frames

W, H = 480, 360   # CREMA-D's frames


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def natural_image(width: int, height: int, seed: int = 0) -> np.ndarray:
  """Smooth shading, blurred texture and a few hard edges: uint8 [H, W, 3]."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / max(width, height)
  base = np.stack([0.5 + 0.4 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in (0, 1, 2)], -1)
  noise = rng.standard_normal((height // 16 + 2, width // 16 + 2, 3))
  noise = np.asarray(Image.fromarray(((noise * 40) + 128).clip(0, 255).astype(np.uint8)).resize(
      (width, height), Image.BICUBIC), np.float32) / 255 - 0.5
  img = base + 0.5 * noise
  img[height // 3:height // 2, width // 4:width // 2] = (0.9, 0.2, 0.1)   # a block with hard edges
  return (img.clip(0, 1) * 255).astype(np.uint8)


# --- the crop distribution --------------------------------------------------------------------


def definition_grid(width, height, n=1200):
  """torchvision's RandomResizedCrop draw on an n x n grid of (scale ~ U(0.08, 1),
  log ratio ~ U(log 3/4, log 4/3)): the area fraction and log aspect ratio of each
  accepted (rounded) box, and the fraction of draws accepted."""
  scale = 0.08 + (np.arange(n) + 0.5) / n * (1 - 0.08)
  log_ratio = math.log(3 / 4) + (np.arange(n) + 0.5) / n * (math.log(4 / 3) - math.log(3 / 4))
  s, r = np.meshgrid(scale, log_ratio, indexing='ij')
  area = width * height * s
  # round() of Python and np.round agree away from .5 ties (measure zero here)
  w = np.round(np.sqrt(area * np.exp(r)))
  h = np.round(np.sqrt(area / np.exp(r)))
  ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  return (w * h / (width * height))[ok], np.log(w / h)[ok], ok.mean()


def chi_square(samples, expected_values, bins):
  observed, _ = np.histogram(samples, bins)
  expected, _ = np.histogram(expected_values, bins)
  expected = expected / expected.sum() * len(samples)
  keep = expected > 5
  return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum()) - 1


def test_crop_scale_and_log_ratio_follow_the_torchvision_definition():
  rng = np.random.default_rng(0)
  boxes = np.array([frames.random_resized_crop_box(W, H, rng) for _ in range(20000)])
  left, top, w, h = boxes.T
  assert np.all((left >= 0) & (top >= 0) & (left + w <= W) & (top + h <= H))
  area, log_ratio = w * h / (W * H), np.log(w / h)
  ref_area, ref_ratio, accepted = definition_grid(W, H)
  assert (1 - accepted) ** 10 < 1e-4   # a 4:3 frame: the fallback (all 10 draws rejected) is negligible
  for values, ref, bins in ((area, ref_area, np.linspace(0.0, 1.0, 21)),
                            (log_ratio, ref_ratio, np.linspace(math.log(3 / 4) - 0.01, math.log(4 / 3) + 0.01, 21))):
    stat, dof = chi_square(values, ref, bins)
    # chi-square 0.999 quantile for 19 degrees of freedom is 43.8
    assert dof >= 15 and stat < 43.8, (stat, dof)
  # Positions: uniform over the places the box fits (left in [0, W - w]).
  u = left / np.maximum(W - w, 1)
  assert abs(u[w < W].mean() - 0.5) < 0.02


def test_crop_fallback_rate_and_box_follow_the_definition():
  # 300 x 60: most draws are too tall, so all ten are rejected in a sizeable fraction of calls.
  rng = np.random.default_rng(1)
  n = 4000
  boxes = [frames.random_resized_crop_box(300, 60, rng) for _ in range(n)]
  fallback = (300 - round(60 * 4 / 3)) // 2, 0, round(60 * 4 / 3), 60   # widest allowed ratio, centred
  observed = np.mean([b == fallback for b in boxes])
  _, _, accepted = definition_grid(300, 60)
  expected = (1 - accepted) ** 10   # plus the rare accepted draw equal to that very box
  assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 0.005, (observed, expected)
  assert frames.random_resized_crop_box(1000, 10, rng) == (493, 0, 13, 10)
  assert frames.random_resized_crop_box(10, 1000, rng) == (0, 493, 10, 13)   # narrowest ratio 3/4


# --- the training transform -------------------------------------------------------------------


def reference_train_frames(jpegs, size, rng, per_frame):
  """The plain path: decode every frame in full, then per frame (or once) box, flip, crop +
  resize (bilinear), flip, ImageNet normalisation."""
  images = [Image.open(io.BytesIO(b)).convert('RGB') for b in jpegs]
  out = []
  box = flip = None
  for image in images:
    if per_frame or box is None:
      box = frames.random_resized_crop_box(image.width, image.height, rng)
      flip = rng.random() < 0.5
    left, top, w, h = box
    x = np.asarray(image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h)))
    out.append(x[:, ::-1] if flip else x)
  x = np.stack(out).astype(np.float32)
  return (x / 255 - frames.IMAGENET_MEAN) / frames.IMAGENET_STD


@pytest.mark.parametrize('per_frame', [True, False])
def test_train_frames_are_the_plain_path_with_the_same_draws(per_frame):
  clip = [jpeg(natural_image(W, H, seed=s)) for s in range(3)]
  for seed in range(4):
    rng, ref_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    got = frames.train_frames(clip, 224, rng, per_frame=per_frame)
    want = reference_train_frames(clip, 224, ref_rng, per_frame)
    assert got.shape == (3, 224, 224, 3) and got.dtype == np.float32
    # No 480 x 360 box holds 448 x 448 pixels: every frame is decoded in full, as the plain path.
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert rng.random() == ref_rng.random()   # the same draws, in the same order: resumable as before


def test_normalize_is_one_multiply_add():
  x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
  expected = x.astype(np.float32) * frames._SCALE + frames._OFFSET
  np.testing.assert_array_equal(frames.normalize(x), expected)
  out = np.empty((2, 5, 7, 3), np.float32)
  assert frames.normalize(x, out) is out
  np.testing.assert_array_equal(out, expected)


def test_draft_scale_keeps_at_least_the_output_resolution():
  assert frames.draft_scale(480, 360, 224) == 1
  assert frames.draft_scale(448, 448, 224) == 2
  assert frames.draft_scale(447, 900, 224) == 1
  assert frames.draft_scale(1000, 900, 224) == 4
  assert frames.draft_scale(4000, 3000, 224) == 8
  assert frames.draft_scale(200, 150, 24) == 4


# Mean absolute difference, in uint8 levels, between the reduced-scale decode and the full
# decode of the same box (measured 0.4-1.0 on these images at 1/2 to 1/8).
REDUCED_DECODE_MEAN_ABS_BOUND = 1.5


@pytest.mark.parametrize('box,scale', [((0, 0, 1280, 960), 4), ((100, 50, 900, 700), 2),
                                       ((300, 200, 460, 500), 2), ((0, 0, 1800, 1800), 8)])
def test_reduced_scale_decode_is_close_to_full_decode_then_resize(box, scale):
  size = 224
  width = max(1280, box[0] + box[2])
  height = max(960, box[1] + box[3])
  data = jpeg(natural_image(width, height, seed=2), quality=90)
  assert frames.draft_scale(box[2], box[3], size) == scale
  reduced = frames.decode_crop(data, box, size).astype(np.float32)
  full = frames.decode_crop(data, box, size, reduced=False).astype(np.float32)
  left, top, w, h = box
  plain = np.asarray(Image.open(io.BytesIO(data)).convert('RGB').resize(
      (size, size), Image.BILINEAR, box=(left, top, left + w, top + h)), np.float32)
  np.testing.assert_array_equal(full, plain)
  diff = np.abs(reduced - full)
  assert diff.mean() < REDUCED_DECODE_MEAN_ABS_BOUND, diff.mean()
  assert np.percentile(diff, 99) < 12


def test_flip_grayscale_and_small_sources():
  rgb = natural_image(64, 48, seed=3)
  data = jpeg(rgb)
  box = (5, 4, 40, 30)
  np.testing.assert_array_equal(frames.decode_crop(data, box, 16, flip=True),
                                frames.decode_crop(data, box, 16)[:, ::-1])
  gray = jpeg(rgb[..., 0])   # a grayscale JPEG: RGB out, as converting before resizing
  expected = np.asarray(Image.open(io.BytesIO(gray)).convert('RGB').resize(
      (16, 16), Image.BILINEAR, box=(5, 4, 45, 34)))
  np.testing.assert_array_equal(frames.decode_crop(gray, box, 16, reduced=False), expected)
  assert frames.decode_crop(gray, box, 8).shape == (8, 8, 3)   # 40 x 30 box at 8 px: decoded at 1/2
