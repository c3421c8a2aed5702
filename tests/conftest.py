import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests compile the same small programs (the smoke configs): a compilation
# cache shared by the test processes of one run compiles each of them once. It
# lives under the checkout (.pytest_cache/, ignored by git), so a fresh clone
# starts cold and two checkouts never share one.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('MLB_JAX_TEST_COMPILE_CACHE',
                                 os.path.join(REPO, '.pytest_cache', 'jax_compile_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_addoption(parser):
  parser.addoption('--runslow', action='store_true', default=False, help='run tests marked slow')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: long runs, skipped unless --runslow')


def pytest_collection_modifyitems(config, items):
  if config.getoption('--runslow'):
    return
  skip_slow = pytest.mark.skip(reason='slow: needs --runslow')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip_slow)
