"""Evaluation metrics over whole splits (numpy, outside jit).

ECE follows torchmetrics' `CalibrationError(task='multiclass')` defaults used by
the authors (docs/methods.md#training-evaluation-and-reporting): 15 equal-width bins over the max-softmax
confidence, L1 norm (sum over bins of |accuracy - confidence| weighted by the
fraction of samples in the bin). A confidence exactly on a bin edge falls in
the lower bin, bins being (lo, hi].
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


def head_metrics(logits: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> dict[str, float]:
  return {
      'accuracy': accuracy(logits, labels),
      'ece': expected_calibration_error(logits, labels, num_bins),
      'loss': cross_entropy(logits, labels),
  }
