"""`python -m data_pipelines.prepare`: every kind of bad input stops the build with a
message naming the file, leaves nothing half-written, and `--skip_bad` lists it."""

import json
import os
import re
import subprocess
import sys
import tempfile

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
  expected = ('no such raw dataset folder (--raw_dir)' if missing == 'raw' else
              f'not a complete CREMA-D folder: missing {missing}/ (the published layout')
  with pytest.raises(FileNotFoundError, match=re.escape(f'{raw}: {expected}')):
    prepare.prepare('cremad', raw, out, progress=False)
  assert nothing_written(out) and not os.path.exists(out)


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
  tmp = tmp_path / 'tmp'  # the build leaves nothing in the temporary directory
  tmp.mkdir()
  env = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp))
  run = subprocess.run([sys.executable, '-m', 'data_pipelines.prepare', '--dataset=cremad', f'--raw_dir={raw}',
                        f'--out_dir={out}', '--skip_bad', '--num_workers=2'],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert run.returncode == 0, run.stderr
  assert os.listdir(tmp) == [] and os.listdir(out) == ['cremad']
  assert 'Downloading' not in run.stdout + run.stderr
  assert "{'clips': 2} (2 clips" in run.stdout and 'skipped 1 unusable files' in run.stdout
  assert 'cremad clips' in run.stderr and '2/2' in run.stderr  # the progress bar (the bad name never decodes)
  assert prepared.open_prepared(out, 'cremad', '1.0.0').metadata['splits']['clips'] == [GOOD, '1002_IEO_HAP_HI']


LAYOUTS = {  # dataset: (title, what an empty folder lacks, the published layout)
    'cremad': ('CREMA-D', 'AudioWAV/, VideoFlash/', 'AudioWAV/*.wav, VideoFlash/*.flv'),
    'ave': ('AVE', 'AVE/, trainSet.txt, valSet.txt, testSet.txt',
            'AVE/<VideoID>.mp4, trainSet.txt, valSet.txt, testSet.txt'),
    'ucf101': ('UCF101', 'UCF-101/, ucfTrainTestlist/',
               'UCF-101/<Class>/*.avi, ucfTrainTestlist/classInd.txt, '
               'ucfTrainTestlist/{train,test}list0{1,2,3}.txt'),
}


@pytest.fixture
def fresh_tempdir(tmp_path, monkeypatch):
  """tempfile's directory pointed at an empty folder, to see what a call leaves there."""
  tmp = tmp_path / 'tmp'
  tmp.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp))
  return tmp


@pytest.mark.parametrize('dataset', sorted(LAYOUTS))
def test_a_folder_without_the_layout_is_refused_before_any_work(tmp_path, fresh_tempdir, dataset):
  title, missing, layout = LAYOUTS[dataset]
  raw, out = tmp_path / 'raw', str(tmp_path / 'out')
  raw.mkdir()
  with pytest.raises(FileNotFoundError) as e:
    prepare.prepare(dataset, str(raw), out, progress=False)
  assert str(e.value) == f'{raw}: not a complete {title} folder: missing {missing} (the published layout: {layout})'
  assert not os.path.exists(out) and os.listdir(fresh_tempdir) == []
  (raw / 'notes.txt').write_text('unrelated')  # not empty, still not the layout
  with pytest.raises(FileNotFoundError, match=f'missing {missing} '):
    prepare.prepare(dataset, str(raw), out, progress=False)
  assert not os.path.exists(out) and os.listdir(fresh_tempdir) == []


def test_a_partial_layout_names_what_is_missing(tmp_path):
  raw = tmp_path / 'raw'
  (raw / 'ucfTrainTestlist').mkdir(parents=True)
  (raw / 'UCF-101').mkdir()
  (raw / 'ucfTrainTestlist' / 'classInd.txt').write_text('1 A\n')
  with pytest.raises(FileNotFoundError, match=r'missing ucfTrainTestlist/trainlist01.txt, .*, '
                                               r'ucfTrainTestlist/testlist03.txt \(the published'):
    prepare.prepare('ucf101', str(raw), str(tmp_path / 'out'), progress=False)


def test_a_build_leaves_no_temporary_files_and_no_downloads_folder(tmp_path, fresh_tempdir):
  raw, out = good_raw(tmp_path), str(tmp_path / 'out')
  prepare.prepare('cremad', raw, out, progress=False)
  assert os.listdir(fresh_tempdir) == [] and os.listdir(out) == ['cremad']
  too_few_frames(raw)  # a failed build leaves nothing either
  with pytest.raises(media.BadInput):
    prepare.prepare('cremad', raw, str(tmp_path / 'out2'), progress=False)
  assert os.listdir(fresh_tempdir) == [] and not os.path.exists(tmp_path / 'out2')


def run_command(args, tmp_path, module=False):
  tmp = tmp_path / 'tmp'
  tmp.mkdir(exist_ok=True)
  env = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp))
  # the console script `mlb-prepare = data_pipelines.prepare:entry`, or `python -m`
  command = (['-m', 'data_pipelines.prepare'] if module else
             ['-c', 'import sys; from data_pipelines.prepare import entry; sys.argv[0] = "mlb-prepare"; entry()'])
  run = subprocess.run([sys.executable, *command, *args], capture_output=True, text=True, cwd=str(tmp_path),
                       env=env, timeout=120)
  assert os.listdir(tmp) == []
  return run


def test_command_line_on_an_empty_folder(tmp_path):
  raw, out = tmp_path / 'empty', tmp_path / 'out'
  raw.mkdir()
  run = run_command(['--dataset=ave', f'--raw_dir={raw}', f'--out_dir={out}'], tmp_path, module=True)
  assert run.returncode == 1
  assert run.stderr.splitlines() == [f"error: {raw}: not a complete AVE folder: missing {LAYOUTS['ave'][1]} "
                                     f"(the published layout: {LAYOUTS['ave'][2]})"]
  assert run.stdout == '' and not out.exists()


def test_help_exits_0(tmp_path):
  run = run_command(['--help'], tmp_path, module=True)
  assert run.returncode == 0, run.stderr
  assert run.stdout == prepare.usage() and run.stderr == ''
  assert run.stdout.startswith('Decode a raw dataset once') and 'Exit status: 0' in run.stdout
  for name in ('dataset', 'raw_dir', 'out_dir', 'skip_bad', 'num_workers', 'overwrite', 'num_classes'):
    assert f'\n  --{name}: ' in run.stdout


BAD_FLAGS = [
    (['-h'], 0, ''),
    (['--dataset=bogus', '--raw_dir=r', '--out_dir=o'],
     2, 'error: flag --dataset=bogus: value should be one of <ave|cremad|ucf101>'),
    (['--dataset=ave'], 2, 'error: missing --raw_dir, --out_dir'),
    ([], 2, 'error: missing --dataset, --raw_dir, --out_dir'),
    (['--dataset=ave', '--raw_dir=r', '--out_dir=o', 'extra'], 2, "error: unexpected arguments: ['extra']"),
    (['--dataset=ave', '--raw_dir=r', '--out_dir=o', '--num_workers=x'],
     2, "error: flag --num_workers=x: invalid literal for int() with base 10: 'x'"),
    (['--dataset=ave', '--raw_dir=r', '--out_dir=o', '--num_workers=-1'],
     2, 'error: flag --num_workers=-1: -1 is not a non-negative integer'),
    (['--dataset=ave', '--raw_dir=r', '--out_dir=o', '--frobnicate'],
     2, "error: Unknown command line flag 'frobnicate'"),
]
# One process parses every case (`parse_flags`, the flags reset in between), then runs the
# command, `entry()`, on the last one.
PARSE_CASES = """
import contextlib, io, json, sys
from absl import flags
from data_pipelines import prepare
results = []
for args in json.loads(sys.argv[1]):
  flags.FLAGS.unparse_flags()
  err, out = io.StringIO(), io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    try:
      prepare.parse_flags(['mlb-prepare', *args])
      code = None
    except SystemExit as e:
      code = e.code
  results.append([code, err.getvalue(), out.getvalue()[:40]])
print(json.dumps(results))
flags.FLAGS.unparse_flags()
sys.argv = ['mlb-prepare', *json.loads(sys.argv[1])[-1]]
prepare.entry()
"""


def test_bad_flags_exit_2_with_one_line(tmp_path):
  tmp = tmp_path / 'tmp'
  tmp.mkdir()
  run = subprocess.run([sys.executable, '-c', PARSE_CASES, json.dumps([args for args, _, _ in BAD_FLAGS])],
                       capture_output=True, text=True, cwd=str(tmp_path),
                       env=dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp)), timeout=120)
  assert run.returncode == 2, run.stderr  # entry() on the last case
  assert run.stderr == BAD_FLAGS[-1][2] + '\n'
  results = json.loads(run.stdout)
  for (args, code, error), (got_code, stderr, stdout) in zip(BAD_FLAGS, results):
    assert got_code == code, args
    assert stderr == (error + '\n' if error else ''), args
    if code == 0:
      assert stdout.startswith('Decode a raw dataset once')
  assert os.listdir(tmp) == []
