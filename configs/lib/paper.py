"""The paper's ResNet-18 training setup shared by the real-dataset configs.

See docs/methods.md#resnet-18-encoders and docs/methods.md#training-evaluation-and-reporting.

Two ResNet-18 encoders from scratch, Late-Linear fusion by default, loss
CE(fused) + CE(audio) + CE(video) (probes for the single-loss baselines), Adam
(eps 1e-7, coupled L2 weight decay), constant learning rate for `warmup_steps`
updates then cosine annealing with warm restarts every 4 * 2^n steps.
"""

import ml_collections

from configs import synthetic as synthetic_config

SEEDS = (109, 19, 337)  # the authors' seed for --fold 0, 1, 2 (docs/methods.md#training-evaluation-and-reporting)


def resnet18_training(c: ml_collections.ConfigDict, *, learning_rate: float, warmup_steps: int,
                      steps_per_epoch: int, num_steps: int) -> ml_collections.ConfigDict:
  """Model, loss and optimizer of the authors' ResNet-18 runs; validation every epoch."""
  c.model.encoder = 'resnet18'
  c.model.resnet18.width = 64         # 512-d features
  c.model.fusion = 'auto'             # late_linear, or the method's own fusion (mmcosine)
  c.loss.fused = 1.0
  c.loss.unimodal = 1.0
  c.balancing.score = 'probability'
  c.balancing.apply_to = 'gradients'
  o = c.optimizer
  o.name = 'adam'
  o.learning_rate = learning_rate
  o.weight_decay = 1e-4
  o.b1, o.b2 = 0.9, 0.999
  o.eps = 1e-7
  o.schedule = 'cosine_restarts'
  o.warmup_steps = warmup_steps
  o.restart_period = 4
  o.restart_mult = 2
  c.train.num_steps = num_steps
  c.train.eval_every = steps_per_epoch
  c.train.log_every = 50
  return c


# The authors' stopping rule by dataset: validation at every epoch end, at most `epochs` epochs, stop after
# `patience` epochs without a better fused validation accuracy; their MLB configs on CREMA-D use 300.
AUTHORS_SCHEDULE = {
    'cremad': {'epochs': 1500, 'patience': 100, 'patience_mlb': 300},
    'ave': {'epochs': 1500, 'patience': 50},
    'ucf101': {'epochs': 1000, 'patience': 100},
}


def authors_schedule(c: ml_collections.ConfigDict, dataset: str, method: str,
                     steps_per_epoch: int) -> ml_collections.ConfigDict:
  """The authors' validation cadence and stopping rule for `method` on `dataset`
  (`train.eval_every_epochs = 1`, `train.patience`, `train.num_steps` = max epochs x steps_per_epoch)."""
  rule = AUTHORS_SCHEDULE[dataset]
  c.train.eval_every_epochs = 1
  c.train.patience = rule.get(f'patience_{method}', rule['patience'])
  c.train.num_steps = rule['epochs'] * steps_per_epoch
  return c


def authors_code(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The baselines as the MLB authors' code runs them where it departs from their papers
  (docs/methods.md#the-paper-preset): OGM scales every encoder parameter (BatchNorm too), AGM reuses
  the other modality's train features, MLB's k_i also scales each modality's fusion-input rows; PyTorch's
  default initialisation of the heads and fusion layers."""
  c.balancing.ogm.scale = 'all'
  c.balancing.agm.reencode = 'zeroed'
  c.balancing.mlb.fusion_slices = True
  c.model.torch_init = True
  return c


def fold_seed(fold: int) -> int:
  if fold not in range(len(SEEDS)):
    raise ValueError(f"fold must be 0, 1 or 2 (the authors' --fold), got {fold}")
  return SEEDS[fold]


def smoke(c: ml_collections.ConfigDict, *, num_classes: int, frames: int) -> ml_collections.ConfigDict:
  """Synthetic data in the dataset's layout at small size, width-8 ResNets, two steps (tests)."""
  c.data = synthetic_config.get_config('smoke').data
  c.data.num_classes = num_classes
  c.data.audio_shape = (32, 24)             # [F, T]
  c.data.video_shape = (frames, 32, 32, 3)  # [frames, H, W, RGB]
  c.data.batch_size = c.data.eval_batch_size = 8
  c.model.resnet18.width = 8
  c.optimizer.warmup_steps = 1
  c.train.num_steps = 2
  c.train.eval_every = 2
  c.train.log_every = 1
  c.balancing.umt.teacher_epochs = 1   # UMT's teacher runs: one epoch each
  return c
