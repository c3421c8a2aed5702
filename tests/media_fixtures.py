"""Small media files in the real dataset layouts, written with soundfile and PyAV.

Video frame i is a flat grey image of value `gray(i)` (with a bright bar whose
width grows with i, so codecs see motion), so a test can tell which frames a
reader picked. Audio is a sine at `freq` Hz.
"""

import os

import av
import numpy as np
import soundfile as sf

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')


def gray(i: int, step: int = 2) -> int:
  return (i * step) % 250


def sine(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
  t = np.arange(int(round(seconds * rate))) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: str, seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
  """A 16-bit PCM mono WAV (CREMA-D's AudioWAV format); returns the samples written."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  wave = sine(seconds, rate, freq)
  sf.write(path, wave, rate, subtype='PCM_16')
  return wave


def write_video(path: str, seconds: float, *, fps: int = 30, size=(64, 48), codec: str = 'flv',
                audio_codec: str | None = None, audio_rate: int = 44100, freq: float = 440.0,
                step: int = 2, audio_seconds: float | None = None) -> None:
  """A video of round(seconds * fps) frames (frame i flat grey `gray(i, step)`),
  with a stereo sine track when `audio_codec` is given ('aac' for .mp4, 'mp3' for .avi/.flv),
  `audio_seconds` long (default `seconds`)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  w, h = size
  with av.open(path, 'w') as container:
    video = container.add_stream(codec, rate=fps)
    video.width, video.height, video.pix_fmt = w, h, 'yuv420p'
    audio = None
    if audio_codec:
      audio = container.add_stream(audio_codec, rate=audio_rate)
      audio.layout = 'stereo'
    for i in range(int(round(seconds * fps))):
      img = np.full((h, w, 3), gray(i, step), np.uint8)
      img[: h // 8, : (i % w)] = 255
      for packet in video.encode(av.VideoFrame.from_ndarray(img, format='rgb24')):
        container.mux(packet)
    for packet in video.encode():
      container.mux(packet)
    if audio is not None:
      wave = sine(seconds if audio_seconds is None else audio_seconds, audio_rate, freq)
      stereo = np.stack([wave, 0.5 * wave])
      size_ = audio.frame_size or 1024
      for s in range(0, stereo.shape[1], size_):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, s:s + size_]), format='fltp',
                                           layout='stereo')
        frame.sample_rate, frame.pts = audio_rate, s
        for packet in audio.encode(frame):
          container.mux(packet)
      for packet in audio.encode():
        container.mux(packet)


def write_cremad_clip(raw_dir: str, clip_id: str, seconds: float = 2.5, **video_kw) -> None:
  """AudioWAV/<id>.wav (16 kHz) and VideoFlash/<id>.flv (30 fps), as CREMA-D ships them."""
  write_wav(os.path.join(raw_dir, 'AudioWAV', clip_id + '.wav'), seconds)
  write_video(os.path.join(raw_dir, 'VideoFlash', clip_id + '.flv'), seconds, **video_kw)


def read_lines(name: str) -> list[str]:
  with open(os.path.join(DATA, name)) as f:
    return [line.rstrip('\n') for line in f if line.strip()]
