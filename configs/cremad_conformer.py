"""CREMA-D with the paper's Conformer models on pretrained per-frame features, any method.

The features (wav2vec 2.0 audio frames, face embeddings per video frame) are packed into a .npz by
data_pipelines/extract_features.py (docs/methods.md#pretrained-features); each modality's encoder is
a 5-block Conformer (docs/methods.md#conformer-encoder) masking the zero padding, Late-Linear fusion.
The authors' Conformer runs use batch 8 and leave the optimizer at their CREMA-D default (Adam lr 1e-4,
weight decay 1e-4, 780 constant-rate warm-up steps, then cosine restarts; the lr and weight decay of the
paper's runs are unverified, docs/methods.md#schedule-by-dataset), with the released Conformer
hyperparameters of each method (configs/lib/released.py, docs/methods.md#released-hyperparameters).

Run:
  python run.py --config=configs/cremad_conformer.py:method=ogm,fold=0 \
      --config.data.path=cremad_features_fold0.npz --workdir=w
Variants (comma-separated):
  method=<a key of mlb_jax.balancing.METHODS>   the training method (default mlb)
  fold=0|1|2     the authors' --fold: seed 109/19/337 (the .npz holds that fold's VAVL partition)
  paper          the authors' stopping rule and their code's baselines (docs/methods.md#the-paper-preset)
  smoke          synthetic data, two tiny Conformers, two steps (tests)
Expected: the paper shows these runs as bar plots only; no number of ours is claimed here.
"""

from configs import synthetic as synthetic_config
from configs.lib import base, paper, released

STEPS_PER_EPOCH = 505  # VAVL fold 1: 4,043 training clips // 8


def get_config(arg=None):
  args = base.parse_arg(arg, {'method': 'mlb', 'fold': '0', 'paper': False, 'smoke': False})
  c = base.get_config()
  c.seed = paper.fold_seed(int(args['fold']))
  c.data.name = 'arrays'
  c.data.path = ''                 # the packed feature file of this fold (required)
  c.data.num_classes = 6
  c.data.batch_size = 8
  c.data.eval_batch_size = 32
  # The ResNet setup's loss, optimizer and schedule, 40 epochs by default; Conformer encoders.
  paper.resnet18_training(c, learning_rate=1e-4, warmup_steps=780, steps_per_epoch=STEPS_PER_EPOCH,
                          num_steps=40 * STEPS_PER_EPOCH)
  c.model.encoder = 'conformer'
  released.apply(c, 'cremad_conformer', args['method'])
  if args['paper']:
    paper.authors_schedule(c, 'cremad', args['method'], STEPS_PER_EPOCH)
    paper.authors_code(c)
  if args['smoke']:
    c.data = synthetic_config.get_config('smoke').data
    c.data.num_classes = 6
    c.data.video_shape = (3, 16, 16, 3)
    c.data.batch_size = c.data.eval_batch_size = 8
    c.model.encoders = {'video': 'frames'}   # the synthetic video is frames, the audio [T, D] rows
    c.model.conformer.update(bottleneck=8, dim=16, layers=1, heads=2, kernel=3)
    c.model.features = 16
    c.optimizer.warmup_steps = 1
    c.train.num_steps = 2
    c.train.eval_every = 2
    c.train.log_every = 1
    c.balancing.umt.teacher_epochs = 1
  return c
