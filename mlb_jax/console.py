"""What the commands print for a person: progress lines, a bar on a terminal, chatter in a file.

`Console` is a `progress` callback of `mlb_jax.loop` (see `loop._train` for its
events). Per log interval it prints one line

    step 400/800 (50%)  loss 1.234  acc fused 0.812  k audio 0.951 video 1.304  38.2 steps/s  ETA 0:10

(one per run when several seeds train together) and one line per validation;
attached to a terminal it shows a progress bar instead of the step lines.
With `runs=N` (the experiment runner) every line is prefixed with the run
`[3/12 mlb seed_2]` and the ETA covers the whole experiment.

`log_to_file(path)` sends every library log record (the accelerator probe,
checkpointing, the loop's own INFO lines) to `path` and keeps only warnings and
errors on the console.
"""

import logging as py_logging
import sys
import time

from absl import flags, logging

from mlb_jax import losses


def log_to_file(path: str) -> None:
  """Library INFO records (or those of an explicit `--verbosity`) to `path`, appended; the console
  keeps warnings and errors."""
  handler = py_logging.FileHandler(path)
  handler.setFormatter(py_logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
  handler.setLevel(py_logging.INFO)
  root = py_logging.getLogger()
  root.addHandler(handler)
  if not (flags.FLAGS.is_parsed() and flags.FLAGS['verbosity'].present):  # an explicit --verbosity wins
    root.setLevel(py_logging.INFO)
    logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().setLevel(py_logging.WARNING)


def duration(seconds: float) -> str:
  """'1:02:03' / '2:03' for a number of seconds."""
  seconds = int(max(seconds, 0) + 0.5)
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


def train_line(step: int, total: int, means: dict, steps_per_sec: float, eta: float | None) -> str:
  """One log interval of one run, as printed."""
  scales = {k[len('scale_'):]: v for k, v in means.items() if k.startswith('scale_')}
  parts = [f'step {step}/{total} ({100 * step // max(total, 1)}%)', f"loss {means['loss']:.4f}",
           f"acc fused {means[f'acc_{losses.FUSED}']:.3f}"]
  if scales:
    parts.append('k ' + ' '.join(f'{m} {k:.3f}' for m, k in scales.items()))
  parts.append(f'{steps_per_sec:.1f} steps/s')
  if eta is not None:
    parts.append(f'ETA {duration(eta)}')
  return '  '.join(parts)


def val_line(step: int, val: dict, best: dict) -> str:
  """One validation of one run, as printed."""
  accs = '  '.join(f"{h} {d['accuracy']:.4f}" for h, d in val.items())
  return f"step {step}  val accuracy {accs}  (best {best['accuracy']:.4f} at step {best['step']})"


def stopped_line(step: int, patience: int, head: str, best: dict) -> str:
  """An early stop (`train.patience`) of one run, as printed."""
  return (f"stopped early at step {step}: {patience} validations without a better {head} val accuracy than "
          f"{best['accuracy']:.4f} (step {best['step']})")


class Console:
  """Prints the loop's progress events (see the module docstring).

  Args:
    stream: where lines go (default stdout).
    bar: a tqdm bar instead of step lines; default: when `stream` is a terminal.
    runs: the number of runs of an experiment (None: one command, one group).
  """

  def __init__(self, stream=None, *, bar: bool | None = None, runs: int | None = None):
    self.stream = stream or sys.stdout
    self.bar_enabled = self.stream.isatty() if bar is None else bar
    self.total_runs = runs
    self.runs_done = 0
    self.name = ''
    self._bar = None
    self._started = None  # (time, step) when this group's training started
    self._experiment_start = time.time()

  def print(self, text: str) -> None:
    if self._bar is not None:
      self._bar.write(text, file=self.stream)
    else:
      print(text, file=self.stream, flush=True)

  def begin_run(self, name: str) -> None:
    """The experiment runner: the next group of runs is `name`."""
    self.name = name

  def end_runs(self, count: int = 1) -> None:
    self.runs_done += count

  def _prefix(self) -> str:
    if self.total_runs is None:
      return ''
    return f'[{min(self.runs_done + 1, self.total_runs)}/{self.total_runs} {self.name}] '

  def _eta(self, step: int, total: int, steps_per_sec: float) -> float | None:
    if steps_per_sec <= 0:
      return None
    left = (total - step) / steps_per_sec
    if self.total_runs is not None and self.runs_done + 1 < self.total_runs:
      elapsed = time.time() - self._experiment_start
      fraction = (self.runs_done + step / max(total, 1)) / self.total_runs
      left = elapsed / max(fraction, 1e-9) - elapsed if fraction > 0 else left
    return left

  def __call__(self, event: dict) -> None:
    kind, prefix = event['event'], self._prefix()
    if kind == 'start':
      self._started = (time.time(), event['step'])
      self.print(f"{prefix}training {', '.join(event['runs'])}: {event['what']}; steps {event['step'] + 1}.."
                 f"{event['total']}")
      if self.bar_enabled:
        from tqdm import tqdm
        self._bar = tqdm(total=event['total'], initial=event['step'], file=self.stream, unit='step',
                         dynamic_ncols=True, leave=False)
    elif kind == 'resumed':
      self.print(f"{prefix}resumed from step {event['step']}")
    elif kind == 'train':
      eta = self._eta(event['step'], event['total'], event['steps_per_sec'])
      if self._bar is not None:
        self._bar.n = event['step']
        self._bar.set_postfix_str(f"loss {event['means'][0]['loss']:.3f}"
                                  + (f' ETA {duration(eta)}' if eta is not None else ''))
        self._bar.refresh()
        return
      several = event.get('group_size', len(event['runs'])) > 1
      for run, means in zip(event['runs'], event['means']):
        self.print(prefix + (f'{run}: ' if several else '') +
                   train_line(event['step'], event['total'], means, event['steps_per_sec'], eta))
    elif kind == 'val':
      several = event.get('group_size', len(event['runs'])) > 1
      for run, val, best in zip(event['runs'], event['val'], event['best']):
        self.print(prefix + (f'{run}: ' if several else '') + val_line(event['step'], val, best))
      if event['step'] == event['total'] and self._bar is not None:
        self._bar.close()
        self._bar = None
    elif kind == 'stopped':
      several = event.get('group_size', len(event['runs'])) > 1
      for run, best in zip(event['runs'], event['best']):
        self.print(prefix + (f'{run}: ' if several else '') +
                   stopped_line(event['step'], event['patience'], event['head'], best))
      if event['remaining'] == 0 and self._bar is not None:
        self._bar.close()
        self._bar = None
