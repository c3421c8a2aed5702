"""Data sections of the real-dataset configs: `cremad(c)`, `ave(c)`, `ucf101(c)` fill `c.data`.

The numbers follow the authors' preprocessing (METHODS.md §5-6). `c.data.dir`
is the prepared dataset directory (see `python -m data_pipelines.prepare`).
"""

import ml_collections


def cremad(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """CREMA-D: 6 emotions; audio [257, 188] log-STFT, video 3 frames at 1 fps."""
  c.data = ml_collections.ConfigDict()
  c.data.name = 'cremad'
  c.data.dir = ''                 # prepared dataset directory (required)
  c.data.num_classes = 6
  c.data.audio_shape = (257, 188)
  c.data.video_shape = (3, 224, 224, 3)
  c.data.batch_size = 32
  c.data.eval_batch_size = 32
  return c


def ave(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """AVE: 28 events; audio [257, 1004] log-PSD, video 4 frames at 1 fps."""
  c.data = ml_collections.ConfigDict()
  c.data.name = 'ave'
  c.data.dir = ''
  c.data.num_classes = 28
  c.data.audio_shape = (257, 1004)
  c.data.video_shape = (4, 224, 224, 3)
  c.data.batch_size = 32
  c.data.eval_batch_size = 32
  return c


def ucf101(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """UCF101 restricted to the 51 classes with audio; audio [257, 136], video 4 frames."""
  c.data = ml_collections.ConfigDict()
  c.data.name = 'ucf101'
  c.data.dir = ''
  c.data.num_classes = 51
  c.data.audio_shape = (257, 136)
  c.data.video_shape = (4, 224, 224, 3)
  c.data.batch_size = 32
  c.data.eval_batch_size = 32
  return c
