"""Decoding, spectrograms and frame transforms against hand-computed values."""

import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import frames, media, spectrogram
from media_fixtures import gray, write_video, write_wav

# --- spectrograms -----------------------------------------------------------------------


def explicit_log_stft_column(wave, j, n_fft=512, hop=353, bins=(0, 1, 40, 256)):
  """Column j of log|STFT| by the definition: centred frame, periodic Hann, plain DFT."""
  padded = np.concatenate([np.zeros(n_fft // 2), np.clip(wave, -1, 1), np.zeros(n_fft // 2)])
  frame = padded[j * hop:j * hop + n_fft]
  n = np.arange(n_fft)
  window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
  return np.array([np.log(abs(np.sum(frame * window * np.exp(-2j * np.pi * k * n / n_fft))) + 1e-7)
                   for k in bins])


def test_log_stft_matches_the_definition_and_the_reference_shapes():
  rng = np.random.default_rng(0)
  wave = (0.5 * rng.standard_normal(66150)).astype(np.float32)
  wave[100] = 3.0  # clipped to 1 first
  spec = spectrogram.log_stft(wave, 512, 353)
  assert spec.shape == (257, 188) and spec.dtype == np.float32  # CREMA-D, docs/methods.md#crema-d
  for j in (0, 1, 94, 187):  # first and last columns see the zero padding
    np.testing.assert_allclose(spec[[0, 1, 40, 256], j], explicit_log_stft_column(wave, j), atol=2e-4)
  assert spectrogram.log_stft(np.zeros(48000), 512, 353).shape == (257, 136)  # UCF101, docs/methods.md#ucf101
  np.testing.assert_allclose(spectrogram.log_stft(np.zeros(1000)), np.log(1e-7), rtol=1e-6)


def test_log_psd_is_scipys_spectrogram_with_the_ave_shape():
  from scipy import signal
  wave = np.random.default_rng(1).uniform(-1, 1, 160000).astype(np.float32)
  spec = spectrogram.log_psd(wave, 16000, 512, 353)
  assert spec.shape == (257, 1004)  # AVE, docs/methods.md#ave
  _, _, psd = signal.spectrogram(wave, fs=16000, window=('tukey', 0.25), nperseg=512, noverlap=353,
                                 detrend='constant', scaling='density', mode='psd')
  np.testing.assert_allclose(spec, np.log(psd + 1e-7), rtol=1e-5, atol=1e-5)


def test_loop_to_length_tiles_like_the_reference_and_pad_or_cut_pads():
  wave = np.arange(5, dtype=np.float32)
  np.testing.assert_array_equal(spectrogram.loop_to_length(wave, 12), np.tile(wave, 3)[:12])
  np.testing.assert_array_equal(spectrogram.loop_to_length(wave, 3), wave[:3])
  np.testing.assert_array_equal(spectrogram.pad_or_cut(wave, 7), [0, 1, 2, 3, 4, 0, 0])
  np.testing.assert_array_equal(spectrogram.pad_or_cut(wave, 2), [0, 1])
  with pytest.raises(ValueError, match='empty'):
    spectrogram.loop_to_length(np.zeros(0), 4)


# --- decoding ---------------------------------------------------------------------------


def test_read_wav_resamples_and_rejects_bad_files(tmp_path):
  path = str(tmp_path / 'a.wav')
  written = write_wav(path, 1.0, rate=16000)
  wave = media.read_wav(path, 22050)
  assert wave.shape == (22050,) and wave.dtype == np.float32
  assert abs(np.abs(wave).max() - np.abs(written).max()) < 0.01
  empty = str(tmp_path / 'empty.wav')
  write_wav(empty, 0.0)
  with pytest.raises(media.BadInput, match='empty.wav: zero-length audio'):
    media.read_wav(empty, 22050)
  junk = tmp_path / 'junk.wav'
  junk.write_bytes(b'RIFF garbage')
  with pytest.raises(media.BadInput, match='junk.wav: unreadable audio file'):
    media.read_wav(str(junk), 22050)


def test_read_audio_track_channels_and_missing_track(tmp_path):
  path = str(tmp_path / 'v.mp4')
  write_video(path, 2.0, codec='libx264', audio_codec='aac')  # right channel = 0.5 x left
  first = media.read_audio_track(path, 16000, channel='first')
  mean = media.read_audio_track(path, 16000, channel='mean')
  assert abs(len(first) - 32000) < 2048  # the AAC encoder pads by up to two frames
  assert abs(np.abs(first[2000:30000]).max() - 0.3) < 0.02
  assert abs(np.abs(mean[2000:30000]).max() - 0.225) < 0.02
  silent = str(tmp_path / 's.avi')
  write_video(silent, 1.0, codec='mpeg4')
  assert not media.has_audio_track(silent) and media.has_audio_track(path)
  with pytest.raises(media.BadInput, match='s.avi: no audio stream'):
    media.read_audio_track(silent, 16000)


def test_frames_at_1fps_picks_the_first_frame_of_each_second(tmp_path):
  path = str(tmp_path / 'c.flv')
  write_video(path, 2.5, fps=30)
  rgb = media.frames_at_1fps(path, 3)
  assert rgb.shape == (3, 48, 64, 3) and rgb.dtype == np.uint8
  np.testing.assert_allclose(rgb[:, 24:, :, 0].mean(axis=(1, 2)), [gray(0), gray(30), gray(60)], atol=4)


def test_frames_at_1fps_in_a_segment_fills_short_segments_deterministically(tmp_path):
  path = str(tmp_path / 'e.mp4')
  write_video(path, 5.0, fps=10, codec='libx264', step=5)  # frame i has grey 5 i
  picked = lambda **kw: np.round(media.frames_at_1fps(path, 4, **kw)[:, 24:, :, 0].mean(axis=(1, 2)) / 5)
  np.testing.assert_allclose(picked(start=1, end=5), [10, 20, 30, 40], atol=1)
  short = picked(start=1, end=4, fill_seed=7)  # 3 seconds give 3 picks: one random extra frame
  assert np.all(np.diff(short) > 0) and 10 <= short.min() and short.max() <= 39
  assert {10, 20, 30} <= set(short.astype(int).tolist())
  np.testing.assert_array_equal(short, picked(start=1, end=4, fill_seed=7))
  with pytest.raises(media.TooShort, match=r'e.mp4: 3 frames at 1 fps; needs 4'):
    media.frames_at_1fps(path, 4, start=1, end=4, fill_seed=None)
  with pytest.raises(media.TooShort, match=r'e.mp4: 2 video frames in \[1, 1.2\) s; needs at least 4'):
    media.frames_at_1fps(path, 4, start=1, end=1.2)


def test_unreadable_video_names_the_file(tmp_path):
  junk = tmp_path / 'junk.flv'
  junk.write_bytes(os.urandom(2000))
  with pytest.raises(media.BadInput, match='junk.flv: unreadable media file'):
    media.frames_at_1fps(str(junk), 3)


# --- frame transforms -------------------------------------------------------------------


def test_random_resized_crop_box_follows_torchvision_bounds():
  rng = np.random.default_rng(0)
  boxes = np.array([frames.random_resized_crop_box(480, 360, rng) for _ in range(2000)])
  left, top, w, h = boxes.T
  assert np.all((left >= 0) & (top >= 0) & (left + w <= 480) & (top + h <= 360))
  area = w * h / (480 * 360)
  assert area.min() > 0.07 and area.max() <= 1.0 and area.mean() > 0.4  # E[U(0.08, 1)] = 0.54
  aspect = w / h
  assert aspect.min() > 0.7 and aspect.max() < 1.4
  # No box fits a 1000x10 image: the fallback is the central crop at the widest allowed ratio.
  assert frames.random_resized_crop_box(1000, 10, rng) == (493, 0, 13, 10)
  assert frames.random_resized_crop_box(30, 30, np.random.default_rng(5)) == \
      frames.random_resized_crop_box(30, 30, np.random.default_rng(5))


def jpeg(value=None, size=(80, 60), seed=0):
  rng = np.random.default_rng(seed)
  rgb = (np.full((size[1], size[0], 3), value, np.uint8) if value is not None
         else rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
  return media.encode_jpeg(rgb, quality=100)


def test_eval_frames_resize_and_imagenet_normalisation():
  out = frames.eval_frames([jpeg(128)] * 2, 16)
  assert out.shape == (2, 16, 16, 3) and out.dtype == np.float32
  expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(out[0, 8, 8], expected, atol=0.02)
  image = Image.open(__import__('io').BytesIO(jpeg(seed=3))).convert('RGB').resize((16, 16), Image.BILINEAR)
  np.testing.assert_allclose(frames.eval_frames([jpeg(seed=3)], 16)[0], frames.normalize(np.asarray(image)),
                             atol=1e-6)


def test_train_frames_per_frame_versus_per_clip():
  clip = [jpeg(seed=1)] * 3  # three identical frames
  per_clip = frames.train_frames(clip, 24, np.random.default_rng(0), per_frame=False)
  assert per_clip.shape == (3, 24, 24, 3)
  np.testing.assert_array_equal(per_clip[0], per_clip[1])
  np.testing.assert_array_equal(per_clip[0], per_clip[2])
  per_frame = frames.train_frames(clip, 24, np.random.default_rng(0), per_frame=True)
  assert not np.array_equal(per_frame[0], per_frame[1]) or not np.array_equal(per_frame[1], per_frame[2])
  again = frames.train_frames(clip, 24, np.random.default_rng(0), per_frame=True)
  np.testing.assert_array_equal(per_frame, again)


def test_bad_input_survives_pickling():
  import pickle
  e = pickle.loads(pickle.dumps(media.Excluded('/x/a.avi', 'no audio track')))
  assert isinstance(e, media.Excluded) and str(e) == '/x/a.avi: no audio track' and e.problem == 'no audio track'
