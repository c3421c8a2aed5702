"""Evaluation metrics over whole splits (numpy, outside jit).

ECE follows torchmetrics' `CalibrationError(task='multiclass')` defaults used by
the authors (docs/methods.md#training-evaluation-and-reporting): 15 equal-width bins over the max-softmax
confidence, L1 norm (sum over bins of |accuracy - confidence| weighted by the
fraction of samples in the bin). A confidence exactly on a bin edge falls in
the lower bin, bins being (lo, hi].

Macro-F1 is the unweighted mean of the per-class F1 over the classes that occur
in the labels or in the predictions (see `macro_f1`).
"""

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of arg-max predictions equal to the label, in [0, 1]."""
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
  p = softmax(logits)[np.arange(len(labels)), labels]
  return float(-np.mean(np.log(np.maximum(p, 1e-12))))


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
  """ECE with `num_bins` equal-width confidence bins (L1).

  Args:
    logits: [N, C].
    labels: [N] class ids.
    num_bins: number of bins over (0, 1].

  Returns:
    ECE in [0, 1].
  """
  probs = softmax(logits)
  conf = probs.max(axis=-1)
  correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # bin b holds confidences in (edges[b], edges[b+1]]
  idx = np.clip(np.searchsorted(edges, conf, side='left') - 1, 0, num_bins - 1)
  ece = 0.0
  for b in range(num_bins):
    sel = idx == b
    if sel.any():
      ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
  return float(ece)


def macro_f1(logits: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
  """Macro-averaged F1 of the arg-max predictions, in [0, 1].

  Per class c, F1_c = 2·TP_c / (2·TP_c + FP_c + FN_c); the result is the
  unweighted mean of F1_c over the classes with TP_c + FP_c + FN_c > 0, i.e.
  those that occur in `labels` or in the predictions. A class absent from both
  has no defined F1 (0/0) and is left out of the mean rather than counted as 0
  or 1: a split that happens to lack a class is scored on the classes it has,
  and its score does not depend on `num_classes`. A class that is predicted but
  never true (or true but never predicted) has TP = 0 and counts with F1 = 0.
  This is scikit-learn's `f1_score(labels, predictions, average='macro')` with
  its default `labels=None` (the sorted union of true and predicted classes).
  No division by zero occurs; an empty split (N = 0) gives nan, like `accuracy`.

  Args:
    logits: [N, C].
    labels: [N] class ids in [0, num_classes).
    num_classes: the number of classes, default C. It only bounds (and checks)
      the class ids: absent classes are excluded either way.

  Returns:
    Macro-F1 as a float.
  """
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  preds = np.argmax(logits, axis=-1).astype(np.int64).reshape(-1)
  if preds.shape != labels.shape:
    raise ValueError(f'macro_f1: {preds.size} predictions but {labels.size} labels')
  k = int(np.shape(logits)[-1] if num_classes is None else num_classes)
  if labels.size == 0:
    return float('nan')
  for name, ids in (('labels', labels), ('predictions', preds)):
    if ids.min() < 0 or ids.max() >= k:
      raise ValueError(f'macro_f1: {name} hold class ids in [{ids.min()}, {ids.max()}], outside [0, {k})')
  confusion = np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)  # [true, predicted]
  tp = np.diag(confusion)
  fp = confusion.sum(axis=0) - tp
  fn = confusion.sum(axis=1) - tp
  denominator = 2 * tp + fp + fn
  present = denominator > 0  # in labels or predictions; non-empty since N > 0
  return float(np.mean(2 * tp[present] / denominator[present]))


def head_metrics(logits: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> dict[str, float]:
  """{'accuracy', 'ece', 'loss', 'macro_f1'} of one head's logits [N, C] on a split."""
  return {
      'accuracy': accuracy(logits, labels),
      'ece': expected_calibration_error(logits, labels, num_bins),
      'loss': cross_entropy(logits, labels),
      'macro_f1': macro_f1(logits, labels),
  }
