"""UCF101 (51 classes with audio) with two ResNet-18 encoders, any method.

Data and schedule: docs/methods.md#ucf101, docs/methods.md#schedule-by-dataset.

Run (after `python -m data_pipelines.prepare --dataset=ucf101 ...`):
  python run.py --config=configs/ucf101.py:method=mlb,fold=1 --config.data.dir=/data/ucf_prepared --workdir=w
Variants: method=... (released hyperparameters, configs/lib/released.py); fold=1|2|3 (the
official split and the authors' seed 109/19/337); fusion=auto|late_linear|mid_mlp|...;
paper (the authors' runs: docs/methods.md#the-paper-preset); smoke.
Adam lr 1e-3, wd 1e-4, batch 32, 780 constant-lr warm-up steps (docs/methods.md#training-evaluation-and-reporting).
"""

from configs.lib import base, datasets, paper, released


def get_config(arg=None):
  args = base.parse_arg(arg, {'method': 'mlb', 'fold': '1', 'fusion': 'auto', 'paper': False,
                              'smoke': False})
  fold = int(args['fold'])
  if fold not in (1, 2, 3):
    raise ValueError(f"fold must be 1, 2 or 3 (the official UCF101 splits), got {args['fold']}")
  c = base.get_config()
  c.seed = paper.fold_seed(fold - 1)
  datasets.ucf101(c)
  c.data.fold = fold
  c.data.split_seed = c.seed          # the reference's validation carve-out uses the run seed
  # About 4,000 training clips of the 51 classes // 32 = ~125 steps per epoch.
  paper.resnet18_training(c, learning_rate=1e-3, warmup_steps=780, steps_per_epoch=125,
                          num_steps=125 * 40)
  c.model.fusion = args['fusion']
  released.apply(c, 'ucf101', args['method'])
  if args['paper']:   # the authors' stopping rule and their code's baselines (docs/methods.md#the-paper-preset)
    paper.authors_schedule(c, 'ucf101', args['method'], 125)
    paper.authors_code(c)
  if args['smoke']:
    paper.smoke(c, num_classes=51, frames=4)
  return c
