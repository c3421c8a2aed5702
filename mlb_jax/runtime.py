"""Process-level speed settings and instrumentation that never change results.

  * `use_compilation_cache(config.compilation_cache_dir)`: JAX's persistent
    compilation cache, so a second process (the next seed, a resumed run, the
    next method) loads compiled steps instead of compiling them again. The entry
    points (`run.py`, `python -m mlb_jax.experiments`, the benchmarks) call it
    before anything compiles.
  * `ProfileWindow(config.profile_steps, <workdir>/profile)`: a JAX profiler
    trace of a window of train steps, for TensorBoard's profile plugin
    (`tensorboard --logdir <workdir>/profile`) or Perfetto.
"""

import os

import jax
from absl import logging


def use_compilation_cache(directory: str) -> None:
  """Compiled programs are stored in, and loaded from, `directory` ('' leaves JAX's setting).

  Every program is cached, however fast it compiled (JAX's default skips those
  under a second: the small models' steps and evaluations are about that).
  """
  if not directory:
    return
  os.makedirs(directory, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', os.path.abspath(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
  """'A:B' -> (A, B), the train steps A..B-1 (1-based, as the loop counts); '' -> None."""
  if not spec:
    return None
  first, sep, stop = spec.partition(':')
  try:
    window = (int(first), int(stop)) if sep else None
  except ValueError:
    window = None
  if window is None or not 1 <= window[0] < window[1]:
    raise ValueError(f"profile_steps must be 'A:B' with 1 <= A < B (train steps A..B-1), got '{spec}'")
  return window


class ProfileWindow:
  """Starts a profiler trace before step A and stops it once step B-1 has finished.

  The loop calls `before(step)` and `after(step, outputs)` around every train
  step and `close()` at the end (which stops a trace still running, e.g. when
  training ends before B). Only process 0 traces.
  """

  def __init__(self, spec: str, logdir: str):
    self.window = parse_profile_steps(spec)
    self.logdir = logdir
    self.active = False

  def before(self, step: int) -> None:
    if self.window and step == self.window[0] and jax.process_index() == 0:
      os.makedirs(self.logdir, exist_ok=True)
      jax.profiler.start_trace(self.logdir)
      self.active = True
      logging.info('profiling train steps %d..%d into %s', *self.window, self.logdir)

  def after(self, step: int, outputs) -> None:
    if self.active and step >= self.window[1] - 1:
      jax.block_until_ready(outputs)  # the traced steps' device work belongs in the trace
      self.close()

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
