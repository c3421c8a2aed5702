"""Train or evaluate one configuration.

  python run.py                                    # the embedded MLB benchmark
  python run.py --config=configs/synthetic.py:method=joint --workdir=/tmp/joint
  python run.py --config=configs/synthetic.py --config.balancing.alpha=1.5
  python run.py --config=... --workdir=... --mode=eval   # re-evaluate the best checkpoint
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/synthetic.py', 'Path to an ml_collections config file (":arg" picks a variant).')
_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/synthetic_mlb', 'Directory for checkpoints, logs and results.json.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resumes if the workdir has a checkpoint) or eval (best checkpoint).')


class _LibraryInfoFilter(py_logging.Filter):
  """Keeps checkpoint-library INFO chatter out of the console; warnings still show."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())
  from mlb_jax import loop  # after flag parsing: absl flags must be parsed for Grain

  if not flags.FLAGS['workdir'].present:  # the default lives under ./workdirs, created on demand
    os.makedirs(os.path.dirname(_WORKDIR.value), exist_ok=True)
  try:
    config = _CONFIG.value
    if _MODE.value == 'train':
      results = loop.train_and_evaluate(config, _WORKDIR.value)
    else:
      results = loop.evaluate_checkpoint(config, _WORKDIR.value)
  except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    return 1
  test = results['test']
  print(f"{results['method']}: best step {results['best_step']}; test accuracy " +
        ', '.join(f"{h} {d['accuracy']:.4f}" for h, d in test.items()) +
        f"; fused ECE {test['fused']['ece']:.4f}; {os.path.join(_WORKDIR.value, 'results.json')}")
  return 0


def parse_flags(argv):
  """absl flag parsing with a one-line error for a bad --config or override."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, FileNotFoundError) as e:
    cause = e
    while cause.__cause__ or cause.__context__:  # the innermost error names the problem
      cause = cause.__cause__ or cause.__context__
    bad = [a for a in argv[1:] if a.startswith('--config')]
    what = f'unknown config key {cause}' if isinstance(cause, (AttributeError, KeyError)) else cause
    print(f'error: invalid config or override {bad}: {what}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
