"""The Conformer feature file of data_pipelines/extract_features.py (its numpy part; no optional deps)."""

import ml_collections
import numpy as np
import pytest

from data_pipelines import arrays, extract_features


@pytest.fixture(scope='module')
def script():
  return extract_features


def test_pack_pads_standardises_and_labels(script, tmp_path):
  rng = np.random.default_rng(0)
  clips = ['1001_DFA_ANG_XX', '1002_IEO_HAP_HI', '1003_TIE_NEU_LO', '1004_ITS_FEA_MD', '1005_IWL_SAD_XX']
  audio = {c: rng.standard_normal((3 + i, 4)).astype(np.float32) + 1 for i, c in enumerate(clips)}
  video = {c: rng.standard_normal((2 + i, 5)).astype(np.float32) * 3 + 2 for i, c in enumerate(clips)
           if c != clips[3]}
  splits = {'train': clips[:2], 'val': [clips[2]], 'test': clips[3:]}   # clips[3] has no video: dropped
  out = script.pack(audio, video, splits)
  assert out['audio'].shape == (4, 7, 4) and out['audio'].dtype == np.float16
  assert out['video'].shape == (4, script.MAX_FACE_FRAMES, 5)
  np.testing.assert_array_equal(out['label'], [5, 1, 0, 2])   # ANG, HAP, NEU, SAD
  np.testing.assert_array_equal(out['split'], [0, 0, 1, 2])
  np.testing.assert_allclose(out['audio'][1, :4], audio[clips[1]], rtol=1e-3)
  assert np.all(out['audio'][0, 3:] == 0) and np.all(out['video'][2, 4:] == 0)
  train_frames = np.concatenate([out['video'][0, :2], out['video'][1, :3]]).astype(np.float64)
  np.testing.assert_allclose(train_frames.mean(0), 0, atol=2e-3)
  np.testing.assert_allclose(train_frames.std(0), 1, atol=2e-3)
  # The file is the bring-your-own layout: the arrays pipeline reads it as it is.
  path = str(tmp_path / 'features.npz')
  np.savez(path, **out)
  cfg = ml_collections.ConfigDict({'name': 'arrays', 'path': path, 'num_classes': 6})
  dataset = arrays.load(cfg)
  assert dataset.modalities == ('audio', 'video') and dataset.num_classes == 6
  assert dataset.sample_shapes == {'audio': (7, 4), 'video': (script.MAX_FACE_FRAMES, 5)}


def test_bad_inputs_are_named(script):
  with pytest.raises(ValueError, match="'1001_DFA' is not a CREMA-D clip name"):
    script.label_of('1001_DFA')
  with pytest.raises(ValueError, match='all-zero frame'):
    script.pad_frames([np.zeros((2, 3), np.float32)])
  with pytest.raises(ValueError, match='must all be'):
    script.pad_frames([np.ones((2, 3)), np.ones((2, 4))])


def test_vavl_split_names(script):
  split = script.vavl_split(0)
  assert [len(split[k]) for k in ('train', 'val', 'test')] == [4043, 878, 899]
  assert split['train'][0] == '1026_IEO_ANG_HI'
