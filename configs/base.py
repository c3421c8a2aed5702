"""Defaults shared by every config. Other configs start from `get_config()` here.

Every field is read by the code; none has a hidden default elsewhere.
"""

import ml_collections


def parse_arg(arg: str | None, allowed: dict) -> dict:
  """Parses a config argument like 'method=mlb,smoke' against `allowed` defaults.

  `allowed` maps each key to its default; a bare word `k` sets boolean key k.
  An unknown key raises ValueError naming it.
  """
  out = dict(allowed)
  for part in filter(None, (arg or '').split(',')):
    key, _, value = part.partition('=')
    if key not in allowed:
      raise ValueError(f"unknown config argument '{key}' in '{arg}'; expected keys {sorted(allowed)}")
    out[key] = (value if value else True) if not isinstance(allowed[key], bool) else (value in ('', 'true', 'True', '1'))
  return out


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = 'mlb'          # joint | multiloss | mlb | ogm | ogm_ge | mslr | agm | pmr | mmcosine
  c.seed = 0                # parameter init, data order, dropout
  c.modalities = ()         # () = every modality the dataset has, in its order
  # Speed (none of these changes what one run computes, except dtype's rounding).
  c.num_seeds = 1           # S > 1: S replicas (seeds seed, seed+1, ...) trained by one vmapped step
                            # (mlb_jax/multiseed.py); each writes <workdir>/seed_<seed>/ as a single run
  c.dtype = 'float32'       # compute dtype of every encoder and fusion head: float32 | bfloat16
                            # (parameters, losses, softmax scores and k_i stay float32)
  c.compilation_cache_dir = ''  # persistent XLA compilation cache directory ('' = JAX's setting)
  c.profile_steps = ''      # 'A:B' writes a profiler trace of train steps A..B-1 to <workdir>/profile

  c.data = ml_collections.ConfigDict()
  c.data.name = 'synthetic'         # a key of data_pipelines.PIPELINES
  c.data.batch_size = 64
  c.data.eval_batch_size = 256

  c.model = ml_collections.ConfigDict()
  c.model.encoder = 'auto'          # default encoder: auto (by input rank) | mlp | conv | frames | resnet18 | conformer
  c.model.encoders = ml_collections.ConfigDict()  # per-modality override, e.g. {'video': 'frames'}
  c.model.fusion = 'late_linear'    # late_linear | mid_mlp | mmcosine | film | gated | transformer
  c.model.features = 128            # encoder output width D
  c.model.mlp_hidden = (256,)
  c.model.conv_widths = (16, 32, 64)
  c.model.mid_hidden = 64           # Mid-MLP inner width (authors: 64)
  c.model.dropout = 0.1             # Mid-MLP dropout (authors: 0.1)
  c.model.mmcosine_scale = 10.0     # MMCosine logit scale s (authors: 10)
  c.model.resnet_width = 64         # resnet18 encoder: stem width w, features 8w (64 = standard ResNet-18)
  c.model.conformer_bottleneck = 50  # conformer encoder: Conv1d(D_in -> 50, k=1) before the blocks (authors: 50)
  c.model.conformer_dim = 512       # Conformer width, also of the transformer fusion (authors: 512)
  c.model.conformer_layers = 5      # conformer encoder blocks (authors: 5)
  c.model.conformer_heads = 8       # attention heads (authors: 8)
  c.model.conformer_ff_mult = 4     # feed-forward expansion (authors: 4)
  c.model.conformer_kernel = 31     # depthwise conv kernel (authors: 31)
  c.model.conformer_dropout = 0.1   # every Conformer dropout (authors: 0.1)
  c.model.fusion_layers = 2         # transformer fusion: Conformer blocks over the tokens (authors: 2)

  # Eq. 3: fused * CE(fused) + sum_i w_i * CE(unimodal_i); w_i = per_modality[i] or unimodal.
  c.loss = ml_collections.ConfigDict()
  c.loss.fused = 1.0
  c.loss.unimodal = 1.0
  c.loss.per_modality = ml_collections.ConfigDict()

  c.balancing = ml_collections.ConfigDict()
  c.balancing.score = 'probability'   # probability (authors' code) | correct (Eq. 4 literally)
  c.balancing.apply_to = 'gradients'  # gradients (authors' code) | updates (Eq. 2's lr reading)
  c.balancing.alpha = 0.8
  c.balancing.beta_max = 2.0          # 2.0 = every released config of the authors
  # Baselines (METHODS.md §3); epochs are converted to steps by the loop.
  c.balancing.ogm = ml_collections.ConfigDict()
  c.balancing.ogm.alpha = 0.8         # ogm / ogm_ge
  c.balancing.ogm.start_epoch = 0
  c.balancing.ogm.end_epoch = 1500    # authors: always on
  c.balancing.ogm.scale = 'kernels'   # kernels (OGM paper) | all (authors' code: BatchNorm too)
  c.balancing.mslr = ml_collections.ConfigDict()
  c.balancing.mslr.initial = ml_collections.ConfigDict({'audio': 0.9, 'video': 1.1})
  c.balancing.mslr.keep_epochs = 5    # K, epochs of validation accuracy remembered
  c.balancing.agm = ml_collections.ConfigDict()
  c.balancing.agm.alpha = 1.5
  c.balancing.agm.clip = True         # the authors' conditional clip to global norm 1
  c.balancing.agm.reencode = 'both'   # both (AGM paper) | zeroed (authors' code: reuse the other's train features)
  c.balancing.pmr = ml_collections.ConfigDict()
  c.balancing.pmr.alpha = 1.75
  c.balancing.pmr.momentum = 0.0      # prototype momentum (authors: 0)
  c.balancing.pmr.start_epoch = 0
  c.balancing.pmr.end_epoch = 1500
  c.balancing.pmr.fraction = 0.1      # share of training batches for prototypes after epoch 0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adam'           # adam | sgd, both with coupled L2 weight decay
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-7              # the authors' Adam eps
  c.optimizer.momentum = 0.9          # sgd only
  c.optimizer.schedule = 'constant'   # constant | cosine_restarts (the authors')
  c.optimizer.warmup_steps = 0        # cosine_restarts: constant lr before the cosine
  c.optimizer.restart_period = 4      # cosine_restarts: T_0 in optimizer steps
  c.optimizer.restart_mult = 2        # cosine_restarts: T_mult

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.eval_every = 200            # validate (and checkpoint) every N steps and at the end
  c.train.select_head = 'fused'       # the best checkpoint maximises this head's val accuracy
  c.train.log_every = 50
  c.train.ece_bins = 15
  c.train.checkpoint_every_steps = 0  # also save checkpoints/last every N steps (0: only when validating);
                                      # a killed run resumes from there, SIGTERM saves at the next step
  c.train.skip_nonfinite = False      # a non-finite loss or gradient: False stops training naming the step
                                      # and head/modality; True keeps the previous state for that step
                                      # (counted in train/skipped) and goes on
  return c
