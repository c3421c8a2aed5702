"""AVE: the published split files, and a fixture in the real layout (AVE/*.mp4 +
split files) built through TFDS ArrayRecord and read through Grain."""

import os

import numpy as np
import pytest

import data_pipelines
from configs.lib import base, datasets
from data_pipelines import ave, common, media, prepare, prepared, spectrogram
from media_fixtures import DATA, gray, read_lines, write_video

# --- the published lists ----------------------------------------------------------------


def test_published_split_files():
  lines = {s: read_lines(os.path.join('ave', f)) for s, f in ave.SPLIT_FILES.items()}
  assert {s: len(v) for s, v in lines.items()} == {'train': 3339, 'val': 402, 'test': 402}
  parsed = {s: ave.read_annotations(os.path.join(DATA, 'ave', f)) for s, f in ave.SPLIT_FILES.items()}
  events = {s: p[0] for s, p in parsed.items()}
  # unique ids 3312 / 401 / 402 (docs/methods.md#ave); one train segment, [0, 0], is empty
  assert {s: len(p[0]) + len(p[2]) for s, p in parsed.items()} == {'train': 3312, 'val': 401, 'test': 402}
  assert {s: len(p[1]) for s, p in parsed.items()} == {'train': 27, 'val': 1, 'test': 0}
  (where, problem), = parsed['train'][2]
  assert where.endswith('trainSet.txt:64') and 'segment [0, 0] s of VWi2ENBuTbw is empty' in problem
  assert not parsed['val'][2] and not parsed['test'][2]
  ids = {s: {e.id for e in v} for s, v in events.items()}
  assert (len(ids['train'] & ids['val']), len(ids['train'] & ids['test']), len(ids['val'] & ids['test'])) == (10, 8, 0)
  # a repeated id keeps its first line: -TCDqe327us first appears on line 188
  first = next(e for e in events['train'] if e.id == '-TCDqe327us')
  assert first.line.endswith('trainSet.txt:188')
  assert lines['train'][187].split('&')[0] == ave.CLASSES[first.label]


def test_the_28_classes_in_the_reference_code_order():
  categories = [line.split('&')[0] for line in read_lines(os.path.join('ave', 'trainSet.txt'))]
  assert set(categories) == set(ave.CLASSES) and len(ave.CLASSES) == 28
  assert list(dict.fromkeys(categories)) == list(ave.CLASSES)  # first-appearance order = code order
  code_order = {'Church bell': 0, 'Male speech, man speaking': 1, 'Frying (food)': 10, 'Shofar': 12,
                'Baby cry, infant cry': 19, 'Rodents, rats, mice': 25, 'Mandolin': 27}  # docs/methods.md#ave
  assert {c: ave.CLASSES.index(c) for c in code_order} == code_order


def test_malformed_lines_name_the_file_and_line(tmp_path):
  path = tmp_path / 'trainSet.txt'
  path.write_text('Category&VideoID&Quality&StartTime&EndTime\n'
                  'Bark&aaa&good&0&10\nBark&bbb&good\nKazoo&ccc&good&0&10\nBark&ddd&good&x&10\n'
                  'Bark&eee&good&5&3\nCat&aaa&good&1&2\n')
  events, repeats, bad = ave.read_annotations(str(path))
  assert [(e.id, e.label, e.start, e.end) for e in events] == [('aaa', 2, 0.0, 10.0)]
  assert [w.rsplit(':', 1)[1] for w, _ in bad] == ['3', '4', '5', '6']
  assert "unknown category 'Kazoo'" in bad[1][1] and 'not numbers' in bad[2][1] and 'is empty' in bad[3][1]
  assert repeats == [(f'{path}:7', 'repeats video id aaa of line 2; the first line is kept')]


# --- a prepared fixture -----------------------------------------------------------------

SEGMENT = (1, 4)  # three seconds: three 1-fps frames, one drawn from the segment


def fixture_lines():
  """Real lines (ids, categories) with segments that fit the 5 s fixture videos."""
  real = {s: read_lines(os.path.join('ave', f)) for s, f in ave.SPLIT_FILES.items()}
  dup = [line for line in real['train'] if line.split('&')[1] == '-TCDqe327us']
  picked = {'train': real['train'][:3] + dup, 'val': real['val'][:2], 'test': real['test'][:2]}
  return {s: ['&'.join(line.split('&')[:3] + [str(SEGMENT[0]), str(SEGMENT[1])]) for line in v]
          for s, v in picked.items()}


def write_raw(raw, lines):
  for s, f in ave.SPLIT_FILES.items():
    os.makedirs(raw, exist_ok=True)
    with open(os.path.join(raw, f), 'w') as out:
      out.write('\n'.join(lines[s]) + '\n')
  for video_id in {line.split('&')[1] for v in lines.values() for line in v}:
    write_video(os.path.join(raw, 'AVE', video_id + '.mp4'), 5.0, fps=10, codec='libx264',
                audio_codec='aac', step=5)


def data_config(data_dir, **overrides):
  c = base.get_config()
  datasets.ave(c)
  c.data.update(dir=data_dir, num_workers=0, video_shape=(4, 32, 32, 3))
  c.data.update(overrides)
  return c.data


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
  root = tmp_path_factory.mktemp('ave')
  raw, out = str(root / 'raw'), str(root / 'prepared')
  lines = fixture_lines()
  write_raw(raw, lines)
  path = prepare.prepare('ave', raw, out, progress=False)
  return {'raw': raw, 'out': out, 'path': path, 'lines': lines}


def test_prepared_splits_and_the_repeated_id(fixture):
  meta = prepared.open_prepared(fixture['out'], 'ave', ave.VERSION).metadata
  assert {s: len(v) for s, v in meta['splits'].items()} == {'train': 4, 'val': 2, 'test': 2}
  assert meta['skipped'] == [] and len(meta['excluded']) == 1
  assert 'repeats video id -TCDqe327us' in meta['excluded'][0][1]
  assert meta['splits']['train'] == [line.split('&')[1] for line in fixture['lines']['train'][:4]]


def test_record_is_the_cut_event_segment(fixture):
  source = prepared.open_prepared(fixture['out'], 'ave', ave.VERSION).builder.as_data_source('train')
  record = source[0]
  video_id = record['id'].decode()
  mp4 = os.path.join(fixture['raw'], 'AVE', video_id + '.mp4')
  assert record['label'] == ave.CLASSES.index(fixture['lines']['train'][0].split('&')[0])
  assert record['audio'].shape == (257, 1004) and record['audio'].dtype == np.float16
  wave = media.read_audio_track(mp4, 16000)
  segment = wave[SEGMENT[0] * 16000:SEGMENT[1] * 16000]
  expected = spectrogram.log_psd(spectrogram.loop_to_length(segment, 160000), 16000, 512, 353)
  np.testing.assert_allclose(record['audio'].astype(np.float32), expected, atol=0.02, rtol=2e-3)
  # the 1-fps frames of seconds 1, 2, 3 (frames 10, 20, 30) and one more from [1, 4) s, in order
  means = np.array([np.asarray(media.decode_jpeg(b))[24:, :, 0].mean() for b in record['frames']])
  assert len(means) == 4 and np.all(np.diff(means) > 0)
  for i in (10, 20, 30):
    assert np.min(np.abs(means - gray(i, 5))) < 4
  assert gray(10, 5) - 4 < means.min() and means.max() < gray(39, 5) + 4


def test_load_shapes_labels_and_deterministic_batches(fixture):
  ds = data_pipelines.load(data_config(fixture['out'], video_shape=(4, 224, 224, 3)))
  assert ds.num_classes == 28 and ds.sample_shapes == {'audio': (257, 1004), 'video': (4, 224, 224, 3)}
  assert {s: len(v) for s, v in ds.splits.items()} == {'train': 4, 'val': 2, 'test': 2}
  item = ds.splits['val'][1]
  assert item['audio'].shape == (257, 1004) and item['audio'].dtype == np.float32
  assert item['video'].shape == (4, 224, 224, 3) and item['video'].dtype == np.float32
  assert int(item['label']) == ave.CLASSES.index(fixture['lines']['val'][1].split('&')[0])
  small = data_pipelines.load(data_config(fixture['out']))
  a = next(common.train_batches(small.splits['train'], batch_size=4, seed=3))
  b = next(common.train_batches(small.splits['train'], batch_size=4, seed=3))
  np.testing.assert_array_equal(a['video'], b['video'])
  np.testing.assert_array_equal(a['label'], b['label'])
  # the per-frame crops of the training split are not the evaluation resize
  evaluated = {float(x['audio'].sum()): x['video'] for x in (small.splits['train'][i] for i in range(4))}
  for audio, video in zip(a['audio'], a['video']):
    assert not np.array_equal(evaluated[float(audio.sum())], video)


@pytest.mark.parametrize('case', ['empty_segment', 'missing_video', 'unknown_category'])
def test_bad_input_names_the_file(tmp_path, case):
  raw, out = str(tmp_path / 'raw'), str(tmp_path / 'out')
  lines = {'train': ['Bark&aaa&good&1&4'], 'val': ['Cat&bbb&good&1&4'], 'test': ['Goat&ccc&good&1&4']}
  write_raw(raw, lines)
  if case == 'empty_segment':
    lines['train'].append('Bark&ddd&good&3&3')
    expected = (f"{os.path.join(raw, 'trainSet.txt')}:2", 'event segment [3, 3] s of ddd is empty')
  elif case == 'missing_video':
    lines['val'].append('Cat&eee&good&1&4')
    expected = (os.path.join(raw, 'AVE', 'eee.mp4'), f"missing video file (listed at {os.path.join(raw, 'valSet.txt')}:2)")
  else:
    lines['test'].append('Kazoo&fff&good&1&4')
    expected = (f"{os.path.join(raw, 'testSet.txt')}:2", "unknown category 'Kazoo'")
  for s, f in ave.SPLIT_FILES.items():
    with open(os.path.join(raw, f), 'w') as handle:
      handle.write('\n'.join(lines[s]) + '\n')
  with pytest.raises(media.BadInput, match='--skip_bad') as e:
    prepare.prepare('ave', raw, out, progress=False)
  assert str(e.value).startswith(f'{expected[0]}: {expected[1]}')
  assert not os.path.exists(os.path.join(out, 'ave', ave.VERSION))
  prepare.prepare('ave', raw, out, skip_bad=True, progress=False)
  meta = prepared.open_prepared(out, 'ave', ave.VERSION).metadata
  assert meta['skipped'] == [list(expected)]
  assert sum(len(v) for v in meta['splits'].values()) == 3


def test_missing_split_file_or_folder(tmp_path):
  raw = str(tmp_path / 'raw')
  write_raw(raw, {'train': ['Bark&aaa&good&1&4'], 'val': ['Cat&bbb&good&1&4'], 'test': ['Goat&ccc&good&1&4']})
  os.remove(os.path.join(raw, 'valSet.txt'))
  layout = '(the published layout: AVE/<VideoID>.mp4, trainSet.txt, valSet.txt, testSet.txt)'
  with pytest.raises(FileNotFoundError) as e:
    prepare.prepare('ave', raw, str(tmp_path / 'out'), progress=False)
  assert str(e.value) == f'{raw}: not a complete AVE folder: missing valSet.txt {layout}'
  with pytest.raises(FileNotFoundError) as e:
    ave.scan(str(tmp_path))  # the builder's own scan says the same
  assert str(e.value) == (f'{tmp_path}: not a complete AVE folder: missing AVE/, trainSet.txt, valSet.txt, '
                          f'testSet.txt {layout}')
  with pytest.raises(FileNotFoundError, match='valSet.txt: missing AVE split file'):
    ave.read_annotations(os.path.join(raw, 'valSet.txt'))
  assert not os.path.exists(tmp_path / 'out')


# A clip shorter than its event segment: bbb lasts 0.6 s but is annotated [0, 10] s. ccc ends
# 0.3 s before its segment [1, 4] does, within the tolerance; ddd's video (eee's audio) stops at 2 s.
SHORT_CLIPS = {'bbb': (0.6, None), 'ccc': (3.7, None), 'ddd': (2.0, 5.0), 'eee': (5.0, 2.0)}


def test_a_clip_shorter_than_its_segment_is_refused(tmp_path):
  raw, out = str(tmp_path / 'raw'), str(tmp_path / 'out')
  lines = {'train': ['Bark&aaa&good&1&4', 'Cat&bbb&good&0&10', 'Goat&ccc&good&1&4'],
           'val': ['Cat&ddd&good&1&4', 'Bark&aaa&good&1&4'], 'test': ['Goat&eee&good&1&4', 'Bark&aaa&good&1&4']}
  write_raw(raw, {'train': lines['train'][:1], 'val': [], 'test': []})
  for s, f in ave.SPLIT_FILES.items():
    with open(os.path.join(raw, f), 'w') as handle:
      handle.write('\n'.join(lines[s]) + '\n')
  for video_id, (video_s, audio_s) in SHORT_CLIPS.items():
    write_video(os.path.join(raw, 'AVE', video_id + '.mp4'), video_s, fps=10, codec='libx264',
                audio_codec='aac', step=5, audio_seconds=audio_s)
  mp4 = {i: os.path.join(raw, 'AVE', i + '.mp4') for i in SHORT_CLIPS}
  with pytest.raises(media.BadInput, match='--skip_bad') as e:
    prepare.prepare('ave', raw, out, progress=False)
  message = str(e.value)
  assert message.startswith(f"{mp4['bbb']}: the audio track lasts 0.6") and '[0, 10) s' in message
  assert f"{os.path.join(raw, 'trainSet.txt')}:2" in message
  assert not os.path.exists(os.path.join(out, 'ave', ave.VERSION))
  prepare.prepare('ave', raw, out, skip_bad=True, progress=False)
  meta = prepared.open_prepared(out, 'ave', ave.VERSION).metadata
  assert meta['splits'] == {'train': ['aaa', 'ccc'], 'val': ['aaa'], 'test': ['aaa']}
  skipped = dict(meta['skipped'])
  assert set(skipped) == {mp4['bbb'], mp4['ddd'], mp4['eee']}
  assert skipped[mp4['bbb']].startswith('the audio track lasts 0.6')
  assert skipped[mp4['ddd']].startswith('the video lasts 2.0') and '[1, 4) s' in skipped[mp4['ddd']]
  assert skipped[mp4['eee']].startswith('the audio track lasts 2.0')
  with open(os.path.join(out, 'ave', ave.VERSION, 'skipped.tsv')) as f:
    assert sorted(f.read().splitlines()[1:]) == sorted(f'{p}\t{r}' for p, r in meta['skipped'])

  # a split left without a usable clip is refused, by name
  with open(os.path.join(raw, 'valSet.txt'), 'w') as handle:
    handle.write(lines['val'][0] + '\n')
  with pytest.raises(media.BadInput) as e:
    prepare.prepare('ave', raw, str(tmp_path / 'out2'), skip_bad=True, progress=False)
  assert str(e.value).startswith(f"{raw}: no usable clip in the val split: all 1 were left out (e.g. {mp4['ddd']}: "
                                 'the video lasts 2.0')
  assert not os.path.exists(tmp_path / 'out2')


def test_the_raw_folder_is_scanned_once(tmp_path, monkeypatch):
  raw = str(tmp_path / 'raw')
  write_raw(raw, {'train': ['Bark&aaa&good&1&4'], 'val': ['Cat&aaa&good&1&4'], 'test': ['Goat&aaa&good&1&4']})
  calls = []
  monkeypatch.setattr(ave, 'scan', lambda raw_dir, scan=ave.scan: calls.append(raw_dir) or scan(raw_dir))
  prepare.prepare('ave', raw + '/', str(tmp_path / 'out'), progress=False)
  assert calls == [raw]
