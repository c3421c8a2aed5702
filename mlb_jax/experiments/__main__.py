"""Runs experiments over seeds or folds, searches config fields, and writes reports.

  # methods over 3 seeds on the embedded benchmark, then out/report.md
  python -m mlb_jax.experiments --config=configs/synthetic.py --methods=joint,multiloss,mlb \\
      --seeds=0,1,2 --seed_fields=seed,data.seed --out=workdirs/synthetic
  # the paper's protocol: CREMA-D VAVL folds 1-3 paired with seeds 109, 19, 337
  python -m mlb_jax.experiments --config=configs/cremad_mlb.py:method=mlb --config.data.dir=... \\
      --folds=1,2,3 --seeds=109,19,337 --name=mlb --out=workdirs/cremad
  # a grid search selected on validation accuracy
  python -m mlb_jax.experiments --mode=sweep --config=configs/synthetic.py:method=mlb \\
      --grid=balancing.alpha=0.5,1,2 --grid=balancing.beta_max=2,4 --seeds=0,1 --out=workdirs/sweep
  # the report again (e.g. after adding variants), agreement against unimodal runs
  python -m mlb_jax.experiments --mode=report --out=workdirs/synthetic \\
      --reference=audio=audio_alone,video=video_alone

Every run lives in `<out>/<variant>/<run>/`; finished runs (results.json
present) are skipped, so re-running a command continues an interrupted
experiment. `--config.<field>=<value>` overrides apply to every run;
`--config.num_seeds=3` trains 3 runs of a variant at a time in one vmapped step.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import shlex  # noqa: E402
import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'An ml_collections config file (":arg" picks a variant); needed by run and sweep.')
_MODE = flags.DEFINE_enum('mode', 'run', ['run', 'sweep', 'report'],
                          'run: train every variant over the runs, then report; sweep: search --grid; '
                          'report: only (re)write the report of --out.')
_OUT = flags.DEFINE_string('out', None, 'The experiment folder.', required=True)
_METHODS = flags.DEFINE_list('methods', [], 'Variants that differ only in config.method (folder = method); '
                             'default the config as given. Where the config\'s method= argument sets more '
                             '(released hyperparameters), run one command per method with --name instead.')
_NAME = flags.DEFINE_string('name', None, 'Folder of a single variant; default config.method.')
_SEEDS = flags.DEFINE_list('seeds', [], 'Seeds; each sets every field of --seed_fields.')
_FOLDS = flags.DEFINE_list('folds', [], 'Folds/splits; each sets --fold_field. With --seeds, paired in order.')
_SEED_FIELDS = flags.DEFINE_list('seed_fields', ['seed'], 'Config fields a seed sets.')
_FOLD_FIELD = flags.DEFINE_string('fold_field', 'data.fold', 'Config field a fold sets.')
_STD = flags.DEFINE_enum('std', 'population', ['population', 'sample'],
                         'Standard deviation over runs: population (ddof=0, as the paper) or sample (ddof=1).')
_REFERENCE = flags.DEFINE_list('reference', [], 'modality=variant pairs: unimodal predictions for the agreement '
                               "analysis from those variants' runs; default each variant's own heads.")
_REPORT = flags.DEFINE_bool('report', True, 'run mode: write <out>/report.md afterwards.')
_TITLE = flags.DEFINE_string('title', '', 'Report heading; default the folder name.')
_GRID = flags.DEFINE_multi_string('grid', [], "sweep: 'field=v1,v2,...' or 'field=[log]uniform(lo,hi)'.")
_RANDOM = flags.DEFINE_integer('random', 0, 'sweep: draw this many points (0: the full grid).')
_SWEEP_SEED = flags.DEFINE_integer('sweep_seed', 0, 'sweep: seed of the random draw.')


def _print_run(variant, run, results, reused):
  test = results['test']
  print(f'{variant} {run.name}: test accuracy ' + ', '.join(f"{h} {d['accuracy']:.4f}" for h, d in test.items())
        + (' (reused)' if reused else ''), flush=True)


def _reference():
  pairs = {}
  for item in _REFERENCE.value:
    modality, sep, variant = item.partition('=')
    if not sep or not modality or not variant:
      raise ValueError(f"--reference item '{item}' must be modality=variant")
    pairs[modality] = variant
  return pairs


def _runs(runner):
  return runner.make_runs(seeds=_SEEDS.value, folds=_FOLDS.value, seed_fields=_SEED_FIELDS.value,
                          fold_field=_FOLD_FIELD.value)


def _experiment():
  from mlb_jax import report
  from mlb_jax.experiments import aggregate, runner, sweep

  command = ' '.join(['python -m mlb_jax.experiments', *map(shlex.quote, sys.argv[1:])])
  if _MODE.value == 'report':
    path = report.write_report(_OUT.value, std=_STD.value, reference=_reference(), title=_TITLE.value,
                               command=command)
    print(f'wrote {path}')
    return
  if _CONFIG.value is None:
    raise ValueError(f'--mode={_MODE.value} needs --config')
  config, runs = _CONFIG.value, _runs(runner)
  from mlb_jax import runtime
  runtime.use_compilation_cache(config.compilation_cache_dir)
  for run in runs:  # a missing seed/fold field fails now, not after the first variant trained
    runner.with_fields(config, run.assignments)
  os.makedirs(_OUT.value, exist_ok=True)
  if _MODE.value == 'sweep':
    space = sweep.parse_space(config, _GRID.value)
    points = (sweep.random_points(space, _RANDOM.value, _SWEEP_SEED.value) if _RANDOM.value
              else sweep.grid_points(space))
    summary = sweep.run_sweep(config, _OUT.value, points, runs, std=_STD.value, on_result=_print_run,
                              command=command)
    print(sweep.sweep_markdown(summary))
    return
  if _METHODS.value and _NAME.value:
    raise ValueError('--name names a single variant; with --methods each variant is named after its method')
  variants = ({m: runner.with_fields(config, {'method': m}) for m in _METHODS.value} if _METHODS.value
              else {_NAME.value or config.method: config})
  for name, variant_config in variants.items():
    runner.run_variant(variant_config, _OUT.value, name, runs, on_result=_print_run, command=command)
  summary = aggregate.summarize_experiment(
      {v: r for v, r in aggregate.collect(_OUT.value).items() if v in variants}, _STD.value)
  print(aggregate.markdown_table(summary, _STD.value))
  if _REPORT.value:
    path = report.write_report(_OUT.value, std=_STD.value, reference=_reference(), title=_TITLE.value,
                               command=command)
    print(f'wrote {path}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  try:
    _experiment()
  except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def parse_flags(argv):
  """absl flag parsing with a one-line error for a bad flag, --config or override."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, FileNotFoundError) as e:
    cause = e
    while cause.__cause__ or cause.__context__:  # the innermost error names the problem
      cause = cause.__cause__ or cause.__context__
    print(f'error: {cause}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
