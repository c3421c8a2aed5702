"""Runs experiments over seeds or folds, searches config fields, and writes reports.

  # methods over 3 seeds on the embedded benchmark, then out/report.md
  python -m mlb_jax.experiments --config=configs/synthetic.py --methods=joint,multiloss,mlb \\
      --seeds=0,1,2 --seed_fields=seed,data.seed --out=workdirs/synthetic
  # the paper's protocol: CREMA-D VAVL folds 1-3 paired with seeds 109, 19, 337
  python -m mlb_jax.experiments --config=configs/cremad_mlb.py:method=mlb --config.data.dir=... \\
      --folds=1,2,3 --seeds=109,19,337 --name=mlb --out=workdirs/cremad
  # a grid search selected on validation accuracy
  python -m mlb_jax.experiments --mode=sweep --config=configs/synthetic.py:method=mlb \\
      --grid=balancing.mlb.alpha=0.5,1,2 --grid=balancing.mlb.beta_max=2,4 --seeds=0,1 --out=workdirs/sweep
  # the report again (e.g. after adding variants), agreement against unimodal runs
  python -m mlb_jax.experiments --mode=report --out=workdirs/synthetic \\
      --reference=audio=audio_alone,video=video_alone

Every run lives in `<out>/<variant>/<run>/`; finished runs (results.json
present) are skipped, so re-running a command continues an interrupted
experiment. `--config.<field>=<value>` overrides apply to every run;
`--config.num_seeds=3` trains 3 runs of a variant at a time in one vmapped step.
Installed (`pip install .`), `mlb-experiments` is the same command; --config paths
such as configs/synthetic.py then work from any directory.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import shlex  # noqa: E402
import sys  # noqa: E402

from absl import flags  # noqa: E402

from mlb_jax import cli  # noqa: E402

_CONFIG = cli.define_config_flag(
    None, 'An ml_collections config file (":arg" picks a variant); needed by run and sweep. Looked up in the '
    'current directory, then next to the installed configs package.')
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
_VERBOSE = flags.DEFINE_bool('verbose', False, 'Every library log record on the console (default: progress '
                             'lines here, the full log in <out>/experiment.log).')
LOG = 'experiment.log'


def _print_run(variant, run, results, reused):
  test = results['test']
  print(f'{variant} {run.name}: test accuracy ' + ', '.join(f"{h} {d['accuracy']:.4f}" for h, d in test.items())
        + (' (reused)' if reused else ''), flush=True)


def _progress(total_runs: int):
  """(train_many, on_result) that show every run's progress and the whole experiment's ETA."""
  from mlb_jax import console, loop
  show = console.Console(runs=total_runs) if not _VERBOSE.value else None

  def train_many(configs, workdirs):
    if show is not None:
      show.begin_run(f"{os.path.basename(os.path.dirname(workdirs[0]))} "
                     f"{','.join(os.path.basename(w) for w in workdirs)}")
    return loop.train_and_evaluate_many(configs, workdirs, progress=show)

  def on_result(variant, run, results, reused):
    if show is not None:
      show.end_runs(1)
    _print_run(variant, run, results, reused)

  return train_many, on_result


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

  program = ('mlb-experiments' if os.path.basename(sys.argv[0]) == 'mlb-experiments'
             else 'python -m mlb_jax.experiments')
  command = ' '.join([program, *map(shlex.quote, sys.argv[1:])])
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
  if not _VERBOSE.value:
    from mlb_jax import console
    console.log_to_file(os.path.join(_OUT.value, LOG))
  if _MODE.value == 'sweep':
    space = sweep.parse_space(config, _GRID.value)
    points = (sweep.random_points(space, _RANDOM.value, _SWEEP_SEED.value) if _RANDOM.value
              else sweep.grid_points(space))
    train_many, on_result = _progress(len(points) * len(runs))
    summary = sweep.run_sweep(config, _OUT.value, points, runs, std=_STD.value, train_many=train_many,
                              on_result=on_result, command=command)
    print(sweep.sweep_markdown(summary))
    return
  if _METHODS.value and _NAME.value:
    raise ValueError('--name names a single variant; with --methods each variant is named after its method')
  variants = ({m: runner.with_fields(config, {'method': m}) for m in _METHODS.value} if _METHODS.value
              else {_NAME.value or config.method: config})
  train_many, on_result = _progress(len(variants) * len(runs))
  for name, variant_config in variants.items():
    runner.run_variant(variant_config, _OUT.value, name, runs, train_many=train_many, on_result=on_result,
                       command=command)
  summary = aggregate.summarize_experiment(
      {v: r for v, r in aggregate.collect(_OUT.value).items() if v in variants}, _STD.value)
  print(aggregate.markdown_table(summary, _STD.value))
  if _REPORT.value:
    path = report.write_report(_OUT.value, std=_STD.value, reference=_reference(), title=_TITLE.value,
                               command=command)
    print(f'wrote {path}')


def _check_methods():
  """Every --methods name is a method: a typo fails before any variant trains or any folder exists."""
  from mlb_jax.balancing import METHODS

  unknown = [m for m in _METHODS.value if m not in METHODS]
  if unknown:
    raise cli.UsageError(f"--methods: unknown method{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; valid: {', '.join(sorted(METHODS))}")


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f'unexpected arguments: {argv[1:]}')
  _check_methods()
  try:
    _experiment()
  except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def entry():
  """The `mlb-experiments` command."""
  cli.run(main)


if __name__ == '__main__':
  entry()
