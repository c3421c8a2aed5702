"""Optax pieces: per-modality scaling (k_i of Eq. 2) and the optimizer chain.

`scale_by_modality(param_labels)` is an `optax.multi_transform` over the
parameter labels: the inner transformation of label m multiplies its subtree by
`modality_scales[m]`, an extra argument of `update()` each step; labels absent
from `modality_scales` (the fusion head, '<m>/probe', '<m>/unscaled') pass
through. Because the scales are arguments (traced arrays), changing them every
step never retraces. The inner transformations are stateless, so the state stays
the empty `ScaleByModalityState` (checkpoints keep their structure).

Where the transformation sits in the chain is the one real choice
(`config.balancing.apply_to`):

* `'gradients'` (the authors' code, docs/methods.md#mlb-paper-vs-code, item 2):
  first in the chain, so k_i scales the raw gradient, then coupled L2 weight
  decay is added, then Adam/SGD. With Adam a roughly constant k_i is largely
  normalised away by the second-moment estimate; only changes of k_i relative
  to Adam's averages act.
* `'updates'` (Eq. 2's learning-rate reading): last in the chain, so k_i scales
  the final step exactly like a per-modality learning rate, for any optimizer.

`make_optimizer(..., per_label=...)` gives chosen labels (e.g. one encoder) their
own base optimizer or schedule through a second `multi_transform`; k_i still
applies on top.

Parameter grouping. Labels come from the top-level parameter keys of
`MultimodalClassifier`: `params[m]` (modality m's encoder and its unimodal head)
gets label m; `params['fusion']` is never scaled. The authors' code selects
parameters by name substrings (docs/methods.md#mlb-which-parameters-are-scaled),
which additionally scales the modality's slice of a Late-Linear/Mid-MLP
fusion input layer and, with Gated fusion, the modality's gate projection. By
default we do not: the fusion head is shared by all modalities and is left at
the base rate. `balancing.mlb.fusion_slices = True` scales those rows too
(`fusion_slices`, `scale_fusion_slices`), as the authors' runs do.
"""

from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

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


def _leaf_labels(param_labels, tree) -> Any:
  """`param_labels` (a tree, a prefix of `tree`, or a callable) as a label per leaf of `tree`."""
  labels = param_labels(tree) if callable(param_labels) else param_labels
  return jax.tree.map(lambda label, sub: jax.tree.map(lambda _: label, sub), labels, tree)


def _unbiased_std(u: jax.Array) -> jax.Array:
  """torch's `Tensor.std()` (divides by N - 1) in float32; 0 for a single element, where it is undefined."""
  if u.size < 2:
    return jnp.float32(0.0)
  return jnp.std(u.astype(jnp.float32), ddof=1)


def _scale_label(label: str, leaf_ids: list[int]) -> optax.GradientTransformationExtraArgs:
  """The inner transformation of `label`: scales its leaves by `modality_scales[label]`, if given.

  `multi_transform` hands it the updates with every other label's leaves masked
  out; `leaf_ids` are the positions of its leaves among all leaves, so each leaf
  draws OGM-GE noise from `fold_in(noise_key, position)`.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, modality_scales, noise_key=None, noise_scale=None,
                **extra_args):
    del params, extra_args
    if label not in modality_scales:
      return updates, state
    leaves, treedef = jax.tree.flatten(updates)
    out = []
    for i, u in zip(leaf_ids, leaves, strict=True):
      scaled = u * jnp.asarray(modality_scales[label], u.dtype)
      if noise_key is not None:
        std = _unbiased_std(u) + 1e-8
        draw = jax.random.normal(jax.random.fold_in(noise_key, i), u.shape, jnp.float32)
        scale = jnp.float32(1.0) if noise_scale is None else noise_scale
        scaled = scaled + (scale * std * draw).astype(u.dtype)
      out.append(scaled)
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_modality(
    param_labels: Union[Any, Callable[[Any], Any]]) -> optax.GradientTransformationExtraArgs:
  """Scales each labelled subtree of the updates by a per-step scalar.

  Args:
    param_labels: a pytree with the structure of the params (or a prefix of it)
      whose leaves are string labels, or a function `params -> labels` (e.g.
      `modality_labels`).

  Returns:
    A transformation whose `update(updates, state, params=None, *,
    modality_scales, noise_key=None, noise_scale=None)` takes
    `modality_scales = {label: float32 scalar}`; leaves whose label is absent
    from `modality_scales` pass through unchanged. With `noise_key` (OGM-GE,
    docs/methods.md#ogm-ge), every scaled leaf u becomes
    `k u + noise_scale * N(0, (std(u) + 1e-8)^2)`, std the unbiased (N - 1) std
    of the unscaled leaf as torch's `Tensor.std()`, taken as 0 for a one-element
    leaf (whose noise is then N(0, 1e-16)); one independent draw per leaf.

  Raises:
    ValueError: (at update) when `modality_scales` names a label that labels no
      parameter.
  """

  def init_fn(params):
    del params
    return ScaleByModalityState()

  def update_fn(updates, state, params=None, *, modality_scales, noise_key=None, noise_scale=None,
                **extra_args):
    del params, extra_args
    labels = _leaf_labels(param_labels, updates)
    leaf_ids = {}
    for i, label in enumerate(jax.tree.leaves(labels)):
      leaf_ids.setdefault(label, []).append(i)
    unknown = set(modality_scales) - set(leaf_ids)
    if unknown:
      raise ValueError(f'modality_scales has labels {sorted(unknown)} that label no parameter; '
                       f'parameter labels are {sorted(leaf_ids)}')
    tx = optax.multi_transform({label: _scale_label(label, ids) for label, ids in leaf_ids.items()},
                               labels)
    # Stateless inner transformations: their (empty) state is rebuilt, not stored.
    updates, _ = tx.update(updates, tx.init(updates), modality_scales=modality_scales,
                           noise_key=noise_key, noise_scale=noise_scale)
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# The fusion parameters that hold one modality's input slice, by fusion: {path: rows of which modality}.
FUSION_SLICE_FUSIONS = ('late_linear', 'mid_mlp', 'gated', 'mmcosine')


def _row_blocks(modalities, dims, start: int = 0):
  blocks = []
  for m in modalities:
    blocks.append((m, start, start + dims[m]))
    start += dims[m]
  return tuple(blocks)


def fusion_slices(fusion: str, modalities, dims: Mapping[str, int]) -> dict[tuple, tuple]:
  """{parameter path: ((modality, first row, end row), ...)}: the rows of the fusion's input-layer
  kernels that read modality m's features, as the authors' name-substring selection scales them.

  late_linear / mid_mlp: the first kernel's rows in concatenation order; gated: the gate projection
  (it reads the first modality) and the value projection's rows (the others); mmcosine: each
  modality's class-weight matrix. Biases and later layers are not slices of a modality.
  """
  if fusion == 'late_linear':
    return {('fusion', 'kernel'): _row_blocks(modalities, dims)}
  if fusion == 'mid_mlp':
    return {('fusion', 'Dense_0', 'kernel'): _row_blocks(modalities, dims)}
  if fusion == 'gated':
    first = modalities[0]
    return {('fusion', 'gate', 'kernel'): ((first, 0, dims[first]),),
            ('fusion', 'value', 'kernel'): _row_blocks(modalities[1:], dims)}
  if fusion == 'mmcosine':
    return {('fusion', f'kernel_{m}'): ((m, 0, dims[m]),) for m in modalities}
  raise ValueError(f"balancing.mlb.fusion_slices is defined for the fusions {list(FUSION_SLICE_FUSIONS)}, "
                   f"got model.fusion '{fusion}'")


def scale_fusion_slices(slices: Mapping[tuple, tuple]) -> optax.GradientTransformationExtraArgs:
  """Multiplies the rows of the `slices` parameters (see `fusion_slices`) by their modality's
  `modality_scales[m]`, rows of modalities absent from it by 1. Stateless, like `scale_by_modality`."""

  def init_fn(params):
    del params
    return ScaleByModalityState()

  def update_fn(updates, state, params=None, *, modality_scales, **extra_args):
    del params, extra_args
    found = set()

    def scale(path, u):
      key = tuple(getattr(p, 'key', None) for p in path)
      blocks = slices.get(key)
      if blocks is None:
        return u
      found.add(key)
      rows = jnp.ones((u.shape[0],), u.dtype)
      for m, a, b in blocks:
        if m in modality_scales:
          rows = rows.at[a:b].set(jnp.asarray(modality_scales[m], u.dtype))
      return u * rows.reshape((-1,) + (1,) * (u.ndim - 1))

    out = jax.tree_util.tree_map_with_path(scale, updates)
    missing = set(slices) - found
    if missing:
      raise ValueError(f'fusion slices {sorted(missing)} name no parameter')
    return out, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def cosine_restarts_schedule(base_lr: float, *, warmup_steps: int, period: int = 4,
                             mult: int = 2) -> optax.Schedule:
  """The authors' schedule (docs/methods.md#learning-rate-schedule): constant `base_lr` for updates
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


def _per_label_base(default: optax.GradientTransformation,
                    per_label: Mapping[str, optax.GradientTransformation],
                    param_labels) -> optax.GradientTransformationExtraArgs:
  """A `multi_transform` giving each leaf the transformation of its label (see `make_optimizer`)."""
  for key, tx in per_label.items():
    if not isinstance(tx, optax.GradientTransformation):
      raise ValueError(f"per_label['{key}'] must be an optax.GradientTransformation, got {type(tx).__name__}")

  def group(label):
    root = label.split('/')[0] if isinstance(label, str) else label
    return label if label in per_label else root if root in per_label else label

  def partition(tree):
    labels = _leaf_labels(param_labels, tree)
    groups = jax.tree.map(group, labels)
    names = set(jax.tree.leaves(groups))
    unknown = set(per_label) - names
    if unknown:
      raise ValueError(f'per_label has labels {sorted(unknown)} that label no parameter; '
                       f'parameter labels are {sorted(set(jax.tree.leaves(labels)))}')
    return optax.multi_transform({name: per_label.get(name, default) for name in sorted(names)}, groups)

  def init_fn(params):
    return partition(params).init(params)

  def update_fn(updates, state, params=None, **extra_args):
    return partition(updates).update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(cfg, param_labels, apply_to: str,
                   per_label: Optional[Mapping[str, optax.GradientTransformation]] = None,
                   slices: Optional[Mapping[tuple, tuple]] = None) -> optax.GradientTransformationExtraArgs:
  """The full chain with `scale_by_modality` placed by `apply_to`.

  Args:
    cfg: `config.optimizer`.
    param_labels: labels for `scale_by_modality` (tree or callable).
    apply_to: 'gradients' (scale raw gradients first) or 'updates' (scale last).
    per_label: optional `{label: base transformation}` for labels (encoders)
      that get their own optimizer or schedule instead of `base_optimizer(cfg)`,
      e.g. `{'video': base_optimizer(video_cfg)}`. A key m also covers the
      labels 'm/probe' and 'm/unscaled' unless they have their own key. k_i
      still applies on top, placed by `apply_to`. With it, the base state is an
      `optax.PartitionState` keyed by label (by the key, for the labels a key
      covers); every other label has its own `base_optimizer(cfg)` state.
    slices: optional fusion rows scaled with their modality (`fusion_slices`), placed with k_i.

  Raises:
    ValueError: for an unknown `apply_to` or optimizer setting, a `per_label`
      value that is not a transformation, or (at init) a `per_label` key that
      labels no parameter.
  """
  if apply_to not in APPLY_TO:
    raise ValueError(f"balancing.apply_to must be one of {APPLY_TO}, got '{apply_to}'")
  balance = scale_by_modality(param_labels)
  if slices:
    balance = optax.chain(balance, scale_fusion_slices(slices))
  base = base_optimizer(cfg)
  if per_label:
    base = _per_label_base(base, per_label, param_labels)
  return optax.chain(balance, base) if apply_to == 'gradients' else optax.chain(base, balance)
