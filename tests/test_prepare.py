"""`python -m data_pipelines.prepare`: every kind of bad input stops the build with a
message naming the file, leaves nothing half-written, and `--skip_bad` lists it."""

import os
import subprocess
import sys

import pytest

from data_pipelines import media, prepare, prepared
from media_fixtures import write_cremad_clip, write_video, write_wav

GOOD = '1001_DFA_ANG_XX'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def corrupt(path):
  with open(path, 'wb') as f:
    f.write(b'\x00garbage' * 300)


def truncate(path, fraction):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:int(len(data) * fraction)])


def corrupt_wav(raw):
  write_cremad_clip(raw, '1002_DFA_HAP_XX')
  corrupt(os.path.join(raw, 'AudioWAV', '1002_DFA_HAP_XX.wav'))
  return 'AudioWAV/1002_DFA_HAP_XX.wav', 'unreadable audio file'


def truncated_wav(raw):
  write_cremad_clip(raw, '1003_DFA_SAD_XX')
  truncate(os.path.join(raw, 'AudioWAV', '1003_DFA_SAD_XX.wav'), 0.5)
  return 'AudioWAV/1003_DFA_SAD_XX.wav', 'truncated: the header declares'


def zero_length_wav(raw):
  write_cremad_clip(raw, '1004_DFA_FEA_XX')
  write_wav(os.path.join(raw, 'AudioWAV', '1004_DFA_FEA_XX.wav'), 0.0)
  return 'AudioWAV/1004_DFA_FEA_XX.wav', 'zero-length audio'


def corrupt_flv(raw):
  write_cremad_clip(raw, '1005_DFA_DIS_XX')
  corrupt(os.path.join(raw, 'VideoFlash', '1005_DFA_DIS_XX.flv'))
  return 'VideoFlash/1005_DFA_DIS_XX.flv', 'unreadable media file'


def truncated_flv(raw):
  write_cremad_clip(raw, '1006_DFA_NEU_XX', seconds=2.5)
  truncate(os.path.join(raw, 'VideoFlash', '1006_DFA_NEU_XX.flv'), 0.4)
  return 'VideoFlash/1006_DFA_NEU_XX.flv', 'truncated: the video decodes to'


def too_few_frames(raw):
  write_cremad_clip(raw, '1007_DFA_ANG_XX')
  write_video(os.path.join(raw, 'VideoFlash', '1007_DFA_ANG_XX.flv'), 2 / 30)
  return 'VideoFlash/1007_DFA_ANG_XX.flv', '2 video frames; needs at least 3'


def unknown_label(raw):
  write_cremad_clip(raw, '1008_DFA_XYZ_XX')
  return 'AudioWAV/1008_DFA_XYZ_XX.wav', "unknown emotion code 'XYZ'"


def missing_video(raw):
  write_wav(os.path.join(raw, 'AudioWAV', '1009_DFA_HAP_XX.wav'), 2.0)
  return 'VideoFlash/1009_DFA_HAP_XX.flv', 'missing video file'


BAD_CASES = [corrupt_wav, truncated_wav, zero_length_wav, corrupt_flv, truncated_flv, too_few_frames,
             unknown_label, missing_video]


def good_raw(tmp_path):
  raw = str(tmp_path / 'raw')
  write_cremad_clip(raw, GOOD)
  return raw


def nothing_written(out):
  return not os.path.exists(os.path.join(out, 'cremad', '1.0.0')) and not any(
      'incomplete' in name for _, dirs, files in os.walk(out) for name in dirs + files)


@pytest.mark.parametrize('make_bad', BAD_CASES, ids=[f.__name__ for f in BAD_CASES])
def test_bad_input_stops_the_build_naming_the_file(tmp_path, make_bad):
  raw, out = good_raw(tmp_path), str(tmp_path / 'out')
  relative, problem = make_bad(raw)
  with pytest.raises(media.BadInput) as e:
    prepare.prepare('cremad', raw, out, progress=False)
  message = str(e.value)
  assert message.startswith(os.path.join(raw, relative) + ': ') and problem in message
  assert '--skip_bad' in message
  assert nothing_written(out)


@pytest.mark.parametrize('missing', ['raw', 'AudioWAV', 'VideoFlash'])
def test_missing_folders_name_the_folder(tmp_path, missing):
  raw, out = good_raw(tmp_path), str(tmp_path / 'out')
  target = raw if missing == 'raw' else os.path.join(raw, missing)
  for root, dirs, files in os.walk(target, topdown=False):
    for name in files:
      os.remove(os.path.join(root, name))
    os.rmdir(root)
  with pytest.raises(FileNotFoundError, match=f'{target}: '):
    prepare.prepare('cremad', raw, out, progress=False)
  assert nothing_written(out)


def test_skip_bad_builds_the_good_clips_and_lists_the_rest(tmp_path):
  raw, out = good_raw(tmp_path), str(tmp_path / 'out')
  expected = dict(make(raw) for make in BAD_CASES)
  path = prepare.prepare('cremad', raw, out, skip_bad=True, progress=False)
  meta = prepared.open_prepared(out, 'cremad', '1.0.0').metadata
  assert meta['splits']['clips'] == [GOOD]
  skipped = {os.path.relpath(f, raw): reason for f, reason in meta['skipped']}
  assert set(skipped) == set(expected)
  for relative, problem in expected.items():
    assert problem in skipped[relative]
  with open(os.path.join(path, 'skipped.tsv')) as f:
    rows = [line.rstrip('\n').split('\t') for line in f][1:]
  assert sorted(rows) == sorted([list(x) for x in meta['skipped']])
  with pytest.raises(FileExistsError, match='already prepared; pass --overwrite'):
    prepare.prepare('cremad', raw, out, progress=False)
  os.remove(os.path.join(raw, 'AudioWAV', '1009_DFA_HAP_XX.wav'))  # the orphan of missing_video
  prepare.prepare('cremad', raw, out, skip_bad=True, overwrite=True, progress=False)
  assert len(prepared.open_prepared(out, 'cremad', '1.0.0').metadata['skipped']) == len(BAD_CASES) - 1


def test_command_line_with_workers_and_a_progress_bar(tmp_path):
  raw, out = good_raw(tmp_path), str(tmp_path / 'out')
  write_cremad_clip(raw, '1002_IEO_HAP_HI')
  unknown_label(raw)
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = subprocess.run([sys.executable, '-m', 'data_pipelines.prepare', '--dataset=cremad', f'--raw_dir={raw}',
                        f'--out_dir={out}', '--skip_bad', '--num_workers=2'],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert run.returncode == 0, run.stderr
  assert "{'clips': 2} (2 clips" in run.stdout and 'skipped 1 unusable files' in run.stdout
  assert 'cremad clips' in run.stderr and '2/2' in run.stderr  # the progress bar (the bad name never decodes)
  assert prepared.open_prepared(out, 'cremad', '1.0.0').metadata['splits']['clips'] == [GOOD, '1002_IEO_HAP_HI']
