import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import pytest  # noqa: E402


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
