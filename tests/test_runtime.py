"""Compilation cache and profiler settings: explicit, validated, and they leave files where documented."""

import glob
import os

import jax
import pytest

from configs import synthetic
from mlb_jax import build, loop, runtime


def test_profile_steps_parsing():
  assert runtime.parse_profile_steps('') is None
  assert runtime.parse_profile_steps('3:5') == (3, 5)
  for bad in ('3', '5:3', '0:2', 'a:b', '2:2'):
    with pytest.raises(ValueError, match="profile_steps must be 'A:B'"):
      runtime.parse_profile_steps(bad)
  config = synthetic.get_config('smoke')
  config.profile_steps = '2'
  with pytest.raises(ValueError, match='profile_steps'):
    build.build(config)
  with pytest.raises(ValueError, match='profile_steps'):  # before anything trains
    loop.train_and_evaluate(config, '/tmp/never_used')


def test_profile_window_traces_only_its_steps(tmp_path):
  window = runtime.ProfileWindow('2:4', str(tmp_path / 'trace'))
  double = jax.jit(lambda x: 2 * x)
  x = jax.numpy.ones(3)
  for step in range(1, 6):
    window.before(step)
    assert window.active == (2 <= step < 4)
    x = double(x)
    window.after(step, x)
  window.close()
  assert not window.active
  assert glob.glob(str(tmp_path / 'trace' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  assert not os.path.exists(tmp_path / 'unused')
  runtime.ProfileWindow('', str(tmp_path / 'unused')).before(1)
  assert not os.path.exists(tmp_path / 'unused')


def test_profile_steps_writes_a_trace(tmp_path):
  config = synthetic.get_config('smoke')
  config.profile_steps = '1:2'
  loop.train_and_evaluate(config, str(tmp_path / 'w'))
  traces = glob.glob(str(tmp_path / 'w' / loop.PROFILE / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_compilation_cache_setting(tmp_path):
  before = {k: getattr(jax.config, k) for k in ('jax_compilation_cache_dir',
                                                'jax_persistent_cache_min_compile_time_secs')}
  try:
    runtime.use_compilation_cache('')  # off: JAX's own setting (here the test suite's cache) stays
    assert jax.config.jax_compilation_cache_dir == before['jax_compilation_cache_dir']
    runtime.use_compilation_cache(str(tmp_path / 'cache'))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'cache')
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert os.path.isdir(tmp_path / 'cache')
  finally:
    for k, v in before.items():
      jax.config.update(k, v)
