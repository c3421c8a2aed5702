"""CREMA-D: the published lists, the splits, and a fixture in the real layout
built through TFDS ArrayRecord and read through Grain."""

import json
import os

import numpy as np
import pytest

import data_pipelines
from configs.lib import base, datasets
from data_pipelines import common, cremad, frames, media, prepare, prepared, spectrogram, splits
from media_fixtures import DATA, gray, write_cremad_clip

CLIPS_CSV = os.path.join(DATA, 'cremad_clips.csv')

# --- the published lists ----------------------------------------------------------------


def test_published_clip_list():
  clips = cremad.read_clip_list(CLIPS_CSV)
  assert len(clips) == 7442
  actors = sorted({cremad.actor_of(c) for c in clips})
  assert len(actors) == 91 and actors[0] == '1001' and actors[-1] == '1091'
  counts = np.bincount(list(clips.values()), minlength=6)
  assert dict(zip(cremad.CLASSES, counts.tolist())) == {
      'NEU': 1087, 'HAP': 1271, 'SAD': 1271, 'FEA': 1271, 'DIS': 1271, 'ANG': 1271}
  assert clips['1026_IEO_ANG_HI'] == 5 and clips['1001_IEO_NEU_XX'] == 0  # docs/methods.md#crema-d order


def test_ogm_split_and_its_validation_holdout():
  train, test = cremad.read_clip_list(cremad.OGM_TRAIN), cremad.read_clip_list(cremad.OGM_TEST)
  assert (len(train), len(test)) == (6698, 744)
  assert not set(train) & set(test) and set(train) | set(test) == set(cremad.read_clip_list(CLIPS_CSV))
  cfg = data_config('', split='ogm')
  a = cremad.assign_splits(cfg, [])
  assert [len(a[s]) for s in splits.SPLITS] == [6698 - 670, 670, 744]  # round(0.1 * 6698) = 670
  assert not set(a['train']) & set(a['val']) and set(a['train']) | set(a['val']) == set(train)
  assert cremad.assign_splits(cfg, []) == a
  cfg.split_seed = 1
  assert set(cremad.assign_splits(cfg, [])['val']) != set(a['val'])


@pytest.mark.parametrize('fold, sizes', [(1, (4043, 878, 899)), (2, (4024, 881, 915)), (3, (4017, 869, 934))])
def test_vavl_folds_are_actor_disjoint_with_the_reference_counts(fold, sizes):
  a = cremad.assign_splits(data_config('', split='vavl', fold=fold), [])
  assert tuple(len(a[s]) for s in splits.SPLITS) == sizes  # docs/methods.md#crema-d table
  actors = {s: {cremad.actor_of(i) for i in a[s]} for s in splits.SPLITS}
  assert [len(actors[s]) for s in splits.SPLITS] == [63, 14, 14]
  assert not (actors['train'] & actors['val'] or actors['train'] & actors['test'] or actors['val'] & actors['test'])
  assert set(a['test']) <= set(cremad.read_clip_list(CLIPS_CSV))


def test_generated_kfold_is_actor_disjoint_and_tests_every_actor_once():
  ids = list(cremad.read_clip_list(CLIPS_CSV))
  tested = []
  for fold in range(1, 6):
    a = cremad.assign_splits(data_config('', split='kfold', fold=fold, num_folds=5), ids)
    actors = {s: {cremad.actor_of(i) for i in a[s]} for s in splits.SPLITS}
    assert not (actors['train'] & actors['val'] or actors['train'] & actors['test'] or actors['val'] & actors['test'])
    assert sorted(a['train'] + a['val'] + a['test']) == sorted(ids)
    assert {len(actors['val']), len(actors['test'])} <= {18, 19}  # 91 actors in 5 parts: 19, 18, 18, 18, 18
    tested += sorted(actors['test'])
  assert sorted(tested) == sorted({cremad.actor_of(i) for i in ids})  # 91 actors, each tested once
  again = cremad.assign_splits(data_config('', split='kfold', fold=2, num_folds=5), ids)
  other = cremad.assign_splits(data_config('', split='kfold', fold=2, num_folds=5, split_seed=3), ids)
  assert again == cremad.assign_splits(data_config('', split='kfold', fold=2, num_folds=5), ids)
  assert set(other['test']) != set(again['test'])


def test_user_split_json(tmp_path):
  flat = tmp_path / 'flat.json'
  flat.write_text(json.dumps({'train': ['1001_DFA_ANG_XX.wav-3'], 'val': ['1002_DFA_ANG_XX.wav'],
                              'test': ['1003_DFA_ANG_XX']}))
  a = cremad.assign_splits(data_config('', split='json', split_file=str(flat)), [])
  assert a == {'train': ['1001_DFA_ANG_XX'], 'val': ['1002_DFA_ANG_XX'], 'test': ['1003_DFA_ANG_XX']}
  folded = tmp_path / 'folds.json'
  folded.write_text(json.dumps({'1': {'train': ['a'], 'val': ['b'], 'test': ['c']},
                                '2': {'train': ['b'], 'val': ['c'], 'test': ['a']}}))
  assert splits.read_split_json(str(folded), 2)['test'] == ['a']
  with pytest.raises(ValueError, match='folds.json: has neither .* nor fold key "7"'):
    splits.read_split_json(str(folded), 7)
  overlap = tmp_path / 'overlap.json'
  overlap.write_text(json.dumps({'train': ['a', 'b'], 'val': ['b'], 'test': ['c']}))
  with pytest.raises(ValueError, match=r"overlap.json: clips appear in two splits: \{'train/val': 1\}"):
    splits.read_split_json(str(overlap))
  broken = tmp_path / 'broken.json'
  broken.write_text('{"train": [')
  with pytest.raises(ValueError, match='broken.json: not valid JSON'):
    splits.read_split_json(str(broken))
  with pytest.raises(ValueError, match="split_file is empty"):
    cremad.assign_splits(data_config('', split='json'), [])
  with pytest.raises(ValueError, match="unknown config.data.split 'random'"):
    cremad.assign_splits(data_config('', split='random'), [])


@pytest.mark.parametrize('name, message', [
    ('1001_DFA_XYZ_XX', "unknown emotion code 'XYZ'"),
    ('1001_ABC_ANG_XX', "unknown sentence code 'ABC'"),
    ('1001_DFA_ANG_ZZ', "unknown level code 'ZZ'"),
    ('1001-DFA-ANG-XX', 'is not a CREMA-D clip name'),
])
def test_parse_clip_id_rejects_bad_names(name, message):
  with pytest.raises(ValueError, match=message):
    cremad.parse_clip_id(name)


def test_clip_list_errors_name_the_file_and_line(tmp_path):
  path = tmp_path / 'list.csv'
  path.write_text('1001_DFA_ANG_XX,ANG\n1001_DFA_HAP_XX,SAD\n')
  with pytest.raises(ValueError, match=r"list.csv:2: label 'SAD' disagrees with the name"):
    cremad.read_clip_list(str(path))
  path.write_text('1001_DFA_ANG_XX;ANG\n')
  with pytest.raises(ValueError, match=r"list.csv:1: expected '<clip id>,<LABEL>'"):
    cremad.read_clip_list(str(path))


# --- a prepared fixture -----------------------------------------------------------------


def data_config(data_dir, **overrides):
  c = base.get_config()
  datasets.cremad(c)
  c.data.dir = data_dir
  c.data.num_workers = 0
  c.data.video_shape = (3, 32, 32, 3)
  c.data.update(overrides)
  return c.data


def pick_fixture_clips():
  """Two clips from each of VAVL fold 1's train/val/test and of the OGM train/val/test."""
  chosen = []
  for cfg in (data_config('', split='vavl', fold=1), data_config('', split='ogm')):
    a = cremad.assign_splits(cfg, [])
    for s in splits.SPLITS:
      chosen += [i for i in sorted(a[s]) if i not in chosen][:2]
  return chosen


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
  root = tmp_path_factory.mktemp('cremad')
  raw, out = str(root / 'raw'), str(root / 'prepared')
  ids = pick_fixture_clips()
  durations = {}
  for k, clip_id in enumerate(ids):
    durations[clip_id] = 1.4 + 0.1 * k  # under 2 s: only two 1-fps frames, one is added
    write_cremad_clip(raw, clip_id, seconds=durations[clip_id])
  path = prepare.prepare('cremad', raw, out, progress=False)
  return {'raw': raw, 'out': out, 'path': path, 'ids': sorted(ids), 'durations': durations}


def split_ids(fixture, ds, split):
  """The clip ids of a loaded split, through its record indices and the metadata."""
  ids = prepared.open_prepared(fixture['out'], 'cremad', cremad.VERSION).metadata['splits']['clips']
  return [ids[i] for i in ds.splits[split].records.indices]


def load(fixture, **overrides):
  return data_pipelines.load(data_config(fixture['out'], **overrides))


def test_prepared_records_follow_the_reference_preprocessing(fixture):
  meta = prepared.open_prepared(fixture['out'], 'cremad', cremad.VERSION).metadata
  assert meta['splits']['clips'] == fixture['ids'] and meta['skipped'] == [] and meta['classes'] == list(cremad.CLASSES)
  assert os.path.isfile(os.path.join(fixture['path'], 'skipped.tsv'))
  source = prepared.open_prepared(fixture['out'], 'cremad', cremad.VERSION).builder.as_data_source('clips')
  assert len(source) == len(fixture['ids'])
  record = source[3]
  clip_id = record['id'].decode()
  assert clip_id == fixture['ids'][3] and record['label'] == cremad.parse_clip_id(clip_id).label
  assert record['audio'].dtype == np.float16 and record['audio'].shape == (257, 188)
  wave = media.read_wav(os.path.join(fixture['raw'], 'AudioWAV', clip_id + '.wav'), 22050)
  expected = spectrogram.log_stft(spectrogram.loop_to_length(wave, 66150), 512, 353)
  np.testing.assert_allclose(record['audio'].astype(np.float32), expected, atol=0.01, rtol=2e-3)
  assert len(record['frames']) == 3
  means = [np.asarray(media.decode_jpeg(b))[24:, :, 0].mean() for b in record['frames']]
  # 1.4-2.5 s clips: the frames of seconds 0 and 1, plus one drawn from the clip, in time order
  assert abs(means[0] - gray(0)) < 4 and np.all(np.diff(means) > 0)
  assert any(abs(m - gray(30)) < 4 for m in means[1:])


def test_load_gives_the_real_shapes_and_labels(fixture):
  ds = load(fixture, split='vavl', fold=1, video_shape=(3, 224, 224, 3))
  assert ds.modalities == ('audio', 'video') and ds.num_classes == 6
  assert ds.sample_shapes == {'audio': (257, 188), 'video': (3, 224, 224, 3)}
  for split in splits.SPLITS:
    ids = split_ids(fixture, ds, split)
    assert len(ids) >= 2
    for k, clip_id in enumerate(ids[:2]):
      item = ds.splits[split][k]
      assert item['audio'].shape == (257, 188) and item['audio'].dtype == np.float32
      assert item['video'].shape == (3, 224, 224, 3) and item['video'].dtype == np.float32
      assert item['label'].dtype == np.int32 and int(item['label']) == cremad.parse_clip_id(clip_id).label
  batch = next(common.train_batches(ds.splits['train'], batch_size=2, seed=0))
  assert batch['video'].shape == (2, 3, 224, 224, 3) and batch['audio'].shape == (2, 257, 188)


def test_split_membership_follows_the_lists(fixture):
  for cfg in ({'split': 'vavl', 'fold': 1}, {'split': 'ogm'}):
    ds = load(fixture, **cfg)
    expected = cremad.assign_splits(data_config('', **cfg), [])
    for split in splits.SPLITS:
      assert sorted(split_ids(fixture, ds, split)) == sorted(set(expected[split]) & set(fixture['ids']))
  ds = load(fixture, split='kfold', num_folds=3, fold=2)
  actors = {s: {cremad.actor_of(i) for i in split_ids(fixture, ds, s)} for s in splits.SPLITS}
  assert not (actors['train'] & actors['val'] or actors['train'] & actors['test'] or actors['val'] & actors['test'])
  assert sum(len(ds.splits[s]) for s in splits.SPLITS) == len(fixture['ids'])


def test_training_batches_are_seeded_augmented_per_epoch_and_resumable(fixture):
  ds = load(fixture, split='kfold', num_folds=3, fold=1)
  train = ds.splits['train']
  n = len(train)
  first = common.train_batches(train, batch_size=n, seed=0)
  e1, e2 = next(first), next(first)
  repeat = next(common.train_batches(train, batch_size=n, seed=0))
  for key in ('audio', 'video', 'label'):
    np.testing.assert_array_equal(repeat[key], e1[key])
  other = next(common.train_batches(train, batch_size=n, seed=1))
  assert not np.array_equal(other['video'], e1['video'])
  # The same clip (matched by its spectrogram) gets a new crop every epoch; audio is untouched.
  key = lambda b: [float(a.sum()) for a in b['audio']]
  where = {k: i for i, k in enumerate(key(e2))}
  for i, k in enumerate(key(e1)):
    j = where[k]
    np.testing.assert_array_equal(e1['audio'][i], e2['audio'][j])
    assert not np.array_equal(e1['video'][i], e2['video'][j])
  state = first.get_state()
  expected = next(first)
  resumed = common.train_batches(train, batch_size=n, seed=0)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['video'], expected['video'])


def test_eval_splits_are_a_plain_resize(fixture):
  ds = load(fixture, split='vavl', fold=1)
  test = ds.splits['test']
  np.testing.assert_array_equal(test[0]['video'], frames.eval_frames(test.records[0]['frames'], 32))
  batches = list(common.eval_batches(test, batch_size=3))
  assert len(batches) == 1 and batches[0]['mask'].tolist() == [True, True, False]
  np.testing.assert_array_equal(batches[0]['video'][0], test[0]['video'])


def test_two_workers_give_the_same_batches_as_none(fixture):
  ds = load(fixture, split='kfold', num_folds=3, fold=1)
  train = ds.splits['train']
  serial = common.train_batches(train, batch_size=2, seed=5)
  expected = [next(serial) for _ in range(3)]
  train.num_workers = 2
  parallel = common.train_batches(train, batch_size=2, seed=5)
  try:
    for e in expected:
      got = next(parallel)
      for key in ('audio', 'video', 'label'):
        np.testing.assert_array_equal(got[key], e[key])
  finally:
    parallel.close()


def test_process_shards_are_disjoint_and_equal(fixture):
  ds = load(fixture, split='kfold', num_folds=3, fold=1)
  train = ds.splits['train']
  seen = []
  for index in range(2):
    ds_shard = common.train_dataset(train, batch_size=1, seed=0, shard=(index, 2))
    n = len(train) // 2
    seen.append(sorted(float(ds_shard[i]['audio'].sum()) for i in range(n)))
  assert len(seen[0]) == len(seen[1]) and not set(seen[0]) & set(seen[1])
  with pytest.raises(ValueError, match=r'shard index 2 is not in \[0, 2\)'):
    common.train_dataset(train, batch_size=1, seed=0, shard=(2, 2))


def test_config_is_checked_against_the_prepared_data(fixture):
  with pytest.raises(ValueError, match='holds 6 classes but config.data.num_classes is 5'):
    load(fixture, num_classes=5)
  with pytest.raises(ValueError, match=r'audio spectrograms are \[257, 188\] but config.data.audio_shape'):
    load(fixture, audio_shape=(128, 188))
  with pytest.raises(ValueError, match=r'video_shape must be \(3, S, S, 3\)'):
    load(fixture, video_shape=(4, 32, 32, 3))
  with pytest.raises(ValueError, match='config.data.dir is empty'):
    data_pipelines.load(data_config(''))
  with pytest.raises(FileNotFoundError, match='no prepared cremad dataset .* python -m data_pipelines.prepare'):
    data_pipelines.load(data_config(fixture['raw']))


def test_training_runs_from_the_prepared_dataset(fixture, tmp_path):
  from mlb_jax import build, loop
  c = base.get_config()
  datasets.cremad(c)
  c.data.dir = fixture['out']
  c.data.update(split='kfold', num_folds=3, fold=1, num_workers=0, video_shape=(3, 16, 16, 3),
                batch_size=2, eval_batch_size=4)
  c.model.encoders = {'audio': 'mlp', 'video': 'mlp'}
  c.model.mlp.hidden = (8,)
  c.model.features = 8
  c.train.num_steps = 2
  c.train.eval_every = 2
  c.train.log_every = 1
  [results] = loop.train_and_evaluate(c, str(tmp_path / 'w'))
  assert tuple(results['config']['model']['mlp']['hidden']) == (8,)
  assert set(results['test']) >= {'fused', 'audio', 'video'}
  assert 0.0 <= results['test']['fused']['accuracy'] <= 1.0
  # the paper's config (two ResNet-18s) builds on the prepared data at the real shapes
  from configs import cremad_mlb
  paper = cremad_mlb.get_config()
  paper.data.update(dir=fixture['out'], split='kfold', num_folds=3, num_workers=0)
  exp = build.build(paper)
  assert exp.dataset.sample_shapes == {'audio': (257, 188), 'video': (3, 224, 224, 3)}
  assert exp.dataset.splits['train'][0]['video'].shape == (3, 224, 224, 3)
