"""`pip install .` (not editable) gives importable packages and console commands that run anywhere.

A fresh virtual environment sees this interpreter's packages (jax, flax, ... and setuptools for
the build: nothing is downloaded); the package is built from a copy of the checkout's sources (so
the checkout gets no build/ or egg-info) and installed into it. The commands then run from a folder
outside the checkout with PYTHONPATH unset, so they can only import the installed copy.
"""

import json
import os
import shutil
import site
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ('pyproject.toml', 'README.md', 'mlb_jax', 'data_pipelines', 'configs')
COMMANDS = ('mlb-train', 'mlb-experiments', 'mlb-prepare')


def _setuptools_version():
  try:
    import setuptools
  except ImportError:
    return None
  return tuple(int(p) for p in setuptools.__version__.split('.')[:2] if p.isdigit())


def _clean_env():
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP', 'VIRTUAL_ENV') and not k.startswith('PIP_')}
  env.update(PIP_DISABLE_PIP_VERSION_CHECK='1', PIP_NO_INPUT='1', JAX_PLATFORMS='cpu',
             TF_CPP_MIN_LOG_LEVEL='2', TF_ENABLE_ONEDNN_OPTS='0')
  return env


def _venv(path, env):
  """A venv at `path` whose Python also sees this interpreter's site-packages; returns (python, bin)."""
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip', str(path)],
                 check=True, env=env, timeout=120)
  bindir = path / ('Scripts' if os.name == 'nt' else 'bin')
  python = bindir / ('python.exe' if os.name == 'nt' else 'python')
  purelib = subprocess.run([str(python), '-c', "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, env=env, capture_output=True, text=True).stdout.strip()
  # --system-site-packages exposes the base interpreter's packages, not those of the venv running
  # the tests: add those (their .pth files included) after the new venv's own site-packages.
  parents = [p for p in site.getsitepackages() if os.path.isdir(p)]
  with open(os.path.join(purelib, '_test_parent_env.pth'), 'w') as f:
    f.writelines(f'import site; site.addsitedir({p!r})\n' for p in parents)
  return python, bindir, purelib


def test_installed_commands_run_outside_the_checkout(tmp_path):
  version = _setuptools_version()
  if version is None or version < (64, 0):
    pytest.skip(f'building without isolation needs setuptools>=64 here (found {version})')
  if version < (70, 1):
    pytest.importorskip('wheel', reason='setuptools<70.1 builds wheels with the wheel package')
  env = _clean_env()
  src = tmp_path / 'src'
  src.mkdir()
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info')
  for name in SOURCES:
    from_path = os.path.join(ROOT, name)
    if os.path.isdir(from_path):
      shutil.copytree(from_path, src / name, ignore=ignore)
    else:
      shutil.copy(from_path, src / name)
  python, bindir, purelib = _venv(tmp_path / 'venv', env)

  install = subprocess.run([str(python), '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                            '--no-index', str(src)], env=env, capture_output=True, text=True, timeout=300)
  assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
  for command in COMMANDS:
    assert (bindir / command).exists() or (bindir / f'{command}.exe').exists(), command

  elsewhere = tmp_path / 'elsewhere'  # not the checkout, not the sources
  elsewhere.mkdir()
  where = subprocess.run(
      [str(python), '-c', 'import glob, importlib.util, json, os, mlb_jax, mlb_jax.cli as cli\n'
       "dirs = {n: importlib.util.find_spec(n).submodule_search_locations[0]\n"
       "        for n in ('mlb_jax', 'configs', 'data_pipelines')}\n"
       "dirs['lists'] = sorted(os.path.basename(p) for p in glob.glob(os.path.join(dirs['data_pipelines'],\n"
       "                                                                         'lists', '*')))\n"
       "dirs['config'] = cli.resolve_config_path('configs/synthetic.py:smoke')\n"
       'print(json.dumps(dirs))'],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert where.returncode == 0, where.stderr[-3000:]
  dirs = json.loads(where.stdout.strip().splitlines()[-1])
  for name in ('mlb_jax', 'configs', 'data_pipelines'):
    assert os.path.realpath(dirs[name]).startswith(os.path.realpath(purelib)), (name, dirs[name])
  assert {'cremad_ogm_train.csv', 'cremad_ogm_test.csv', 'cremad_vavl_folds.json'} <= set(dirs['lists'])
  assert os.path.realpath(dirs['config']).startswith(os.path.realpath(purelib)), dirs['config']

  import jax  # the test session's compilation cache (tests/conftest.py): a warm cache compiles nothing
  cache = jax.config.jax_compilation_cache_dir or ''
  train = subprocess.run([str(bindir / 'mlb-train'), '--config=configs/synthetic.py:smoke',
                          f'--workdir={tmp_path / "w"}', f'--config.compilation_cache_dir={cache}'],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr[-3000:]
  results = json.load(open(tmp_path / 'w' / 'results.json'))
  assert results['method'] == 'mlb' and set(results['test']) >= {'fused', 'audio', 'video'}
  assert 'results.json' in train.stdout

  helped = subprocess.run([str(bindir / 'mlb-experiments'), '--help'], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
  assert helped.returncode == 0 and '--methods' in helped.stdout, helped.stderr[-3000:]
