"""Bad command lines end in one `error: ...` line on stderr and exit status 2; --help exits 0.

Every case runs the real command in a child process (run.py, python -m mlb_jax.experiments,
python -m data_pipelines.prepare); none trains anything.
"""

import os
import subprocess
import sys

import pytest

from mlb_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('joint', 'multiloss', 'mlb')  # some of the valid method names an error lists


def _env():
  return {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])),
          'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2', 'TF_ENABLE_ONEDNN_OPTS': '0'}


def train(*args, cwd=ROOT):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args], cwd=cwd, env=_env(),
                        capture_output=True, text=True, timeout=300)


def experiments(*args, cwd=ROOT):
  return subprocess.run([sys.executable, '-m', 'mlb_jax.experiments', *args], cwd=cwd, env=_env(),
                        capture_output=True, text=True, timeout=300)


def one_line_error(proc, *fragments):
  """proc exited 2 with exactly one stderr line, `error: ...`, holding every fragment; returns it."""
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert len(lines) == 1, proc.stderr[-3000:]
  line = lines[0]
  assert line.startswith('error: '), line
  for fragment in fragments:
    assert fragment in line, (fragment, line)
  return line


# ---------------------------------------------------------------- the training command (run.py)

def test_missing_config_file_is_named(tmp_path):
  one_line_error(train('--config=configs/nope.py', f'--workdir={tmp_path / "w"}'), "'configs/nope.py'",
                 'not found')
  assert not (tmp_path / 'w').exists()


def test_config_key_typo_keeps_the_did_you_mean_hint(tmp_path):
  one_line_error(train('--config=configs/synthetic.py', '--config.trian.num_steps=5', f'--workdir={tmp_path}'),
                 "'trian'", '--config.trian.num_steps=5', 'Did you mean "train"')


def test_config_key_typo_in_an_override_of_the_default_config(tmp_path):
  one_line_error(train('--config.train.num_stpes=5', f'--workdir={tmp_path}'), "'num_stpes'",
                 'Did you mean "num_steps"')


def test_bad_override_value_type(tmp_path):
  one_line_error(train('--config=configs/synthetic.py:smoke', '--config.train.num_steps=abc',
                       f'--workdir={tmp_path}'), '--config.train.num_steps=abc', 'int', "'abc'")


def test_unknown_flag(tmp_path):
  one_line_error(train('--workdri=x', f'--workdir={tmp_path}'), "'workdri'", 'workdir')


def test_bad_enum_value_names_the_flag_and_its_choices(tmp_path):
  line = one_line_error(train('--mode=evaluate', f'--workdir={tmp_path}'), '--mode must be one of train/eval',
                        'evaluate')
  assert 'config' not in line


def test_bad_config_argument(tmp_path):
  one_line_error(train('--config=configs/synthetic.py:bad=1', f'--workdir={tmp_path}'), "'bad'", 'method')


def test_unexpected_positional_argument(tmp_path):
  one_line_error(train('extra', f'--workdir={tmp_path}'), 'unexpected arguments', 'extra')


def test_config_path_is_found_from_another_directory(tmp_path):
  """configs/... resolves next to the `configs` package when the current directory has none: the
  override is then checked against the loaded config."""
  one_line_error(train('--config=configs/synthetic.py:smoke', '--config.train.num_steps=abc', cwd=tmp_path),
                 '--config.train.num_steps=abc')
  assert not os.listdir(tmp_path)


def test_resolve_config_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.resolve_config_path('configs/synthetic.py:smoke') == os.path.join(ROOT, 'configs',
                                                                              'synthetic.py') + ':smoke'
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'synthetic.py').write_text('')
  assert cli.resolve_config_path('configs/synthetic.py') == 'configs/synthetic.py'  # the current directory first
  with pytest.raises(ValueError, match="config file 'configs/nope.py' not found"):
    cli.resolve_config_path('configs/nope.py')


# ---------------------------------------------------------------- the experiments command: nothing is created

BASE = ('--config=configs/synthetic.py:smoke',)


@pytest.mark.parametrize('args, fragments', [
    (('--config=configs/nope.py',), ("'configs/nope.py'", 'not found')),
    ((*BASE, '--config.trian.num_steps=5'), ("'trian'", 'Did you mean "train"')),
    ((*BASE, '--config.train.num_steps=abc'), ('--config.train.num_steps=abc', 'int')),
    (('--config.train.num_steps=5',), ('--config.train.num_steps', 'no --config')),
    ((*BASE, '--bogus=1'), ("'bogus'",)),
    ((*BASE, '--mode=evaluate'), ('--mode must be one of run/sweep/report', 'evaluate')),
    ((*BASE, '--std=median'), ('--std must be one of population/sample',)),
], ids=['missing-config', 'key-typo', 'value-type', 'override-without-config', 'unknown-flag', 'enum',
        'enum-std'])
def test_experiments_bad_flags(tmp_path, args, fragments):
  out = tmp_path / 'out'
  one_line_error(experiments(*args, f'--out={out}'), *fragments)
  assert not out.exists()


def test_experiments_unknown_method_fails_before_any_run(tmp_path):
  out = tmp_path / 'out'
  line = one_line_error(experiments(*BASE, '--methods=joint,mlbb', '--seeds=0', f'--out={out}'),
                        "'mlbb'", *METHODS)
  assert "'joint'" not in line  # only the bad name is reported as unknown
  assert not out.exists()


def test_experiments_several_unknown_methods_are_all_named(tmp_path):
  out = tmp_path / 'out'
  one_line_error(experiments(*BASE, '--methods=mlbb,jiont', f'--out={out}'), "'mlbb'", "'jiont'")
  assert not out.exists()


# ---------------------------------------------------------------- --help

@pytest.mark.parametrize('command, flag, listed', [
    ([os.path.join(ROOT, 'run.py')], '--help', '--workdir'),
    ([os.path.join(ROOT, 'run.py')], '--helpfull', '--workdir'),
    (['-m', 'mlb_jax.experiments'], '--help', '--methods'),
    (['-m', 'data_pipelines.prepare'], '--help', '--raw_dir'),
], ids=['run.py', 'run.py-full', 'experiments', 'prepare'])
def test_help_exits_0(tmp_path, command, flag, listed):
  proc = subprocess.run([sys.executable, *command, flag], cwd=tmp_path, env=_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert listed in proc.stdout
  assert not os.listdir(tmp_path)
