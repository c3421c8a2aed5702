"""Input pipelines, separate from the model: each `load(config.data) -> Dataset`.

`PIPELINES` maps `config.data.name` to the module whose `load` reads it. A
module is imported only when its dataset is loaded: the in-memory pipelines
(synthetic, arrays) never import TensorFlow; the prepared datasets read TFDS
ArrayRecord files.
"""

import importlib

from data_pipelines.common import Dataset

PIPELINES = {
    'synthetic': 'data_pipelines.synthetic',   # embedded benchmark, generated from a seed
    'arrays': 'data_pipelines.arrays',         # a user's .npz: one array per modality + label + split
    'cremad': 'data_pipelines.cremad',         # prepared CREMA-D (python -m data_pipelines.prepare)
    'ave': 'data_pipelines.ave',               # prepared AVE
    'ucf101': 'data_pipelines.ucf101',         # prepared UCF101, classes with audio
}


def load(data_config) -> Dataset:
  if data_config.name not in PIPELINES:
    raise ValueError(f"unknown data.name '{data_config.name}'; expected one of {sorted(PIPELINES)}")
  return importlib.import_module(PIPELINES[data_config.name]).load(data_config)
