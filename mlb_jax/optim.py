"""Optax pieces: per-modality scaling (k_i of Eq. 2) and the optimizer chain.

`scale_by_modality(param_labels)` multiplies every leaf labelled with modality m
by `modality_scales[m]`, a value passed to `update()` each step. Because the
scales are arguments (traced arrays), changing them every step never retraces.

Where the transformation sits in the chain is the one real choice
(`config.balancing.apply_to`):

* `'gradients'` (the authors' code, METHODS.md §2.5 item 2): first in the chain,
  so k_i scales the raw gradient, then coupled L2 weight decay is added, then
  Adam/SGD. With Adam a roughly constant k_i is largely normalised away by the
  second-moment estimate; only changes of k_i relative to Adam's averages act.
* `'updates'` (Eq. 2's learning-rate reading): last in the chain, so k_i scales
  the final step exactly like a per-modality learning rate, for any optimizer.

Parameter grouping. Labels come from the top-level parameter keys of
`MultimodalClassifier`: `params[m]` (modality m's encoder and its unimodal head)
gets label m; `params['fusion']` is never scaled. The authors' code selects
parameters by name substrings (METHODS.md §2.3), which additionally scales the
modality's slice of a Late-Linear/Mid-MLP fusion input layer and, with Gated
fusion, the modality's gate projection. We do not: the fusion head is shared by
all modalities and is left at the base rate.
"""

from typing import Any, Callable, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

APPLY_TO = ('gradients', 'updates')


class ScaleByModalityState(NamedTuple):
  """`scale_by_modality` keeps no state: the scales arrive with each update."""


PROBE_SUFFIX = '/probe'


UNSCALED_SUFFIX = '/unscaled'


def modality_labels(params: Mapping[str, Any], *, heads_scaled: bool = True,
                    kernels_only: bool = False) -> dict[str, Any]:
  """A label tree: every leaf of `params[key]` is labelled `key` (its top-level key).

  With `heads_scaled=False` a modality's unimodal head (`params[m]['head']`) is
  labelled `m + '/probe'` instead, so it keeps the base rate: for methods whose
  unimodal heads are stop-gradient probes, scaling them would only distort the
  measurement. With `kernels_only=True` only weight matrices/filters (leaves
  named 'kernel') keep label `key`; biases and BatchNorm scales/offsets get
  `key + '/unscaled'` (OGM as its paper defines it).
  """
  labels = {}
  for key, sub in params.items():
    def label(path, _, key=key):
      names = [getattr(p, 'key', None) for p in path]
      if not heads_scaled and names[:1] == ['head']:
        return key + PROBE_SUFFIX
      if kernels_only and names[-1:] != ['kernel']:
        return key + UNSCALED_SUFFIX
      return key
    labels[key] = jax.tree_util.tree_map_with_path(label, sub)
  return labels


def scale_by_modality(
    param_labels: Union[Any, Callable[[Any], Any]]) -> optax.GradientTransformationExtraArgs:
  """Scales each labelled subtree of the updates by a per-step scalar.

  Args:
    param_labels: a pytree with the structure of the params whose leaves are
      string labels, or a function `params -> labels` (e.g. `modality_labels`).

  Returns:
    A transformation whose `update(updates, state, params=None, *,
    modality_scales, noise_key=None, noise_scale=None)` takes
    `modality_scales = {label: float32 scalar}`; leaves whose label is absent
    from `modality_scales` pass through unchanged. With `noise_key` (OGM-GE),
    every scaled leaf u becomes `k u + noise_scale * N(0, (std(u) + 1e-8)^2)`,
    std taken over the unscaled leaf, one independent draw per leaf.
  """

  def resolve(tree):
    labels = param_labels(tree) if callable(param_labels) else param_labels
    return labels

  def init_fn(params):
    del params
    return ScaleByModalityState()

  def update_fn(updates, state, params=None, *, modality_scales, noise_key=None, noise_scale=None,
                **extra_args):
    del params, extra_args
    labels = resolve(updates)
    known = set(jax.tree.leaves(labels))
    unknown = set(modality_scales) - known
    if unknown:
      raise ValueError(f'modality_scales has labels {sorted(unknown)} that label no parameter; '
                       f'parameter labels are {sorted(known)}')
    leaves, treedef = jax.tree.flatten(updates)
    leaf_labels = treedef.flatten_up_to(labels)
    out = []
    for i, (u, label) in enumerate(zip(leaves, leaf_labels)):
      if label in modality_scales:
        scaled = u * jnp.asarray(modality_scales[label], u.dtype)
        if noise_key is not None:
          std = jnp.std(u.astype(jnp.float32)) + 1e-8
          draw = jax.random.normal(jax.random.fold_in(noise_key, i), u.shape, jnp.float32)
          scale = jnp.float32(1.0) if noise_scale is None else noise_scale
          scaled = scaled + (scale * std * draw).astype(u.dtype)
        u = scaled
      out.append(u)
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def cosine_restarts_schedule(base_lr: float, *, warmup_steps: int, period: int = 4,
                             mult: int = 2) -> optax.Schedule:
  """The authors' schedule (METHODS.md §1): constant `base_lr` for updates
  j < warmup_steps, then SGDR cosine annealing with warm restarts evaluated at
  j itself (T_0 = `period` optimizer steps, T_mult = `mult`, eta_min = 0).
  """
  if period < 1 or mult < 1:
    raise ValueError(f'period and mult must be >= 1, got {period}, {mult}')

  def schedule(count):
    j = jnp.asarray(count, jnp.float32)
    if mult == 1:
      t_cur, t_i = jnp.mod(j, period), jnp.float32(period)
    else:
      n = jnp.floor(jnp.log2(j / period * (mult - 1) + 1) / jnp.log2(mult))
      start = lambda n: period * (mult ** n - 1) / (mult - 1)
      n = jnp.where(start(n) > j, n - 1, n)        # guard log rounding at restarts
      n = jnp.where(start(n + 1) <= j, n + 1, n)
      t_cur, t_i = j - start(n), period * mult ** n
    cosine = base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * t_cur / t_i))
    return jnp.where(j < warmup_steps, base_lr, cosine)

  return schedule


def make_schedule(cfg) -> optax.Schedule:
  """Learning-rate schedule from `config.optimizer`."""
  if cfg.schedule == 'constant':
    return optax.constant_schedule(cfg.learning_rate)
  if cfg.schedule == 'cosine_restarts':
    return cosine_restarts_schedule(cfg.learning_rate, warmup_steps=cfg.warmup_steps,
                                    period=cfg.restart_period, mult=cfg.restart_mult)
  raise ValueError(f"unknown optimizer.schedule '{cfg.schedule}'; expected 'constant' or 'cosine_restarts'")


def base_optimizer(cfg) -> optax.GradientTransformation:
  """Adam or SGD with coupled L2 weight decay (torch semantics: wd*theta is
  added to the gradient before the moments, not AdamW's decoupled decay)."""
  lr = make_schedule(cfg)
  decay = [optax.add_decayed_weights(cfg.weight_decay)] if cfg.weight_decay else []
  if cfg.name == 'adam':
    core = [optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)]
  elif cfg.name == 'sgd':
    core = [optax.trace(decay=cfg.momentum)] if cfg.momentum else []
  else:
    raise ValueError(f"unknown optimizer.name '{cfg.name}'; expected 'adam' or 'sgd'")
  return optax.chain(*decay, *core, optax.scale_by_learning_rate(lr))


def make_optimizer(cfg, param_labels, apply_to: str) -> optax.GradientTransformationExtraArgs:
  """The full chain with `scale_by_modality` placed by `apply_to`.

  Args:
    cfg: `config.optimizer`.
    param_labels: labels for `scale_by_modality` (tree or callable).
    apply_to: 'gradients' (scale raw gradients first) or 'updates' (scale last).
  """
  if apply_to not in APPLY_TO:
    raise ValueError(f"balancing.apply_to must be one of {APPLY_TO}, got '{apply_to}'")
  balance = scale_by_modality(param_labels)
  base = base_optimizer(cfg)
  return optax.chain(balance, base) if apply_to == 'gradients' else optax.chain(base, balance)
