"""Train or evaluate one configuration.

  mlb-train                                        # the embedded MLB benchmark (or: python run.py)
  mlb-train --config=configs/synthetic.py:method=joint --workdir=/tmp/joint
  mlb-train --config=configs/synthetic.py --config.balancing.mlb.alpha=1.5
  mlb-train --config=... --workdir=... --mode=eval   # re-evaluate the best checkpoint
  mlb-train --config=... --workdir=w --mode=eval --eval_split=val --checkpoint_dir=/copied/workdir
  mlb-train --config=configs/synthetic.py --config.num_seeds=3 --workdir=w   # w/seed_0..2, one vmapped step

A --config path is looked up in the current directory, then next to the installed
`configs` package: configs/synthetic.py works from any directory.
Exit status: 0 done, 1 error (a bad config, a non-finite loss, a busy workdir), 2 bad flags,
143 stopped by SIGTERM / 130 by Ctrl-C after saving checkpoints/last: run the same command again
(a second Ctrl-C stops at once). Progress goes to the console, every log record to
<workdir>/train.log (--verbose: everything on the console).
Several hosts: the same command on each, with --coordinator_address, --num_processes
and --process_id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import sys  # noqa: E402

from absl import flags, logging  # noqa: E402

from mlb_jax import cli  # noqa: E402

DEFAULT_CONFIG = 'configs/synthetic.py'
DEFAULT_WORKDIR = os.path.join('workdirs', 'synthetic_mlb')

_CONFIG = cli.define_config_flag(DEFAULT_CONFIG, 'Path to an ml_collections config file (":arg" picks a variant).')
_WORKDIR = flags.DEFINE_string('workdir', DEFAULT_WORKDIR, 'Directory for checkpoints, logs and results.json.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resumes if the workdir has a checkpoint) or eval (best checkpoint).')
_EVAL_SPLIT = flags.DEFINE_enum('eval_split', 'test', ['train', 'val', 'test'],
                                'eval: the split to evaluate (test writes results.json, others results_<split>.json).')
_CHECKPOINT_DIR = flags.DEFINE_string('checkpoint_dir', None,
                                      'eval: another workdir or a directory of numbered checkpoint steps.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'multi-host: host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'multi-host: how many processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'multi-host: this process, in [0, num_processes).')
_ALLOW_CHANGED = flags.DEFINE_list('allow_changed', [], 'Config fields (or sections) that may differ from the '
                                   'config stored with the checkpoint, e.g. train.num_steps to extend a run.')
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Log every library record to the console (default: progress lines '
                             'here, the full log in <workdir>/train.log).')
PREEMPTED = 143  # 128 + SIGTERM, as a shell reports a process ended by it
INTERRUPTED = 130  # 128 + SIGINT


LOG = 'train.log'  # in the workdir: every library log record of the command


def execute(config, workdir, mode, eval_split='test', checkpoint_dir=None, allow_changed=(), progress=None):
  """Trains or evaluates `config` in `workdir`: [(results, the run's workdir)], one per seed.

  The only place the command calls the training library.
  """
  from mlb_jax import loop
  workdirs = loop.run_workdirs(config, workdir)
  if mode == 'train':
    all_results = loop.train_and_evaluate(config, workdir, allow_changed=allow_changed, progress=progress)
  else:
    all_results = loop.evaluate(config, workdir, split=eval_split, checkpoint_dir=checkpoint_dir,
                                allow_changed=allow_changed)
  return list(zip(all_results, workdirs))


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f'unexpected arguments: {argv[1:]}')
  from mlb_jax import build, console, distributed, loop, runtime, workdir as workdir_lib  # after flag parsing

  workdir = os.path.abspath(_WORKDIR.value)
  logged = False  # whether library records go to <workdir>/train.log (then the error goes there too)
  try:
    build.validate(_CONFIG.value)  # a bad config is refused before anything is created
    if _MODE.value == 'train' or _CHECKPOINT_DIR.value:  # results of another checkpoint may go to a new workdir
      os.makedirs(workdir, exist_ok=True)  # with its parents
    elif not os.path.isdir(workdir):
      raise FileNotFoundError(f"workdir '{workdir}' does not exist; train first (--mode=train)")
    if not _VERBOSE.value:
      console.log_to_file(os.path.join(workdir, LOG))
      logged = True
    distributed.initialize(distributed.settings(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value))
    config = _CONFIG.value
    runtime.use_compilation_cache(config.compilation_cache_dir)
    runs = execute(config, workdir, _MODE.value, eval_split=_EVAL_SPLIT.value, checkpoint_dir=_CHECKPOINT_DIR.value,
                   allow_changed=_ALLOW_CHANGED.value, progress=None if _VERBOSE.value else console.Console())
  except loop.Preempted as e:
    print(f'stopped: {e}', file=sys.stderr)
    return INTERRUPTED if e.signal_name.startswith('Ctrl-C') else PREEMPTED
  except KeyboardInterrupt:  # the second Ctrl-C
    print('stopped at once by a second Ctrl-C; the last saved checkpoint is kept: run the same command again '
          'to resume from it', file=sys.stderr)
    return INTERRUPTED
  except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError, workdir_lib.WorkdirBusy) as e:
    if logged:
      logging.info('error: %s', e)  # the log file; the console gets the one line below
    print(f'error: {e}', file=sys.stderr)
    return 1
  split = _EVAL_SPLIT.value if _MODE.value == 'eval' else 'test'
  for results, run_workdir in runs:
    scores = results[split]
    print(f"{results['method']}: best step {results['best_step']}; {split} accuracy " +
          ', '.join(f"{h} {d['accuracy']:.4f}" for h, d in scores.items()) +
          f"; fused ECE {scores['fused']['ece']:.4f}; {os.path.join(run_workdir, loop.results_name(split))}")
  return 0


def entry():
  """The `mlb-train` command."""
  cli.run(main)


if __name__ == '__main__':
  entry()
