"""Fixed-length waveforms and the authors' log spectrograms (docs/methods.md#data).

  CREMA-D  22.05 kHz, looped to 3 s, log |STFT| (n_fft 512, hop 353)   -> [257, 188]
  AVE      16 kHz event segment looped to 10 s, log scipy PSD spectrogram
           (nperseg 512, noverlap 353: hop 159, Tukey(0.25))          -> [257, 1004]
  UCF101   16 kHz, first 3 s, log |STFT| (n_fft 512, hop 353)         -> [257, 136]

None of them is normalised afterwards: the reference leaves `norm_type` unset.
"""

import numpy as np
from scipy import signal

LOG_EPS = 1e-7  # log(|S| + 1e-7), as the reference


def loop_to_length(wave: np.ndarray, length: int) -> np.ndarray:
  """Repeats `wave` end to end and cuts it to `length` samples.

  The reference tiles CREMA-D clips 3 times and AVE segments to 10 s, then
  truncates: short clips are looped, never zero-padded. This equals that
  whenever the tiles suffice and also covers clips shorter than length / 3.
  """
  if len(wave) == 0:
    raise ValueError('cannot loop an empty waveform')
  return np.resize(wave, length)


def pad_or_cut(wave: np.ndarray, length: int) -> np.ndarray:
  """The first `length` samples, zero-padded at the end when shorter."""
  out = np.zeros(length, np.float32)
  out[:min(length, len(wave))] = wave[:length]
  return out


def log_stft(wave: np.ndarray, n_fft: int = 512, hop: int = 353) -> np.ndarray:
  """log(|STFT| + 1e-7) of `wave`, as `librosa.stft(n_fft, hop_length)` computes it.

  librosa's defaults: centred frames (the signal zero-padded by n_fft // 2 on
  both sides, librosa >= 0.10), a periodic Hann window of length n_fft, no
  scaling. Values are clipped to [-1, 1] first, as the reference does.

  Args:
    wave: float [N].
    n_fft: FFT size; 1 + n_fft // 2 frequency rows.
    hop: hop length in samples.

  Returns:
    float32 [1 + n_fft // 2, 1 + N // hop].
  """
  wave = np.clip(np.asarray(wave, np.float32), -1.0, 1.0)
  padded = np.pad(wave, n_fft // 2)
  count = 1 + len(wave) // hop
  frames = np.lib.stride_tricks.as_strided(
      padded, shape=(count, n_fft), strides=(hop * padded.strides[0], padded.strides[0]))
  window = signal.get_window('hann', n_fft, fftbins=True).astype(np.float32)
  magnitude = np.abs(np.fft.rfft(frames * window, axis=1)).T
  return np.log(magnitude + LOG_EPS).astype(np.float32)


def log_psd(wave: np.ndarray, sample_rate: int = 16000, nperseg: int = 512,
            noverlap: int = 353) -> np.ndarray:
  """log(|PSD| + 1e-7) from `scipy.signal.spectrogram` with its defaults (AVE, docs/methods.md#ave).

  Tukey(0.25) window, constant detrend, one-sided density scaling. Values are
  clipped to [-1, 1] first.

  Returns:
    float32 [1 + nperseg // 2, 1 + (N - nperseg) // (nperseg - noverlap)].
  """
  wave = np.clip(np.asarray(wave, np.float32), -1.0, 1.0)
  _, _, psd = signal.spectrogram(wave, fs=sample_rate, nperseg=nperseg, noverlap=noverlap)
  return np.log(np.abs(psd) + LOG_EPS).astype(np.float32)
