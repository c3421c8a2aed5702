"""Accuracy and ECE (15 equal-width bins over max-softmax confidence, L1, bins (lo, hi])."""

import numpy as np
import pytest

from mlb_jax.metrics import accuracy, cross_entropy, expected_calibration_error, head_metrics


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
  assert set(m) == {'accuracy', 'ece', 'loss'}
  assert m['accuracy'] == pytest.approx(2 / 3)
  assert m['loss'] == pytest.approx(-np.mean(np.log([0.8, 0.4, 0.7])))
  assert cross_entropy(np.log(probs), labels) == pytest.approx(m['loss'])
