"""mlb_jax: Multi-Loss Balanced multimodal training in JAX/Flax.

Modules:
  balancing  scores s_i, MLB coefficients k_i, and the training methods
  losses     the multi-loss objective (Eq. 3)
  optim      `scale_by_modality` (k_i per encoder subtree) and `make_optimizer`
  models     encoders, fusion heads and `MultimodalClassifier`
  steps      pure `train_step` / `eval_step`
  loop       training and evaluation driver (files, logs, checkpoints)
  experiments  seeds/folds runner, mean ± std aggregation, sweeps (`python -m mlb_jax.experiments`)
  analysis   unimodal agreement (Figure 4) and per-class accuracy
  plots      the paper's figures as PNG files
  report     report.md of an experiment folder
"""

__version__ = '0.1.0'
