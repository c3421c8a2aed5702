"""Accuracy, ECE (15 equal-width bins over max-softmax confidence, L1, bins (lo, hi]) and macro-F1
(mean over the classes in the labels or the predictions)."""

import warnings

import numpy as np
import pytest

from mlb_jax.metrics import accuracy, cross_entropy, expected_calibration_error, head_metrics, macro_f1


def one_hot_logits(predictions, num_classes, seed=0):
  """Logits [N, num_classes] whose arg-max is `predictions` (5 on the predicted class, small noise elsewhere)."""
  rng = np.random.default_rng(seed)
  predictions = np.asarray(predictions)
  return 5.0 * np.eye(num_classes)[predictions] + 0.1 * rng.standard_normal((len(predictions), num_classes))


def strict_macro_f1(*args, **kwargs):
  """macro_f1 with every numpy floating-point issue and every warning an error."""
  with warnings.catch_warnings(), np.errstate(all='raise'):
    warnings.simplefilter('error')
    return macro_f1(*args, **kwargs)


def test_accuracy():
  logits = np.array([[2.0, 1.0, 0.0],
                     [0.0, 3.0, 1.0],
                     [0.0, 1.0, 5.0],
                     [4.0, 0.0, 0.0]])
  labels = np.array([0, 1, 0, 2])
  assert accuracy(logits, labels) == pytest.approx(0.5)
  assert accuracy(logits, np.array([0, 1, 2, 0])) == 1.0
  assert isinstance(accuracy(logits, labels), float)


def test_ece_hand_computed_15_bins():
  # Confidences and bins (bin b = (b/15, (b+1)/15]):
  #   0.95 -> bin 14 (0.9333, 1.0],   correct
  #   0.90 -> bin 13 (0.8667, 0.9333], wrong
  #   0.91 -> bin 13,                  correct
  #   0.70 -> bin 10 (0.6667, 0.7333], correct
  #   0.55 -> bin 8  (0.5333, 0.6],    wrong
  #   0.35 -> bin 5  (0.3333, 0.4],    correct
  # ECE = sum_b (n_b / N) |acc_b - conf_b|
  #   bin 14: 1/6 * |1 - 0.95|          = 0.05 / 6
  #   bin 13: 2/6 * |0.5 - 0.905|       = 0.81 / 6
  #   bin 10: 1/6 * |1 - 0.70|          = 0.30 / 6
  #   bin 8 : 1/6 * |0 - 0.55|          = 0.55 / 6
  #   bin 5 : 1/6 * |1 - 0.35|          = 0.65 / 6
  #   total = (0.05 + 0.81 + 0.30 + 0.55 + 0.65) / 6 = 2.36 / 6 = 0.393333...
  probs = np.array([[0.95, 0.03, 0.02],
                    [0.90, 0.06, 0.04],
                    [0.05, 0.91, 0.04],
                    [0.20, 0.10, 0.70],
                    [0.55, 0.40, 0.05],
                    [0.33, 0.35, 0.32]])
  labels = np.array([0, 1, 1, 2, 1, 1])
  ece = expected_calibration_error(np.log(probs), labels, num_bins=15)
  assert isinstance(ece, float)
  assert ece == pytest.approx(2.36 / 6, abs=1e-9)
  assert expected_calibration_error(np.log(probs), labels) == pytest.approx(2.36 / 6, abs=1e-9)  # default 15


def test_ece_calibrated_by_construction_is_zero():
  # 10 samples at confidence 0.7 with exactly 7 correct, 10 at 0.9 with exactly 9
  # correct, 4 at 0.5 (2 classes) with exactly 2 correct: every bin has acc == conf.
  p7 = np.array([0.7, 0.2, 0.1])
  p9 = np.array([0.9, 0.05, 0.05])
  p5 = np.array([0.5, 0.5 - 1e-9, 1e-9])  # conf 0.5, argmax class 0 (no tie)
  probs = np.stack([p7] * 10 + [p9] * 10 + [p5] * 4)
  labels = np.array([0] * 7 + [1] * 3 + [0] * 9 + [2] + [0, 0, 1, 1])
  ece = expected_calibration_error(np.log(probs), labels)
  assert ece == pytest.approx(0.0, abs=1e-9)
  assert accuracy(np.log(probs), labels) == pytest.approx(18 / 24)


def test_ece_bins_are_left_open_right_closed():
  # 2 bins: (0, 0.5], (0.5, 1]. Sample A has confidence exactly 0.5 (logits [0, 0],
  # argmax 0, correct); sample B confidence 0.9, wrong.
  #   (lo, hi]: A alone in bin 0 -> 0.5*|1-0.5| + 0.5*|0-0.9| = 0.25 + 0.45 = 0.70
  #   [lo, hi) would put A with B: 1.0*|0.5 - 0.7| = 0.20
  logits = np.array([[0.0, 0.0], np.log([0.9, 0.1])])
  labels = np.array([0, 1])
  assert expected_calibration_error(logits, labels, num_bins=2) == pytest.approx(0.70)
  # 4 classes with equal logits: confidence exactly 0.25 = the first inner edge of 4 bins.
  #   (lo, hi]: C (conf 0.25, correct) in bin 0, D (conf 0.3, wrong) in bin 1
  #     -> 0.5*0.75 + 0.5*0.3 = 0.525;  [lo, hi) would give 1.0*|0.5 - 0.275| = 0.225
  logits = np.array([[0.0, 0.0, 0.0, 0.0], np.log([0.3, 0.29, 0.21, 0.2])])
  labels = np.array([0, 1])
  assert expected_calibration_error(logits, labels, num_bins=4) == pytest.approx(0.525)


def test_ece_confidence_one_in_last_bin():
  logits = np.array([[0.0, -1e4], [0.0, -1e4]])  # confidence exactly 1.0
  assert expected_calibration_error(logits, np.array([0, 0])) == pytest.approx(0.0)
  assert expected_calibration_error(logits, np.array([1, 1])) == pytest.approx(1.0)


def test_head_metrics():
  probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.7, 0.3]])
  labels = np.array([0, 0, 0])
  m = head_metrics(np.log(probs), labels)
  assert set(m) == {'accuracy', 'ece', 'loss', 'macro_f1'}
  assert m['accuracy'] == pytest.approx(2 / 3)
  # labels all 0, predictions [0, 1, 0]: class 0 TP 2, FN 1 -> 4/5; class 1 (predicted, never true) 0
  assert m['macro_f1'] == pytest.approx((4 / 5 + 0.0) / 2)
  assert isinstance(m['macro_f1'], float)
  assert m['loss'] == pytest.approx(-np.mean(np.log([0.8, 0.4, 0.7])))
  assert cross_entropy(np.log(probs), labels) == pytest.approx(m['loss'])


# ---------------------------------------------------------------- macro-F1

def test_macro_f1_hand_computed_3_classes():
  # Confusion matrix, rows true class, columns predicted class (9 samples):
  #            pred 0  pred 1  pred 2
  #   true 0      3       1       0
  #   true 1      0       1       1
  #   true 2      1       0       2
  # F1_c = 2 TP / (2 TP + FP + FN), FP = column sum - TP, FN = row sum - TP:
  #   class 0: TP 3, FP 1, FN 1 -> 6 / 8 = 3/4
  #   class 1: TP 1, FP 1, FN 1 -> 2 / 4 = 1/2
  #   class 2: TP 2, FP 1, FN 1 -> 4 / 6 = 2/3
  #   macro = (3/4 + 1/2 + 2/3) / 3 = (9 + 6 + 8) / 36 = 23/36   (accuracy 6/9 differs)
  labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
  preds = np.array([0, 0, 0, 1, 1, 2, 2, 0, 2])
  logits = one_hot_logits(preds, 3)
  assert np.array_equal(logits.argmax(-1), preds)
  f1 = strict_macro_f1(logits, labels)
  assert isinstance(f1, float)
  assert f1 == pytest.approx(23 / 36)
  assert accuracy(logits, labels) == pytest.approx(6 / 9)
  assert strict_macro_f1(logits, labels, num_classes=3) == pytest.approx(23 / 36)


def test_macro_f1_perfect_is_one_and_all_wrong_is_zero():
  labels = np.array([0, 1, 2, 0, 1, 2, 2])
  assert strict_macro_f1(one_hot_logits(labels, 3), labels) == 1.0
  # every prediction wrong: TP = 0 for every class, each class is in the labels or predictions -> F1 0
  assert strict_macro_f1(one_hot_logits([1, 2, 0, 2, 0, 1, 0], 3), labels) == 0.0
  # one class only, all right
  assert strict_macro_f1(one_hot_logits([1, 1], 4), np.array([1, 1])) == 1.0


def test_macro_f1_excludes_a_class_absent_from_labels_and_predictions():
  # The 3-class example above with 5 logit columns: classes 3 and 4 are never true and never
  # predicted (TP + FP + FN = 0) and are left out of the mean, so the value stays 23/36
  # (counting them as 0 would give 23/60, as 1 would give (23/12 + 2)/5).
  labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
  preds = np.array([0, 0, 0, 1, 1, 2, 2, 0, 2])
  f1 = strict_macro_f1(one_hot_logits(preds, 5), labels)
  assert f1 == pytest.approx(23 / 36)
  assert np.isfinite(f1)
  assert strict_macro_f1(one_hot_logits(preds, 5), labels, num_classes=10) == pytest.approx(23 / 36)
  # an absent class between present ones: labels [0, 0, 0, 2], predictions [0, 0, 2, 2]
  #   class 0: TP 2, FN 1 -> 4/5; class 1 absent, left out; class 2: TP 1, FP 1 -> 2/3
  #   macro = (4/5 + 2/3) / 2 = 11/15   (with class 1 as 0: 22/45)
  assert strict_macro_f1(one_hot_logits([0, 0, 2, 2], 3), np.array([0, 0, 0, 2])) == pytest.approx(11 / 15)


def test_macro_f1_counts_a_class_predicted_but_never_true_as_zero():
  # labels [0, 0, 1, 1], predictions [0, 0, 1, 2]:
  #   class 0: TP 2, FP 0, FN 0 -> 1;  class 1: TP 1, FP 0, FN 1 -> 2/3
  #   class 2: never true, predicted once: TP 0, FP 1, FN 0 -> 0, and it counts
  #   macro = (1 + 2/3 + 0) / 3 = 5/9   (leaving class 2 out would give 5/6)
  labels = np.array([0, 0, 1, 1])
  assert strict_macro_f1(one_hot_logits([0, 0, 1, 2], 4), labels) == pytest.approx(5 / 9)
  # and a class true but never predicted: labels [0, 1], predictions [0, 0]:
  #   class 0: TP 1, FP 1 -> 2/3; class 1: FN 1 -> 0; macro 1/3
  assert strict_macro_f1(one_hot_logits([0, 0], 2), np.array([0, 1])) == pytest.approx(1 / 3)


def brute_force_macro_f1(labels, preds, num_classes):
  scores = []
  for c in range(num_classes):
    tp = sum(1 for y, p in zip(labels, preds) if y == c and p == c)
    fp = sum(1 for y, p in zip(labels, preds) if y != c and p == c)
    fn = sum(1 for y, p in zip(labels, preds) if y == c and p != c)
    if tp + fp + fn:
      scores.append(2 * tp / (2 * tp + fp + fn))
  return sum(scores) / len(scores)


@pytest.mark.parametrize('seed', range(6))
def test_macro_f1_matches_a_per_class_loop_on_random_data(seed):
  rng = np.random.default_rng(seed)
  num_classes = int(rng.integers(2, 9))
  n = int(rng.integers(1, 60))
  # labels and predictions drawn from random subsets, so some classes are absent from one or both
  labels = rng.choice(rng.choice(num_classes, size=int(rng.integers(1, num_classes + 1)), replace=False), size=n)
  logits = rng.standard_normal((n, num_classes))
  logits[:, rng.choice(num_classes, size=num_classes // 2, replace=False)] -= 10.0  # never predicted
  preds = logits.argmax(-1)
  assert strict_macro_f1(logits, labels) == pytest.approx(brute_force_macro_f1(labels, preds, num_classes),
                                                          abs=1e-12)


def test_macro_f1_empty_and_out_of_range():
  assert np.isnan(strict_macro_f1(np.zeros((0, 3)), np.zeros((0,), np.int64)))
  with pytest.raises(ValueError, match=r'labels hold class ids in \[0, 3\], outside \[0, 3\)'):
    macro_f1(one_hot_logits([0, 1], 3), np.array([0, 3]))
  with pytest.raises(ValueError, match=r'predictions hold class ids in \[0, 2\], outside \[0, 2\)'):
    macro_f1(one_hot_logits([0, 2], 3), np.array([0, 1]), num_classes=2)
  with pytest.raises(ValueError, match='2 predictions but 3 labels'):
    macro_f1(one_hot_logits([0, 1], 3), np.array([0, 1, 1]))
