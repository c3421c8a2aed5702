"""Figure-4 agreement bins and per-class accuracy on hand-made predictions."""

import numpy as np
import pytest

from mlb_jax.analysis import agreement, per_class_accuracy

NUM_CLASSES = 3


def logits_for(predictions):
  """One-hot logits whose arg-max is `predictions`."""
  return np.eye(NUM_CLASSES)[np.asarray(predictions)] * 5.0


def wrong(labels):
  return (np.asarray(labels) + 1) % NUM_CLASSES


def predictions(labels, right_at):
  """Predict the label at the indices `right_at`, a wrong class elsewhere."""
  out = wrong(labels)
  out[list(right_at)] = np.asarray(labels)[list(right_at)]
  return out


LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
AUDIO_RIGHT = {0, 1, 2, 3, 4}
VIDEO_RIGHT = {2, 3, 5, 6}
FUSED_RIGHT = {0, 2, 3, 5, 7}
# bins: both wrong {7, 8, 9}   fused right {7}    -> 1/3
#       only audio {0, 1, 4}   fused right {0}    -> 1/3
#       only video {5, 6}      fused right {5}    -> 1/2
#       both right {2, 3}      fused right {2, 3} -> 2/2


def two_modality_case():
  return (LABELS, logits_for(predictions(LABELS, FUSED_RIGHT)),
          {'audio': logits_for(predictions(LABELS, AUDIO_RIGHT)),
           'video': logits_for(predictions(LABELS, VIDEO_RIGHT))})


def test_agreement_two_modalities_hand_computed():
  a = agreement(*two_modality_case())
  assert a.labels == ('both wrong', 'only audio right', 'only video right', 'both right')
  assert a.patterns == ((), ('audio',), ('video',), ('audio', 'video'))
  np.testing.assert_array_equal(a.counts, [3, 3, 2, 2])
  np.testing.assert_array_equal(a.correct, [1, 1, 1, 2])
  np.testing.assert_allclose(a.accuracy, [1 / 3, 1 / 3, 1 / 2, 1.0])


def test_agreement_pools_runs_and_marks_empty_bins():
  labels, fused, uni = two_modality_case()
  a = agreement(labels, fused, uni)
  pooled = a + a
  np.testing.assert_array_equal(pooled.counts, [6, 6, 4, 4])
  np.testing.assert_allclose(pooled.accuracy, a.accuracy)
  # every audio prediction right: the "both wrong" and "only video right" bins are empty
  all_right = agreement(labels, fused, {'audio': logits_for(labels), 'video': uni['video']})
  np.testing.assert_array_equal(all_right.counts, [0, 6, 0, 4])
  assert np.isnan(all_right.accuracy[0]) and np.isnan(all_right.accuracy[2])


def test_agreement_three_modalities_and_restriction():
  labels, fused, uni = two_modality_case()
  uni = {**uni, 'text': logits_for(predictions(labels, {9}))}
  a = agreement(labels, fused, uni)
  assert len(a.labels) == 8
  assert a.labels[0] == 'all wrong' and a.labels[-1] == 'all right'
  assert 'only audio + video right' in a.labels
  assert a.counts.sum() == len(labels)
  # sample 9: only text right, fused wrong; samples 7, 8 all wrong, fused right on 7
  assert a.counts[a.labels.index('only text right')] == 1
  assert a.correct[a.labels.index('only text right')] == 0
  np.testing.assert_array_equal(a.counts[a.labels.index('all wrong')], 2)
  # restricted to audio and video it is the two-modality analysis
  restricted = agreement(labels, fused, uni, modalities=('audio', 'video'))
  np.testing.assert_array_equal(restricted.counts, [3, 3, 2, 2])
  with pytest.raises(ValueError, match="pool agreement over different bins"):
    a + restricted


def test_agreement_rejects_bad_input():
  labels, fused, uni = two_modality_case()
  with pytest.raises(ValueError, match=r"no unimodal logits for \['text'\]"):
    agreement(labels, fused, uni, modalities=('audio', 'text'))
  with pytest.raises(ValueError, match="logits 'video' must have shape"):
    agreement(labels, fused, {**uni, 'video': uni['video'][:4]})


def test_per_class_accuracy_hand_computed():
  labels = np.array([0, 0, 0, 1, 1, 2])
  preds = np.array([0, 0, 1, 1, 0, 2])
  # class 0: 2 of 3, class 1: 1 of 2, class 2: 1 of 1, class 3: no sample
  acc = per_class_accuracy(np.eye(4)[preds], labels)
  np.testing.assert_allclose(acc[:3], [2 / 3, 1 / 2, 1.0])
  assert np.isnan(acc[3])
  assert per_class_accuracy(np.eye(4)[preds], labels, num_classes=2).shape == (2,)
