"""The `paper` preset of the dataset configs (configs/lib/paper.py `authors_schedule`, `authors_code`):
every item it sets, per dataset and method, and that the defaults stay the papers' definitions."""

import pytest

from configs import ave, cremad_conformer, cremad_mlb, ucf101
from mlb_jax import build

CONFIGS = {'cremad': cremad_mlb, 'ave': ave, 'ucf101': ucf101, 'cremad_conformer': cremad_conformer}
SCHEDULE = {  # dataset: (steps per epoch of the config, max epochs, patience of a method that is not MLB)
    'cremad': (126, 1500, 100), 'ave': (103, 1500, 50), 'ucf101': (125, 1000, 100),
    'cremad_conformer': (505, 1500, 100)}


@pytest.mark.parametrize('dataset', sorted(CONFIGS))
def test_paper_preset_sets_the_authors_code_of_the_baselines(dataset):
  default, preset = CONFIGS[dataset].get_config('method=ogm'), CONFIGS[dataset].get_config('method=ogm,paper')
  assert (default.balancing.ogm.scale, default.balancing.agm.reencode, default.balancing.mlb.fusion_slices) == (
      'kernels', 'both', False)
  assert (preset.balancing.ogm.scale, preset.balancing.agm.reencode, preset.balancing.mlb.fusion_slices) == (
      'all', 'zeroed', True)
  build.validate(preset)


@pytest.mark.parametrize('dataset', sorted(CONFIGS))
def test_paper_preset_schedule_per_dataset_and_method(dataset):
  steps, epochs, patience = SCHEDULE[dataset]
  preset = CONFIGS[dataset].get_config('method=ogm,paper')
  assert (preset.train.eval_every_epochs, preset.train.patience, preset.train.num_steps) == (1, patience,
                                                                                              epochs * steps)
  default = CONFIGS[dataset].get_config('method=ogm')
  assert (default.train.eval_every_epochs, default.train.patience) == (0, 0)


def test_paper_preset_mlb_on_cremad_keeps_its_own_patience():
  assert cremad_mlb.get_config('method=mlb,paper').train.patience == 300
  assert cremad_mlb.get_config('authors_schedule').train.patience == 300
  assert cremad_mlb.get_config('method=agm,authors_schedule').train.patience == 100
  assert cremad_mlb.get_config('method=agm,authors_schedule').balancing.agm.reencode == 'both'  # schedule only


def test_paper_preset_smoke_builds_mlb_with_fusion_slices():
  config = cremad_mlb.get_config('method=mlb,paper,smoke')
  assert config.train.num_steps == 2   # smoke keeps its two steps
  exp = build.build(config)
  assert exp.training.method.scales_fusion_slices


@pytest.mark.slow  # the config builds with its smoke variant in tests/test_loop.py
def test_paper_preset_conformer_config_trains_two_steps(tmp_path):
  from mlb_jax import loop
  config = cremad_conformer.get_config('method=ogm,paper,smoke')
  assert (config.balancing.ogm.alpha, config.model.encoder, config.balancing.ogm.scale) == (1.25, 'conformer', 'all')
  [results] = loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert results['method'] == 'ogm'
  assert all(abs(d['loss']) < 1e6 for d in results['test'].values())
