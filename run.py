"""Train or evaluate one configuration.

  python run.py                                    # the embedded MLB benchmark
  python run.py --config=configs/synthetic.py:method=joint --workdir=/tmp/joint
  python run.py --config=configs/synthetic.py --config.balancing.alpha=1.5
  python run.py --config=... --workdir=... --mode=eval   # re-evaluate the best checkpoint
  python run.py --config=... --workdir=w --mode=eval --eval_split=val --checkpoint_dir=/copied/workdir
  python run.py --config=configs/synthetic.py --config.num_seeds=3 --workdir=w   # w/seed_0..2, one vmapped step

Exit status: 0 done, 1 error (a bad config, a non-finite loss), 2 bad flags,
143 (PREEMPTED) stopped by SIGTERM after saving checkpoints/last: run the same command again.
Several hosts: the same command on each, with --coordinator_address, --num_processes
and --process_id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID).
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
_EVAL_SPLIT = flags.DEFINE_enum('eval_split', 'test', ['train', 'val', 'test'],
                                'eval: the split to evaluate (test writes results.json, others results_<split>.json).')
_CHECKPOINT_DIR = flags.DEFINE_string('checkpoint_dir', None,
                                      'eval: another workdir or a directory of numbered checkpoint steps.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'multi-host: host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'multi-host: how many processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'multi-host: this process, in [0, num_processes).')
PREEMPTED = 143  # 128 + SIGTERM, as a shell reports a process ended by it


class _LibraryInfoFilter(py_logging.Filter):
  """Keeps checkpoint-library INFO chatter out of the console; warnings still show."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())
  from mlb_jax import distributed, loop, multiseed, runtime  # after flag parsing: absl flags must be parsed for Grain

  if not flags.FLAGS['workdir'].present:  # the default lives under ./workdirs, created on demand
    os.makedirs(os.path.dirname(_WORKDIR.value), exist_ok=True)
  try:
    distributed.initialize(distributed.settings(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value))
    config = _CONFIG.value
    runtime.use_compilation_cache(config.compilation_cache_dir)
    workdirs = [_WORKDIR.value]
    if config.num_seeds > 1:  # seeds seed..seed+S-1 in <workdir>/seed_<seed>/, one vmapped step
      workdirs = [multiseed.seed_workdir(_WORKDIR.value, c.seed) for c in multiseed.replica_configs(config)]
      all_results = (multiseed.train_and_evaluate_seeds(config, _WORKDIR.value) if _MODE.value == 'train'
                     else multiseed.evaluate_seeds(config, _WORKDIR.value, split=_EVAL_SPLIT.value))
    elif _MODE.value == 'train':
      all_results = [loop.train_and_evaluate(config, _WORKDIR.value)]
    else:
      all_results = [loop.evaluate_checkpoint(config, _WORKDIR.value, split=_EVAL_SPLIT.value,
                                               checkpoint_dir=_CHECKPOINT_DIR.value)]
  except loop.Preempted as e:
    logging.warning('%s', e)
    print(f'preempted: {e}', file=sys.stderr)
    return PREEMPTED
  except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    return 1
  split = _EVAL_SPLIT.value if _MODE.value == 'eval' else 'test'
  for results, workdir in zip(all_results, workdirs):
    scores = results[split]
    print(f"{results['method']}: best step {results['best_step']}; {split} accuracy " +
          ', '.join(f"{h} {d['accuracy']:.4f}" for h, d in scores.items()) +
          f"; fused ECE {scores['fused']['ece']:.4f}; {os.path.join(workdir, loop.results_name(split))}")
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
