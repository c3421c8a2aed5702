"""Pipelines: the synthetic benchmark, bring-your-own arrays, and the Grain readers."""

import ml_collections
import numpy as np
import pytest

import data_pipelines
from configs import synthetic as synthetic_config
from data_pipelines import arrays, common, synthetic


def small_synthetic(**kw):
  cfg = synthetic_config.get_config('smoke').data
  cfg.update(kw)
  return cfg


def test_synthetic_is_deterministic_and_seeded():
  cfg = small_synthetic()
  a = synthetic.generate(cfg, 50, seed=3)
  b = synthetic.generate(cfg, 50, seed=3)
  c = synthetic.generate(cfg, 50, seed=4)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['audio'], c['audio'])
  assert a['audio'].shape == (50, *cfg.audio_shape) and a['audio'].dtype == np.float32
  assert a['video'].shape == (50, *cfg.video_shape) and a['video'].dtype == np.float32
  assert a['label'].dtype == np.int32 and a['label'].max() < cfg.num_classes


def test_synthetic_presence_rates_and_signal():
  cfg = small_synthetic(audio_present=0.7, video_present=0.9)
  d = synthetic.generate(cfg, 4000, seed=0)
  assert abs(d['audio_present'].mean() - 0.7) < 0.03
  assert abs(d['video_present'].mean() - 0.9) < 0.03
  # silent clips are pure N(0, 1) noise; audible ones carry the class rows
  silent = d['audio'][~d['audio_present']]
  assert abs(silent.mean()) < 0.01 and abs(silent.std() - 1) < 0.01
  assert d['audio'][d['audio_present']].mean() > silent.mean() + 0.05


def test_synthetic_splits_share_templates_but_not_draws():
  ds = synthetic.load(small_synthetic())
  assert ds.modalities == ('audio', 'video')
  assert {k: len(v) for k, v in ds.splits.items()} == {'train': 64, 'val': 32, 'test': 32}
  assert not np.array_equal(ds.splits['train'].arrays['audio'][:32], ds.splits['val'].arrays['audio'])


def test_train_batches_shuffle_per_epoch_and_drop_the_remainder():
  src = common.ArraySource({'x': np.arange(10), 'label': np.arange(10)})
  it = common.train_batches(src, batch_size=4, seed=0)
  epoch1 = [next(it)['x'] for _ in range(2)]   # 10 // 4 = 2 batches per epoch
  epoch2 = [next(it)['x'] for _ in range(2)]
  assert all(b.shape == (4,) for b in epoch1 + epoch2)
  assert len(set(np.concatenate(epoch1).tolist())) == 8  # no repeats within an epoch
  assert not np.array_equal(np.concatenate(epoch1), np.concatenate(epoch2))
  again = common.train_batches(src, batch_size=4, seed=0)
  np.testing.assert_array_equal(next(again)['x'], epoch1[0])
  other = common.train_batches(src, batch_size=4, seed=1)
  assert not np.array_equal(next(other)['x'], epoch1[0])


def test_train_batches_resume_from_grain_state():
  src = common.ArraySource({'x': np.arange(10), 'label': np.arange(10)})
  it = common.train_batches(src, batch_size=3, seed=0)
  for _ in range(4):
    next(it)
  state = it.get_state()
  expected = [next(it)['x'] for _ in range(3)]
  resumed = common.train_batches(src, batch_size=3, seed=0)
  resumed.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(resumed)['x'], e)


def test_train_batches_reject_a_split_smaller_than_a_batch():
  src = common.ArraySource({'x': np.arange(3), 'label': np.arange(3)})
  with pytest.raises(ValueError, match='fewer than one batch'):
    common.train_batches(src, batch_size=4, seed=0)


def test_eval_batches_pad_with_a_mask():
  src = common.ArraySource({'x': np.arange(10, dtype=np.float32), 'label': np.arange(10)})
  batches = list(common.eval_batches(src, batch_size=4))
  assert [b['mask'].sum() for b in batches] == [4, 4, 2]
  assert all(len(b['x']) == 4 for b in batches)
  real = np.concatenate([b['x'][b['mask']] for b in batches])
  np.testing.assert_array_equal(real, np.arange(10))


def test_array_source_rejects_unequal_lengths():
  with pytest.raises(ValueError, match='same length'):
    common.ArraySource({'a': np.zeros(3), 'label': np.zeros(4)})


# --- bring-your-own arrays ------------------------------------------------------------

def write_npz(path, n=30, **override):
  rng = np.random.default_rng(0)
  data = {
      'audio': rng.standard_normal((n, 6)).astype(np.float32),
      'video': rng.standard_normal((n, 4, 4, 3)).astype(np.float32),
      'text': rng.standard_normal((n, 5)).astype(np.float32),
      'label': (np.arange(n) % 3).astype(np.int64),
      'split': np.array([0, 0, 0, 1, 2] * (n // 5)),
  }
  data.update(override)
  data = {k: v for k, v in data.items() if v is not None}
  np.savez(path, **data)
  return str(path)


def arrays_config(path):
  return ml_collections.ConfigDict(dict(name='arrays', path=path, num_classes=0))


def test_arrays_reads_three_modalities_in_file_order(tmp_path):
  ds = data_pipelines.load(arrays_config(write_npz(tmp_path / 'f.npz')))
  assert ds.modalities == ('audio', 'video', 'text')
  assert ds.num_classes == 3
  assert ds.sample_shapes == {'audio': (6,), 'video': (4, 4, 3), 'text': (5,)}
  assert {k: len(v) for k, v in ds.splits.items()} == {'train': 18, 'val': 6, 'test': 6}
  item = ds.splits['train'][0]
  assert item['label'].dtype == np.int32 and item['audio'].dtype == np.float32


@pytest.mark.parametrize('override, message', [
    ({'label': None}, "missing key 'label'"),
    ({'split': None}, "missing key 'split'"),
    ({'text': np.zeros((29, 5), np.float32)}, "'text' has 29 rows but 'label' has 30"),
    ({'label': np.array([0, 1, 2, -1] + [0] * 26)}, r"must be in \[0, 3\); row 3 has -1"),
    ({'label': np.full(30, 1.5)}, "'label' must be a 1-D integer array"),
    ({'split': np.zeros(30, np.int64)}, "split 'val'"),
    ({'split': np.full(30, 5)}, 'found \\[5\\]'),
    ({'audio': np.full((30, 6), np.nan, np.float32)}, "'audio' contains NaN"),
    ({'audio': None, 'video': None}, 'at least 2 modality arrays'),
])
def test_arrays_bad_input_names_the_file_and_key(tmp_path, override, message):
  path = write_npz(tmp_path / 'bad.npz', **override)
  with pytest.raises(ValueError, match=message) as e:
    data_pipelines.load(arrays_config(path))
  assert 'bad.npz' in str(e.value)


def test_arrays_label_outside_the_configured_class_count(tmp_path):
  cfg = arrays_config(write_npz(tmp_path / 'f.npz'))
  cfg.num_classes = 2
  with pytest.raises(ValueError, match=r"in \[0, 2\); row 2 has 2"):
    data_pipelines.load(cfg)


def test_arrays_missing_or_unreadable_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothere.npz'):
    data_pipelines.load(arrays_config(str(tmp_path / 'nothere.npz')))
  junk = tmp_path / 'junk.npz'
  junk.write_bytes(b'not a zip file')
  with pytest.raises(ValueError, match='junk.npz: not a readable .npz'):
    data_pipelines.load(arrays_config(str(junk)))
  with pytest.raises(ValueError, match='config.data.path is empty'):
    data_pipelines.load(arrays_config(''))


def test_unknown_pipeline_name():
  with pytest.raises(ValueError, match="unknown data.name 'nope'"):
    data_pipelines.load(ml_collections.ConfigDict(dict(name='nope')))
