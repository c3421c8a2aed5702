"""CREMA-D with two ResNet-18 encoders trained from scratch, Late-Linear fusion, MLB.

The authors' CREMA-D ResNet setting (docs/methods.md#mlb-released-values,
docs/methods.md#resnet-18-encoders, docs/methods.md#training-evaluation-and-reporting): Adam lr 1e-4,
weight decay 1e-4 (coupled L2), eps 1e-7, batch 32; the constant-then-cosine-
restarts schedule with 780 warm-up steps (T_0 = 4 steps, T_mult = 2);
MLB alpha 0.8, beta_max 2, k_i on the raw gradients; loss CE(fused) + CE(audio)
+ CE(video); validation every 126 steps (one epoch of fold 1; exactly every epoch end
with authors_schedule), test metrics of the best-validation step.

Run (after `python -m data_pipelines.prepare`, see configs/lib/datasets.py):
  python run.py --config=configs/cremad_mlb.py --config.data.dir=/data/cremad_prepared --workdir=w
  python run.py --config=configs/cremad_mlb.py:fold=1,method=multiloss --config.data.dir=... --workdir=w
  python run.py --config=configs/cremad_mlb.py --config.model.fusion=film ...   # any fusion
Variants (comma-separated):
  method=joint|multiloss|mlb|...   the training method (default mlb)
  fold=0|1|2                       the authors' --fold: VAVL partition fold + 1 and seed 109/19/337
  authors_schedule                 the authors' stopping rule: validation at every epoch end
                                   (train.eval_every_epochs = 1), up to 1500 epochs, early stop after
                                   300 (MLB) or 100 (the other methods) validations without a better
                                   fused val accuracy (train.patience); the default is the fixed 16,380
                                   steps below
  paper                            the authors' runs exactly as far as the library can: authors_schedule
                                   plus the baselines as their code computes them (OGM scale='all', AGM
                                   reencode='zeroed', MLB fusion_slices); docs/methods.md#the-paper-preset
  smoke                            synthetic CREMA-D-like data, width-8 ResNets, two steps (tests)
Expected: the paper gives CREMA-D ResNet-18 results only as bar plots (Fig. 3,
mean +- std over the three folds), with MLB the most accurate method; no
number of ours is claimed here.
"""

from configs.lib import base, datasets, paper, released


STEPS_PER_EPOCH = 126  # VAVL fold 1 (the authors' --fold 0): 4,043 training clips // 32; folds 2 and 3 have 125


def get_config(arg=None):
  args = base.parse_arg(arg, {'method': 'mlb', 'fold': '0', 'authors_schedule': False, 'paper': False,
                              'smoke': False})
  c = base.get_config()
  fold = int(args['fold'])
  c.seed = paper.fold_seed(fold)

  datasets.cremad(c)
  c.data.fold = fold + 1              # VAVL partition key "1".."3"
  c.data.batch_size = 32

  # Two ResNet-18 (audio [257, 188] -> 1-channel stem; video 3 x 224 x 224 x 3), Late-Linear.
  # The authors train up to 1500 epochs with early stopping on validation
  # accuracy (patience 300 epochs). By default we train a fixed 16380 = 4 (2^12 - 1)
  # steps (~130 epochs of 126 steps on fold 0), which ends exactly where the
  # schedule restarts, validating every 126 steps (train.eval_every); the best-
  # validation checkpoint is reported.
  paper.resnet18_training(c, learning_rate=1e-4, warmup_steps=780, steps_per_epoch=STEPS_PER_EPOCH,
                          num_steps=16380)
  if args['authors_schedule'] or args['paper']:
    # Validation after every epoch's last step, whatever the fold's steps per epoch (eval_every is
    # then unused), and the authors' stopping rule. num_steps caps training at 1500 epochs of
    # STEPS_PER_EPOCH steps (1512 epochs on folds 2 and 3); the early stop usually ends it first.
    paper.authors_schedule(c, 'cremad', args['method'], STEPS_PER_EPOCH)
  if args['paper']:
    paper.authors_code(c)
  c.balancing.mlb.alpha = 0.8
  c.balancing.mlb.beta_max = 2.0
  released.apply(c, 'cremad', args['method'])   # the method's released CREMA-D hyperparameters

  if args['smoke']:
    paper.smoke(c, num_classes=6, frames=3)
  return c
