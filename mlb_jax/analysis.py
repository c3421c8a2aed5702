"""Prediction analyses behind the paper's figures (numpy, on saved test logits).

* `agreement`: the unimodal agreement analysis of Figure 4
  (docs/methods.md#agreement-analysis). Test samples are binned by which
  unimodal predictions are right -- for audio and video: both wrong, only
  audio right, only video right, both right -- and the fused accuracy is
  reported in every bin. With M > 2 modalities there are 2^M bins, one per
  subset of modalities that is right; `modalities=` restricts the analysis to
  the named ones (e.g. two of three).
* `per_class_accuracy`: the fused (or any head's) accuracy on each class.

ECE and plain accuracy live in `mlb_jax.metrics`.
"""

import itertools
from typing import Mapping, NamedTuple, Sequence

import numpy as np


class Agreement(NamedTuple):
  """Fused correctness split by unimodal correctness.

  Attributes:
    modalities: the modalities whose predictions define the bins.
    patterns: one tuple per bin, the modalities that are right in it, ordered
      by how many are right, then by modality order (for audio/video:
      (), ('audio',), ('video',), ('audio', 'video')).
    labels: a readable name per bin ('both wrong', 'only audio right', ...).
    counts: int [P], samples in each bin.
    correct: int [P], samples in each bin that the fused head gets right.
  """
  modalities: tuple[str, ...]
  patterns: tuple[tuple[str, ...], ...]
  labels: tuple[str, ...]
  counts: np.ndarray
  correct: np.ndarray

  @property
  def accuracy(self) -> np.ndarray:
    """float [P], fused accuracy in each bin (nan for an empty bin)."""
    with np.errstate(invalid='ignore', divide='ignore'):
      return np.where(self.counts > 0, self.correct / np.maximum(self.counts, 1), np.nan)

  def __add__(self, other: 'Agreement') -> 'Agreement':
    """Pools two analyses of the same bins (e.g. the runs of a seed/fold experiment)."""
    if self.patterns != other.patterns:
      raise ValueError(f'cannot pool agreement over different bins: {self.labels} vs {other.labels}')
    return self._replace(counts=self.counts + other.counts, correct=self.correct + other.correct)


def _patterns(modalities: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
  return tuple(p for r in range(len(modalities) + 1) for p in itertools.combinations(modalities, r))


def _pattern_label(pattern: tuple[str, ...], modalities: tuple[str, ...]) -> str:
  if not pattern:
    return 'both wrong' if len(modalities) == 2 else 'all wrong'
  if len(pattern) == len(modalities):
    return 'both right' if len(modalities) == 2 else 'all right'
  return f"only {' + '.join(pattern)} right"


def agreement(labels: np.ndarray, fused_logits: np.ndarray, unimodal_logits: Mapping[str, np.ndarray],
              modalities: Sequence[str] | None = None) -> Agreement:
  """Figure 4: fused accuracy for every combination of right/wrong unimodal predictions.

  Args:
    labels: int [N] class ids.
    fused_logits: [N, C] logits of the multimodal (fused) prediction.
    unimodal_logits: {modality: [N, C]}, unimodal predictions: the model's own
      unimodal heads, or separately trained unimodal models as in the paper.
    modalities: the modalities that define the bins (at least 1), in order;
      default every key of `unimodal_logits`.

  Returns:
    An `Agreement` with 2^M bins.
  """
  modalities = tuple(unimodal_logits) if modalities is None else tuple(modalities)
  if not modalities:
    raise ValueError('agreement needs at least one modality')
  missing = [m for m in modalities if m not in unimodal_logits]
  if missing:
    raise ValueError(f'no unimodal logits for {missing}; have {sorted(unimodal_logits)}')
  labels = np.asarray(labels)
  n = len(labels)
  for name, z in [('fused', fused_logits), *((m, unimodal_logits[m]) for m in modalities)]:
    if np.ndim(z) != 2 or len(z) != n:
      raise ValueError(f"logits '{name}' must have shape [{n}, C], got {np.shape(z)}")
  fused_right = np.argmax(fused_logits, axis=-1) == labels
  right = {m: np.argmax(unimodal_logits[m], axis=-1) == labels for m in modalities}
  patterns = _patterns(modalities)
  counts, correct = [], []
  for pattern in patterns:
    sel = np.ones(n, bool)
    for m in modalities:
      sel &= right[m] if m in pattern else ~right[m]
    counts.append(int(sel.sum()))
    correct.append(int(fused_right[sel].sum()))
  return Agreement(modalities, patterns, tuple(_pattern_label(p, modalities) for p in patterns),
                   np.asarray(counts, np.int64), np.asarray(correct, np.int64))


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
  """Accuracy on each class (recall of the class): float [C], nan for a class with no sample.

  Args:
    logits: [N, C].
    labels: int [N].
    num_classes: C; default the logits' last dimension.
  """
  labels = np.asarray(labels)
  num_classes = np.shape(logits)[-1] if num_classes is None else num_classes
  right = np.argmax(logits, axis=-1) == labels
  totals = np.bincount(labels, minlength=num_classes)[:num_classes]
  hits = np.bincount(labels[right], minlength=num_classes)[:num_classes]
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(totals > 0, hits / np.maximum(totals, 1), np.nan)
