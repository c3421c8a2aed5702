"""AVE with two ResNet-18 encoders from scratch, any method.

Data and schedule: docs/methods.md#ave, docs/methods.md#schedule-by-dataset.

Run (after `python -m data_pipelines.prepare --dataset=ave ...`):
  python run.py --config=configs/ave.py:method=mlb,fold=0 --config.data.dir=/data/ave_prepared --workdir=w
  python run.py --config=configs/ave.py:method=agm --config.model.fusion=mid_mlp ...
Variants: method=<a key of mlb_jax.balancing.METHODS> (released
hyperparameters, configs/lib/released.py); fold=0|1|2 (AVE has fixed splits: the fold
only picks the authors' seed 109/19/337); fusion=auto|late_linear|mid_mlp|...;
paper (the authors' runs: docs/methods.md#the-paper-preset); smoke.
Adam lr 1e-3, wd 1e-4, batch 32, 1500 constant-lr warm-up steps
(docs/methods.md#training-evaluation-and-reporting).
"""

from configs.lib import base, datasets, paper, released


def get_config(arg=None):
  args = base.parse_arg(arg, {'method': 'mlb', 'fold': '0', 'fusion': 'auto', 'paper': False,
                              'smoke': False})
  c = base.get_config()
  c.seed = paper.fold_seed(int(args['fold']))
  datasets.ave(c)
  # 3312 unique training clips // 32 = 103 steps per epoch; 40 epochs shown here, the
  # authors train up to 1500 epochs with patience 50 and report the best-validation step.
  paper.resnet18_training(c, learning_rate=1e-3, warmup_steps=1500, steps_per_epoch=103,
                          num_steps=103 * 40)
  c.model.fusion = args['fusion']
  released.apply(c, 'ave', args['method'])
  if args['paper']:   # the authors' stopping rule and their code's baselines (docs/methods.md#the-paper-preset)
    paper.authors_schedule(c, 'ave', args['method'], 103)
    paper.authors_code(c)
  if args['smoke']:
    paper.smoke(c, num_classes=28, frames=4)
  return c

