"""UCF101: the class rule (classes whose videos carry audio), the official splits
with a group hold-out, and a fixture in the real layout read through Grain."""

import os
import shutil

import numpy as np
import pytest

import data_pipelines
from configs.lib import base, datasets
from data_pipelines import common, frames, media, prepare, prepared, splits, ucf101
from media_fixtures import write_video

# ApplyLipstick gets no audio track, so the class is out; one Archery clip has no
# track and one is too short for 4 frames at 1 fps: both are left out.
CLASSES = ('ApplyEyeMakeup', 'ApplyLipstick', 'Archery')
AUDIO = {'ApplyEyeMakeup': True, 'ApplyLipstick': False, 'Archery': True}
NO_TRACK = 'Archery/v_Archery_g02_c02.avi'
SHORT = 'Archery/v_Archery_g01_c02.avi'


def clip_id(cls, group, clip):
  return f'{cls}/v_{cls}_g{group:02d}_c{clip:02d}.avi'


def write_raw(raw):
  ids = [clip_id(c, g, k) for c in CLASSES for g in (1, 2, 3) for k in (1, 2)]
  for i in ids:
    cls = i.split('/')[0]
    audio = AUDIO[cls] and i != NO_TRACK
    write_video(os.path.join(raw, 'UCF-101', i), 2.5 if i == SHORT else 4.5, fps=25, codec='mpeg4',
                audio_codec='mp3' if audio else None, step=3)
  lists = os.path.join(raw, 'ucfTrainTestlist')
  os.makedirs(lists)
  with open(os.path.join(lists, 'classInd.txt'), 'w') as f:
    f.write(''.join(f'{n} {c}\r\n' for n, c in enumerate(CLASSES, 1)))  # the official files end lines in CRLF
  for fold in (1, 2, 3):  # split k tests group k
    with open(os.path.join(lists, f'trainlist0{fold}.txt'), 'w') as f:
      f.write(''.join(f'{i} {CLASSES.index(i.split("/")[0]) + 1}\r\n' for i in ids if f'_g0{fold}_' not in i))
    with open(os.path.join(lists, f'testlist0{fold}.txt'), 'w') as f:
      f.write(''.join(f'{i}\r\n' for i in ids if f'_g0{fold}_' in i))
  return ids


def data_config(data_dir, **overrides):
  c = base.get_config()
  datasets.ucf101(c)
  c.data.update(dir=data_dir, num_workers=0, num_classes=2, video_shape=(4, 32, 32, 3))
  c.data.update(overrides)
  return c.data


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
  root = tmp_path_factory.mktemp('ucf')
  raw, out = str(root / 'raw'), str(root / 'prepared')
  ids = write_raw(raw)
  path = prepare.prepare('ucf101', raw, out, num_classes=2, progress=False)
  return {'raw': raw, 'out': out, 'path': path, 'ids': ids}


def test_classes_are_the_ones_with_audio_and_the_rest_is_listed(fixture):
  meta = prepared.open_prepared(fixture['out'], 'ucf101', ucf101.VERSION).metadata
  assert meta['classes'] == ['ApplyEyeMakeup', 'Archery']
  kept = [i for i in fixture['ids'] if AUDIO[i.split('/')[0]] and i not in (NO_TRACK, SHORT)]
  assert meta['splits']['clips'] == kept and meta['skipped'] == []
  excluded = {os.path.relpath(f, os.path.join(fixture['raw'], 'UCF-101')): r for f, r in meta['excluded']}
  assert excluded[NO_TRACK] == 'no audio track' and excluded[SHORT] == '3 frames at 1 fps; needs 4'
  assert {i for i, r in excluded.items() if r == 'no audio track'} == \
      {i for i in fixture['ids'] if i.startswith('ApplyLipstick/')} | {NO_TRACK}
  with open(os.path.join(fixture['path'], 'excluded.tsv')) as f:
    assert len(f.readlines()) == 1 + len(excluded)
  source = prepared.open_prepared(fixture['out'], 'ucf101', ucf101.VERSION).builder.as_data_source('clips')
  labels = {source[k]['id'].decode(): int(source[k]['label']) for k in range(len(source))}
  assert all(labels[i] == (0 if i.startswith('ApplyEyeMakeup/') else 1) for i in kept)
  assert source[0]['audio'].shape == (257, 136) and len(source[0]['frames']) == 4


def test_official_split_with_a_group_holdout(fixture):
  meta = prepared.open_prepared(fixture['out'], 'ucf101', ucf101.VERSION).metadata
  ids = meta['splits']['clips']
  for fold in (1, 2, 3):
    ds = data_pipelines.load(data_config(fixture['out'], fold=fold))
    members = {s: [ids[i] for i in ds.splits[s].records.indices] for s in splits.SPLITS}
    assert all(f'_g0{fold}_' in i for i in members['test'])
    assert sorted(members['test']) == sorted(i for i in ids if f'_g0{fold}_' in i)
    groups = {s: {ucf101.group_of(i) for i in members[s]} for s in splits.SPLITS}
    assert not groups['train'] & groups['val'] and not (groups['train'] | groups['val']) & groups['test']
    # two training groups per class: one is held out (at least one per class)
    assert sorted(g.split('_g')[0] for g in groups['val']) == ['ApplyEyeMakeup', 'Archery']
    assert len(members['train']) + len(members['val']) == sum(f'_g0{fold}_' not in i for i in ids)
  with pytest.raises(ValueError, match=r'fold must be one of \[1, 2, 3\]'):
    data_pipelines.load(data_config(fixture['out'], fold=4))


def test_group_holdout_matches_groups_exactly():
  ids = ['Diving/v_Diving_g05_c01.avi', 'Diving/v_Diving_g06_c01.avi',
         'CliffDiving/v_CliffDiving_g05_c01.avi', 'CliffDiving/v_CliffDiving_g07_c01.avi']
  for seed in range(6):
    kept, held = splits.stratified_group_holdout(ids, ucf101.group_of, ucf101.class_of, 0.1, seed)
    assert sorted(ucf101.class_of(i) for i in held) == ['CliffDiving', 'Diving']
    assert sorted(kept + held) == sorted(ids)


def test_loaded_items_clip_level_crop_and_unit_rgb(fixture):
  ds = data_pipelines.load(data_config(fixture['out'], video_shape=(4, 224, 224, 3)))
  assert ds.num_classes == 2 and ds.sample_shapes == {'audio': (257, 136), 'video': (4, 224, 224, 3)}
  item = ds.splits['test'][0]
  assert item['audio'].shape == (257, 136) and item['video'].shape == (4, 224, 224, 3)
  # RGB scaled to [0, 1] before the ImageNet normalisation (the reference feeds BGR 0-255)
  rgb = np.asarray(media.decode_jpeg(ds.splits['test'].records[0]['frames'][0]).resize((224, 224)))
  expected = (rgb[150, 100] / 255 - frames.IMAGENET_MEAN) / frames.IMAGENET_STD
  np.testing.assert_allclose(item['video'][0, 150, 100], expected, atol=0.02)
  train = ds.splits['train']
  record = train.records[0]
  out = train.train_transform(record, np.random.default_rng(4))
  np.testing.assert_array_equal(
      out['video'], frames.train_frames(record['frames'], 224, np.random.default_rng(4), per_frame=False))
  batch = next(common.train_batches(train, batch_size=2, seed=0))
  assert batch['video'].shape == (2, 4, 224, 224, 3) and batch['label'].dtype == np.int32


def test_class_count_is_checked_and_list_errors_name_the_file(fixture, tmp_path):
  with pytest.raises(ValueError, match='holds 2 classes but config.data.num_classes is 51'):
    data_pipelines.load(data_config(fixture['out'], num_classes=51))
  bad = tmp_path / 'classInd.txt'
  bad.write_text('1 A\n3 B\n')
  with pytest.raises(ValueError, match=r"classInd.txt:2: expected '2 <Class>'"):
    ucf101.read_class_index(str(bad))
  bad = tmp_path / 'trainlist01.txt'
  bad.write_text('A/v_A_g01_c01.avi 1\nA/clip.avi 1\n')
  with pytest.raises(ValueError, match='trainlist01.txt:2: expected'):
    ucf101.read_split_list(str(bad))
  os.makedirs(tmp_path / 'UCF-101')
  with pytest.raises(FileNotFoundError, match=f'{tmp_path}: not a complete UCF101 folder: missing ucfTrainTestlist/ '):
    prepare.prepare('ucf101', str(tmp_path), str(tmp_path / 'out'), progress=False)


def test_a_partial_copy_builds_the_classes_present_and_lists_the_missing(fixture, tmp_path):
  raw, out = str(tmp_path / 'raw'), str(tmp_path / 'out')
  shutil.copytree(fixture['raw'], raw)
  shutil.rmtree(os.path.join(raw, 'UCF-101', 'Archery'))  # a copy without one class folder
  path = prepare.prepare('ucf101', raw, out, num_classes=1, progress=False)
  meta = prepared.open_prepared(out, 'ucf101', ucf101.VERSION).metadata
  assert meta['classes'] == ['ApplyEyeMakeup'] and meta['missing_classes'] == ['Archery']
  assert meta['splits']['clips'] == [i for i in fixture['ids'] if i.startswith('ApplyEyeMakeup/')]
  missing = os.path.join(raw, 'UCF-101', 'Archery')
  assert [missing, 'no class folder in this copy (classInd.txt lists Archery)'] in meta['excluded']
  with open(os.path.join(path, 'excluded.tsv')) as f:
    assert f'{missing}\tno class folder in this copy (classInd.txt lists Archery)\n' in f.readlines()
  assert meta['official_splits']['1']['test'] == ['ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi',
                                                  'ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.avi']


@pytest.mark.parametrize('expected', [None, 3])
def test_the_class_count_is_checked_before_the_build(fixture, tmp_path, expected):
  out = str(tmp_path / 'out')
  with pytest.raises(ValueError) as e:
    prepare.prepare('ucf101', fixture['raw'], out, num_classes=expected, progress=False)
  n = expected or ucf101.NUM_CLASSES
  assert str(e.value) == (f"{fixture['raw']}: 2 UCF101 classes have videos with an audio track "
                          f'(ApplyEyeMakeup, Archery), expected {n} (--num_classes, config.data.num_classes)')
  assert not os.path.exists(out)


def test_a_class_left_without_a_usable_clip_stops_the_build(fixture, tmp_path):
  raw, out = str(tmp_path / 'raw'), str(tmp_path / 'out')
  shutil.copytree(fixture['raw'], raw)
  for i in fixture['ids']:  # Archery keeps only its clip too short for 4 frames (and the one without audio)
    if i.startswith('Archery/') and i not in (SHORT, NO_TRACK):
      os.remove(os.path.join(raw, 'UCF-101', i))
  with pytest.raises(ValueError) as e:
    prepare.prepare('ucf101', raw, out, num_classes=2, progress=False)
  assert str(e.value) == (f'{raw}: 1 UCF101 classes keep a usable clip (ApplyEyeMakeup), expected 2 '
                          '(--num_classes, config.data.num_classes); every clip of Archery was unusable or too short')
  assert not os.path.exists(out)
