"""benchmarks/gpu_suite.py: the --cpu_smoke run of every section, and the suite without TensorFlow."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, 'benchmarks', 'gpu_suite.py')
# The compilation cache of the test run (tests/conftest.py): a second run loads the smoke programs.
CACHE = os.environ.get('MLB_JAX_TEST_COMPILE_CACHE', os.path.join(tempfile.gettempdir(), 'mlb_jax_test_compile_cache'))


def positive(x):
  return isinstance(x, (int, float)) and x > 0


@pytest.mark.slow  # sections 1 and 4 run in the default lane (test_suite_runs_without_tensorflow_or_media_decoders)
def test_cpu_smoke_writes_every_section_with_numbers(tmp_path):
  done = subprocess.run([sys.executable, SUITE, '--cpu_smoke', f'--out_dir={tmp_path}',
                         f'--compilation_cache_dir={CACHE}'], cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
  report = json.loads((tmp_path / 'gpu_suite.json').read_text())
  s = report['sections']
  assert list(s) == ['step', 'pytorch', 'seeds', 'pipeline', 'run']
  assert report['meta']['cpu_smoke'] and not report['meta']['tensorflow_imported']
  rows = s['step']['rows']
  assert {(r['method'], r['dtype']) for r in rows} == {('joint', 'float32'), ('mlb', 'bfloat16')}
  for r in rows:
    assert positive(r['samples_per_s']) and positive(r['compile_s']), r
  assert s['step']['fastest']['samples_per_s'] == max(r['samples_per_s'] for r in rows)
  if 'skipped' in s['pytorch']:
    assert s['pytorch']['skipped'] == 'torch not installed'
  else:
    (row,) = s['pytorch']['rows']
    assert positive(row['eager_samples_per_s']) and row['theirs_mode'] == 'eager', s['pytorch']
    assert positive(row['ratio_ours_to_theirs'])
    assert 'skipped' in s['pytorch']['variants']['compiled']
  assert [r['S'] for r in s['seeds']['rows']] == [1, 2]
  for r in s['seeds']['rows']:
    assert positive(r['vmapped_samples_per_s']) and positive(r['ratio_vmapped_to_sequential']), r
  assert [r['workers'] for r in s['pipeline']['rows']] == [0, 2]
  assert all(positive(r['samples_per_s']) for r in s['pipeline']['rows']), s['pipeline']
  assert positive(s['pipeline']['ratio_pipeline_to_step'])
  assert positive(s['run']['wall_s']) and 'error' not in s['run'], s['run']
  table = done.stdout[done.stdout.index('wrote '):]
  for heading in ('-- 1 step', '-- 2 pytorch', '-- 3 seeds', '-- 4 pipeline', '-- 5 run'):
    assert heading in table


BLOCKED = """
import json, sys
for name in ('tensorflow', 'tensorflow_datasets', 'av', 'soundfile', 'soxr'):
  sys.modules[name] = None   # any import of them raises ImportError
sys.path.insert(0, {benchmarks!r})
import gpu_suite
import input_pipeline
report = gpu_suite.main(['--cpu_smoke', '--sections=1,4', '--step_configs=mlb:bfloat16:4', '--out_dir={out}',
                         '--compilation_cache_dir={cache}'])
step, pipeline = report['sections']['step'], report['sections']['pipeline']
assert step['rows'][0]['samples_per_s'] > 0, step
assert all(r['samples_per_s'] > 0 for r in pipeline['rows']), pipeline
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in
                ('tensorflow', 'tensorflow_datasets', 'av', 'soundfile', 'soxr'))
assert not loaded, loaded
print('OK')
"""


def test_suite_runs_without_tensorflow_or_media_decoders(tmp_path):
  code = BLOCKED.format(benchmarks=os.path.join(ROOT, 'benchmarks'), out=str(tmp_path), cache=CACHE)
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0 and 'OK' in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
