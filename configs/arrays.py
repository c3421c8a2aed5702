"""Any method on your own features: a .npz with one array per modality, label and split.

Run:
  python run.py --config=configs/arrays.py:method=mlb --config.data.path=my.npz --workdir=w
Modality names (the .npz keys other than label/split) and the number of classes
are read from the file; see data_pipelines/arrays.py for the layout.
Variants: method=<any key of mlb_jax.balancing.METHODS>, smoke.
"""

from configs.lib import base


def get_config(arg=None):
  args = base.parse_arg(arg, {'method': 'mlb', 'smoke': False})
  c = base.get_config()
  c.method = args['method']
  c.data.name = 'arrays'
  c.data.path = ''             # the .npz file (required)
  c.data.num_classes = 0       # 0 = max(label) + 1
  c.model.encoder = 'auto'     # mlp for vectors, conv for [H, W(, C)], frames for [T, H, W, C]
  c.train.num_steps = 2000
  c.train.eval_every = 250
  if args['smoke']:
    c.data.batch_size = c.data.eval_batch_size = 8
    c.model.features = 16
    c.model.mlp.hidden = (32,)
    c.model.conv.widths = (4, 8)
    c.train.num_steps = 2
    c.train.eval_every = 2
    c.train.log_every = 1
    c.balancing.umt.teacher_epochs = 1   # UMT's teacher runs: one epoch each
  return c
