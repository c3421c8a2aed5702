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
  c.method = 'mlb'          # a key of mlb_jax.balancing.METHODS (docs/methods.md)
  c.seed = 0                # parameter init, data order, dropout
  c.modalities = ()         # () = every modality the dataset has, in its order
  # Speed (none of these changes what one run computes, except dtype's rounding).
  c.num_seeds = 1           # S > 1: S replicas (seeds seed, seed+1, ...) trained by one vmapped step
                            # (mlb_jax/loop.py); each writes <workdir>/seed_<seed>/ as a single run
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
  c.model.fusion = 'auto'           # auto (the method's own fusion, else late_linear) | late_linear | mid_mlp
                                    # | mmcosine | film | gated | transformer | mmtm
  c.model.features = 128            # output width D of the mlp, conv and frames encoders
  c.model.torch_init = False        # PyTorch's default Linear init U(+-1/sqrt(fan_in)) for the unimodal heads and
                                    # the mid_mlp layers, late_linear / mid_mlp input rows per modality slice (the
                                    # authors' fc_i_lin); default Flax's for the heads and mid_mlp
  c.model.kernels = 'auto'          # auto: the CPU formulations of models/cpu_kernels.py and XLA:CPU options
                                    # on a CPU backend, plain XLA ops elsewhere | plain | cpu
  # One section per encoder ...
  c.model.mlp = ml_collections.ConfigDict()
  c.model.mlp.hidden = (256,)       # hidden widths before the D-wide output
  c.model.conv = ml_collections.ConfigDict()
  c.model.conv.widths = (16, 32, 64)  # conv and frames encoders: channels per stride-2 block
  c.model.resnet18 = ml_collections.ConfigDict()
  c.model.resnet18.width = 64       # stem width w; features 8w (64 = the standard ResNet-18, 512-d)
  c.model.conformer = ml_collections.ConfigDict()
  c.model.conformer.bottleneck = 50   # Conv1d(D_in -> 50, k=1) before the blocks (authors: 50)
  c.model.conformer.dim = 512       # Conformer width (authors: 512)
  c.model.conformer.layers = 5      # blocks (authors: 5)
  c.model.conformer.heads = 8       # attention heads (authors: 8)
  c.model.conformer.ff_mult = 4     # feed-forward expansion (authors: 4)
  c.model.conformer.kernel = 31     # depthwise conv kernel (authors: 31)
  c.model.conformer.dropout = 0.1   # every Conformer dropout (authors: 0.1)
  # ... and per fusion head with settings (late_linear, film and gated have none).
  c.model.mid_mlp = ml_collections.ConfigDict()
  c.model.mid_mlp.hidden = 64       # inner width (authors: 64)
  c.model.mid_mlp.dropout = 0.1     # (authors: 0.1)
  c.model.mmcosine = ml_collections.ConfigDict()
  c.model.mmcosine.scale = 10.0     # logit scale s (authors: 10)
  c.model.mmtm = ml_collections.ConfigDict()
  c.model.mmtm.ratio = 4            # squeeze width int(2 * sum_m D_m / ratio) (Greedy's original: 4)
  c.model.transformer = ml_collections.ConfigDict()
  c.model.transformer.dim = 512     # token width, Conformer blocks over [CLS, tokens of every modality]
  c.model.transformer.layers = 2    # (authors: 2)
  c.model.transformer.heads = 8
  c.model.transformer.ff_mult = 4
  c.model.transformer.kernel = 31
  c.model.transformer.dropout = 0.1

  # Eq. 3: fused * CE(fused) + sum_i w_i * CE(unimodal_i); w_i = per_modality[i] or unimodal.
  c.loss = ml_collections.ConfigDict()
  c.loss.fused = 1.0
  c.loss.unimodal = 1.0
  c.loss.per_modality = ml_collections.ConfigDict()

  # Balancing: two settings shared by every method with per-modality scales k_i, then one
  # section per method (docs/methods.md); epochs are converted to steps by the build.
  c.balancing = ml_collections.ConfigDict()
  c.balancing.score = 'probability'   # s_i: probability (authors' code) | correct (Eq. 4 literally)
  c.balancing.apply_to = 'gradients'  # where k_i acts: gradients (authors' code) | updates (Eq. 2's lr reading)
  c.balancing.mlb = ml_collections.ConfigDict()
  c.balancing.mlb.alpha = 0.8         # tanh steepness of Eq. 7
  c.balancing.mlb.beta_max = 2.0      # largest acceleration (Eq. 6); 2.0 = every released config of the authors
  c.balancing.mlb.fusion_slices = False  # k_i also scales modality i's rows of the fusion input layer (late_linear,
                                         # mid_mlp; gated: the gate / value projection; mmcosine), as the authors' code
  c.balancing.ogm = ml_collections.ConfigDict()
  c.balancing.ogm.alpha = 0.8         # ogm / ogm_ge
  c.balancing.ogm.start_epoch = 0     # modulation for epochs start_epoch <= e <= end_epoch
  c.balancing.ogm.end_epoch = 1500    # authors: always on
  c.balancing.ogm.scale = 'kernels'   # kernels (OGM paper) | all (authors' code: BatchNorm too)
  c.balancing.mslr = ml_collections.ConfigDict()
  c.balancing.mslr.initial = ml_collections.ConfigDict({'audio': 0.9, 'video': 1.1})  # ilr_i (missing: 1)
  c.balancing.mslr.keep_epochs = 5    # K, epochs of validation accuracy remembered
  c.balancing.agm = ml_collections.ConfigDict()
  c.balancing.agm.alpha = 1.5
  c.balancing.agm.clip = True         # the authors' conditional clip to global norm 1
  c.balancing.agm.reencode = 'both'   # both (AGM paper) | zeroed (authors' code: reuse the other's train features)
  c.balancing.pmr = ml_collections.ConfigDict()
  c.balancing.pmr.alpha = 1.75
  c.balancing.pmr.momentum = 0.0      # prototype momentum (authors: 0)
  c.balancing.pmr.start_epoch = 0     # prototype terms for epochs start_epoch <= e <= end_epoch
  c.balancing.pmr.end_epoch = 1500
  c.balancing.pmr.fraction = 0.1      # share of training batches for prototypes after epoch 0
  c.balancing.mmpareto = ml_collections.ConfigDict()
  c.balancing.mmpareto.gamma = 1.5        # boost of the encoders' combined gradient (authors: 1.5, hard-coded)
  c.balancing.mmpareto.start_epoch = 0    # Pareto combination for epochs start_epoch <= e <= end_epoch,
  c.balancing.mmpareto.end_epoch = 1500   # plain sum (Multi-Loss) outside; authors: always on
  c.balancing.mbsd = ml_collections.ConfigDict()
  c.balancing.mbsd.start_epoch = 0    # MBSD terms for epochs start_epoch <= e <= end_epoch
  c.balancing.mbsd.end_epoch = 1500   # always on (BalanceBenchmark: 0-80)
  c.balancing.mbsd.kl = 'toolkit'     # toolkit: pw (log pw - ps), BalanceBenchmark's kl_div on a probability
                                      # | log: pw (log pw - log ps), a true KL term
  c.balancing.mbsd.distance = 'auto'  # auto (logits for 2 modalities, probabilities for 3+, as BalanceBenchmark)
                                      # | logits | probabilities
  c.balancing.cml = ml_collections.ConfigDict()
  c.balancing.cml.lam = 0.1           # lambda of the confidence hinge (BalanceBenchmark: 0.1)
  c.balancing.cml.start_epoch = 0     # removal terms for epochs start_epoch <= e <= end_epoch
  c.balancing.cml.end_epoch = 1500    # always on
  c.balancing.cml.order_seed = 0      # key of the per-epoch removal order (fold_in(key, epoch))
  c.balancing.umt = ml_collections.ConfigDict()
  c.balancing.umt.lam = 10.0          # weight of the feature MSE to the teachers (BalanceBenchmark's scaling: 10)
  c.balancing.umt.teacher_epochs = 30  # length of each unimodal teacher run (BalanceBenchmark: 30)
  c.balancing.umt.start_epoch = 0     # distillation for epochs start_epoch <= e <= end_epoch
  c.balancing.umt.end_epoch = 1500    # always on (BalanceBenchmark: 0-80)
  c.balancing.opm = ml_collections.ConfigDict()
  c.balancing.opm.q_base = 0.5        # base drop probability (authors' train_opm.sh: 0.5; their config and BalanceBenchmark: 0.4)
  c.balancing.opm.lam = 0.5           # lambda: growth of q with the score lead (BalanceBenchmark's alpha)
  c.balancing.opm.p_exe = 0.7         # probability that a step drops at all
  c.balancing.opm.warmup_epochs = 5   # no drop for epochs e <= warmup_epochs (authors: 5; -1: from epoch 0, BalanceBenchmark)
  c.balancing.gblending = ml_collections.ConfigDict()
  c.balancing.gblending.super_epoch = 10  # epochs per weight window (BalanceBenchmark: 10)
  c.balancing.lfm = ml_collections.ConfigDict()
  c.balancing.lfm.schedule = 'learnable'  # learnable (the authors' per-epoch hypergradient step on k1) | fitted
                                          # (their polynomial k0 of the epoch, k1 = 1 - k0)
  c.balancing.lfm.lr_alpha = 1e-4         # eta, the step of the k1 update (authors and BalanceBenchmark: 1e-4)
  c.balancing.lfm.halve_every = 20        # eta halves at epochs e > 0 with e % halve_every == 0 (authors: 20)
  c.balancing.lfm.held_out_samples = 8    # first validation samples of the k1 update (authors: 8 of 16 held-out
                                          # training samples; BalanceBenchmark: 8 of its first test batch)
  c.balancing.lfm.initial_k1 = 0.95       # initial alignment weight, k0 = 1 - k1 (authors: 0.95; BalanceBenchmark: 0.05)
  c.balancing.lfm.held_out_mode = 'authors'  # authors (batch statistics at epoch 0, inference mode after, as their
                                             # model is left by validation) | train (batch statistics every epoch)
  c.balancing.greedy = ml_collections.ConfigDict()
  c.balancing.greedy.eps = 0.01       # curation starts when |BDR_0 - BDR_1| > eps (original: 0.01; BalanceBenchmark: 0.001)
  c.balancing.greedy.window = 5       # W: curation steps (original and BalanceBenchmark: 5)
  c.balancing.greedy.starting_epoch = 1  # 0-based epoch from which curation is possible, BDR accumulated before
                                         # (original: its gin value 2 counts epochs from 1; 0: BalanceBenchmark)
  c.balancing.greedy.loss = 'branches'  # branches: sum_m CE of each modality's classifier (original) | fused: CE of
                                        # the fused logits (BalanceBenchmark)
  c.balancing.greedy.main_classifier = True  # modality m's classifier counts in its main branch (original: it is
                                             # part of the branch network) | False: the encoder only

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
  c.train.eval_every_epochs = 0       # E > 0: validate (and checkpoint) after the last step of every E-th epoch
                                      # instead (steps E * steps_per_epoch of the run's data) and at the end;
                                      # 0: every eval_every steps
  c.train.patience = 0                # P > 0: stop early after P validations in a row without a strictly better
                                      # select_head val accuracy (0: train num_steps); the best checkpoint is
                                      # then evaluated as after num_steps
  c.train.select_head = 'fused'       # the best checkpoint maximises this head's val accuracy
  c.train.log_every = 50
  c.train.ece_bins = 15
  c.train.checkpoint_every_steps = 0  # also save checkpoints/last every N steps (0: only when validating);
                                      # a killed run resumes from there, SIGTERM saves at the next step
  c.train.skip_nonfinite = False      # a non-finite loss or gradient: False stops training naming the step
                                      # and head/modality; True keeps the previous state for that step
                                      # (counted in train/skipped) and goes on
  return c
