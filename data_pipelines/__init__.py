"""Input pipelines, separate from the model: each `load(config.data) -> Dataset`.

`PIPELINES` maps `config.data.name` to a loader.
"""

from data_pipelines import arrays, ave, cremad, synthetic, ucf101
from data_pipelines.common import Dataset

PIPELINES = {
    'synthetic': synthetic.load,   # embedded benchmark, generated from a seed
    'arrays': arrays.load,         # a user's .npz: one array per modality + label + split
    'cremad': cremad.load,         # prepared CREMA-D (python -m data_pipelines.prepare)
    'ave': ave.load,               # prepared AVE
    'ucf101': ucf101.load,         # prepared UCF101, classes with audio
}


def load(data_config) -> Dataset:
  if data_config.name not in PIPELINES:
    raise ValueError(f"unknown data.name '{data_config.name}'; expected one of {sorted(PIPELINES)}")
  return PIPELINES[data_config.name](data_config)
