"""mlb_jax: Multi-Loss Balanced multimodal training in JAX/Flax.

Modules:
  balancing  scores s_i, MLB coefficients k_i, and the training methods
  losses     the multi-loss objective (Eq. 3)
  optim      `scale_by_modality` (k_i per encoder subtree) and `make_optimizer`
  models     encoders, fusion heads and `MultimodalClassifier`
  steps      pure `train_step` / `eval_step`
  loop       training and evaluation driver (files, logs, checkpoints)
"""

__version__ = '0.1.0'
