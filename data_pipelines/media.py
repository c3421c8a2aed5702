"""Decoding the raw media files: WAV audio, container audio and video, JPEG frames.

Everything here reads or writes bytes; what is computed from the decoded
signals lives in `spectrogram.py` (audio) and `frames.py` (video at read time).
A file that cannot be used raises `BadInput`, which names the file and the
problem; `Excluded` marks a file left out by a dataset's selection rule
(e.g. UCF101 clips without an audio track) rather than broken.
"""

import io
import math
import os
import struct

import av
import numpy as np
import soundfile as sf
import soxr
from PIL import Image

JPEG_QUALITY = 90
_TIME_EPS = 1e-6  # frame times i / rate are floats: frame 30 at 30 fps must count as 1 s


class BadInput(ValueError):
  """A raw file that cannot be used; `str()` is '<path>: <problem>'."""

  def __init__(self, path: str, problem: str):
    super().__init__(f'{path}: {problem}')
    self.path = str(path)
    self.problem = problem

  def __reduce__(self):  # crosses process boundaries when a build runs in workers
    return type(self), (self.path, self.problem)


class TooShort(BadInput):
  """A video with fewer frames (or 1-fps frames) than a clip needs."""


class Excluded(BadInput):
  """A readable file that a dataset's selection rule leaves out."""


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
  """`rate` -> `target` Hz with soxr 'HQ', the resampler of `librosa.load(sr=...)`
  (librosa >= 0.10): the same samples as the reference's loading."""
  if rate == target:
    return np.asarray(wave, np.float32)
  return soxr.resample(np.asarray(wave, np.float32), rate, target, quality='HQ').astype(np.float32)


def _check_wav_length(path: str) -> None:
  """Raises BadInput when a RIFF/WAVE file holds fewer sample bytes than its header
  declares (libsndfile reads a truncated file silently)."""
  with open(path, 'rb') as f:
    if f.read(12)[8:12] != b'WAVE':
      return
    while len(chunk := f.read(8)) == 8:
      size = struct.unpack('<I', chunk[4:])[0]
      if chunk[:4] == b'data':
        held = os.fstat(f.fileno()).st_size - f.tell()
        if size not in (0, 0xFFFFFFFF) and held < size:  # 0 / -1: size left open by a streaming writer
          raise BadInput(path, f'truncated: the header declares {size} bytes of samples, the file holds {held}')
        return
      f.seek(size + size % 2, os.SEEK_CUR)


def read_wav(path: str, sample_rate: int) -> np.ndarray:
  """A WAV file as float32 mono at `sample_rate` (channels averaged, as librosa.load).

  Raises:
    BadInput: unreadable, corrupt, truncated or empty file.
  """
  try:
    wave, rate = sf.read(path, dtype='float32', always_2d=True)
  except (sf.LibsndfileError, RuntimeError, OSError) as e:
    raise BadInput(path, f'unreadable audio file ({e})') from e
  _check_wav_length(path)
  if wave.shape[0] == 0:
    raise BadInput(path, 'zero-length audio (0 samples)')
  return resample(wave.mean(axis=1), rate, sample_rate)


def _open(path: str):
  try:
    return av.open(path)
  except (av.error.FFmpegError, OSError) as e:
    raise BadInput(path, f'unreadable media file ({e})') from e


def has_audio_track(path: str) -> bool:
  """Whether the container has an audio stream (opens the header only)."""
  with _open(path) as container:
    return len(container.streams.audio) > 0


def read_audio_track(path: str, sample_rate: int, *, channel: str = 'mean') -> np.ndarray:
  """The audio stream of a video container as float32 mono at `sample_rate`.

  Args:
    path: .mp4 / .avi / .flv file.
    sample_rate: output rate in Hz (`resample` from the track's own rate).
    channel: 'mean' averages the channels (librosa.load); 'first' keeps
      channel 0 (moviepy's first channel, as the UCF101 reference).

  Returns:
    float32 [N]; N may be 0 (an empty track), which the caller judges.

  Raises:
    BadInput: unreadable file or no audio stream.
  """
  with _open(path) as container:
    if not container.streams.audio:
      raise BadInput(path, 'no audio stream')
    stream = container.streams.audio[0]
    rate = stream.rate
    # Planar float at the track's own rate and layout: only the sample format changes here.
    resampler = av.AudioResampler(format='fltp', layout=stream.layout.name, rate=rate)
    chunks = []
    try:
      for frame in container.decode(stream):
        chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
      chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    except av.error.FFmpegError as e:
      raise BadInput(path, f'corrupt audio stream ({e})') from e
  if not chunks:
    return np.zeros(0, np.float32)
  wave = np.concatenate(chunks, axis=1)  # [channels, samples]
  return resample(wave.mean(axis=0) if channel == 'mean' else wave[0], rate, sample_rate)


def frames_at_1fps(path: str, num_frames: int, *, start: float = 0.0, end: float | None = None,
                   fill_seed: int | None = 0, end_tolerance: float | None = None) -> np.ndarray:
  """`num_frames` RGB frames sampled at 1 fps from the segment [start, end) s.

  The reference extracts the first frame of every second and loads the first
  `num_frames` in time order (docs/methods.md#crema-d, #ave). When the segment is too
  short to give that many, it adds random frames of the segment; here they are
  drawn from a generator seeded with `fill_seed`, so a rebuild gives the same
  frames, and the result is put back in time order. `fill_seed=None` adds
  none (UCF101: the reference drops such clips).

  With `end` and `end_tolerance`, the video must last until `end` to within
  max(end_tolerance, one frame interval) seconds, by the duration its header
  declares and, when it decodes to its last frame first, by the frames
  decoded: a clip shorter than its segment is refused, not filled from the
  frames it has.

  Returns:
    uint8 [num_frames, H, W, 3].

  Raises:
    BadInput: unreadable file or no video stream.
    TooShort: fewer than `num_frames` decodable frames in the segment, (without
      fill) fewer than `num_frames` 1-fps frames, or (`end_tolerance`) a video
      that ends before the segment does.
  """
  segment, picked, next_second, decoded = [], [], start, 0
  with _open(path) as container:
    if not container.streams.video:
      raise BadInput(path, 'no video stream')
    stream = container.streams.video[0]
    if not stream.average_rate:
      raise BadInput(path, 'video stream has no frame rate')
    rate = float(stream.average_rate)
    reach = None if end is None or end_tolerance is None else end - max(end_tolerance, 1 / rate)
    declared = _declared_seconds(container, stream)
    if reach is not None and declared is not None and declared < reach:
      raise TooShort(path, f'the video lasts {declared:.2f} s, shorter than the segment [{start:g}, {end:g}) s')
    try:
      for i, frame in enumerate(container.decode(stream)):
        # Time from the frame count, as OpenCV-based extraction counts frames: AVI
        # timestamps of B-frame codecs come back out of order.
        t, decoded = i / rate, i + 1
        if t < start - _TIME_EPS:
          continue
        if end is not None and t >= end - _TIME_EPS:
          break
        segment.append(frame)
        if t >= next_second - _TIME_EPS:
          picked.append(len(segment) - 1)
          next_second = start + math.floor(t - start + _TIME_EPS) + 1
          if len(picked) == num_frames:
            break
      else:  # the stream ended
        if reach is not None and decoded / rate < reach:
          raise TooShort(path, f'the video lasts {decoded / rate:.2f} s, shorter than the segment '
                               f'[{start:g}, {end:g}) s')
    except av.error.FFmpegError as e:
      raise BadInput(path, f'corrupt video stream after {decoded} frames ({e})') from e
    if len(picked) < num_frames:
      _check_complete(path, declared, decoded / rate, end)
      if fill_seed is None:
        raise TooShort(path, f'{len(picked)} frames at 1 fps; needs {num_frames}')
      if len(segment) < num_frames:
        where = f' in [{start:g}, {end:g}) s' if end is not None else ''
        raise TooShort(path, f'{len(segment)} video frames{where}; needs at least {num_frames}')
      rest = np.setdiff1d(np.arange(len(segment)), picked)
      extra = np.random.default_rng(fill_seed).choice(rest, num_frames - len(picked), replace=False)
      picked = sorted(picked + extra.tolist())
    return np.stack([segment[i].to_ndarray(format='rgb24') for i in picked])


def _declared_seconds(container, stream) -> float | None:
  """The duration the header declares for `stream` (else for the container), if any."""
  if stream.duration is not None:
    return float(stream.duration * stream.time_base)
  if container.duration is not None:
    return container.duration / av.time_base
  return None


def _check_complete(path: str, declared: float | None, decoded_seconds: float, end: float | None) -> None:
  """Raises BadInput when decoding stopped well before the duration the header
  declares (a truncated file decodes without error, just shorter)."""
  if declared is None:
    return
  expected = min(declared, end) if end is not None else declared
  if expected - decoded_seconds > max(0.5, 0.1 * expected):
    raise BadInput(path, f'truncated: the video decodes to {decoded_seconds:.2f} s but the header '
                         f'declares {declared:.2f} s')


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """uint8 [H, W, 3] -> JPEG bytes."""
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def decode_jpeg(data: bytes) -> Image.Image:
  """JPEG bytes -> an RGB PIL image (decoded lazily by PIL on first use)."""
  return Image.open(io.BytesIO(data)).convert('RGB')
