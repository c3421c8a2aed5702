"""Data sections of the real-dataset configs: `cremad(c)`, `ave(c)`, `ucf101(c)` fill `c.data`.

The numbers follow the authors' preprocessing (docs/methods.md#data,
docs/methods.md#training-evaluation-and-reporting). `c.data.dir`
is the `--out_dir` of `python -m data_pipelines.prepare`, which decodes the raw
dataset once into TFDS ArrayRecord files; the pipelines (data_pipelines/cremad.py,
ave.py, ucf101.py) read them with Grain and decode the JPEG frames at read time.
"""

import ml_collections


def _common(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  c.data = ml_collections.ConfigDict()
  c.data.name = name
  c.data.dir = ''                 # prepared dataset directory (required): prepare's --out_dir
  c.data.batch_size = 32
  c.data.eval_batch_size = 32
  # Grain worker processes decoding the JPEGs. 0 decodes in the training process with Grain's
  # 16 reading threads, the fastest on 2 CPU cores (benchmarks/input_pipeline.py: 97 samples/s
  # against 63 with 2 processes); processes help where threads run out of cores.
  c.data.num_workers = 0
  return c


def cremad(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """CREMA-D: 6 emotions; audio [257, 188] log-STFT, video 3 frames at 1 fps."""
  _common(c, 'cremad')
  c.data.num_classes = 6
  c.data.audio_shape = (257, 188)
  c.data.video_shape = (3, 224, 224, 3)   # frames, S, S, RGB: frames resized/cropped to S
  c.data.split = 'vavl'           # vavl (the authors') | ogm | kfold | json
  c.data.fold = 1                 # vavl/json: fold key "1".."5" (authors' --fold f = f + 1); kfold: 1..num_folds
  c.data.num_folds = 5            # kfold: actor-disjoint folds generated from the actor ids
  c.data.split_file = ''          # json: {"train","val","test"} lists, or folds of them keyed "1".."K"
  c.data.val_fraction = 0.1       # ogm: training clips held out for validation
  c.data.split_seed = 0           # ogm hold-out and kfold actor assignment
  return c


def ave(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """AVE: 28 events; audio [257, 1004] log-PSD, video 4 frames at 1 fps; predefined splits."""
  _common(c, 'ave')
  c.data.num_classes = 28
  c.data.audio_shape = (257, 1004)
  c.data.video_shape = (4, 224, 224, 3)
  return c


def ucf101(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """UCF101 restricted to the 51 classes with audio; audio [257, 136], video 4 frames."""
  _common(c, 'ucf101')
  c.data.num_classes = 51
  c.data.audio_shape = (257, 136)
  c.data.video_shape = (4, 224, 224, 3)
  c.data.fold = 1                 # official split 1-3 (ucfTrainTestlist/trainlist0k, testlist0k)
  c.data.val_fraction = 0.1       # share of each class's <Class>_gXX groups held out for validation
  c.data.split_seed = 0           # the reference uses the run seed (109, 19, 337 for folds 1-3)
  return c
