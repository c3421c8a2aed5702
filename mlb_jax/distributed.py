"""Several processes (hosts) and preemption: `jax.distributed` is the launcher.

Each host runs the same `python run.py ...` command with its own process id;
`initialize` connects them through the coordinator, after which `jax.devices()`
lists every device of every host and one jitted step spans them all.

Preemption: `PreemptionWatch` turns SIGTERM into a request to stop at the next
step boundary (the loop then saves `checkpoints/last` and exits). With several
processes JAX's own preemption service (started by `jax.distributed.initialize`)
receives the signal and picks the same step on every process.
"""

import os
import signal
import threading
from typing import Mapping, NamedTuple

import jax
from absl import logging
from jax.experimental import multihost_utils

# Read when the matching run.py flag is not given (JAX itself also reads JAX_COORDINATOR_ADDRESS).
ENV = {'coordinator_address': 'JAX_COORDINATOR_ADDRESS', 'num_processes': 'JAX_NUM_PROCESSES',
       'process_id': 'JAX_PROCESS_ID'}


class Settings(NamedTuple):
  """How this process joins the others: the coordinator's `host:port`, how many processes, and which one it is."""
  coordinator_address: str
  num_processes: int
  process_id: int


def settings(coordinator_address: str | None = None, num_processes: int | None = None,
             process_id: int | None = None, environ: Mapping[str, str] = os.environ) -> Settings | None:
  """The multi-process settings from flags, else from `ENV` variables; None for one process.

  Raises:
    ValueError: when some but not all of the three are set, or they are inconsistent.
  """
  given = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
           'process_id': process_id}
  values = {k: v if v is not None else environ.get(ENV[k]) for k, v in given.items()}
  if (values['num_processes'] is None and values['process_id'] is None) or str(values['num_processes']) == '1':
    return None
  missing = sorted(k for k, v in values.items() if v is None)
  if missing:
    raise ValueError(f'multi-process run needs coordinator_address, num_processes and process_id; '
                     f'missing {missing} (flags --{missing[0]} or ${ENV[missing[0]]})')
  out = Settings(str(values['coordinator_address']), int(values['num_processes']), int(values['process_id']))
  if not 0 <= out.process_id < out.num_processes:
    raise ValueError(f'process_id {out.process_id} is not in [0, num_processes={out.num_processes})')
  return out


def initialize(config: Settings | None) -> None:
  """`jax.distributed.initialize` for a multi-process run; nothing for a single process.

  Call it before anything else touches JAX devices. CPU processes exchange
  their collectives through gloo (GPUs and TPUs are unaffected by that setting).
  """
  if config is not None and config.num_processes > 1:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(config.coordinator_address, config.num_processes, config.process_id)


class PreemptionWatch:
  """A context manager; `requested(step)` is True once a stop was asked for (SIGTERM or Ctrl-C).

  With one process it installs handlers for SIGTERM and SIGINT that only set a
  flag, so the loop saves at the next step boundary and stops; a second Ctrl-C
  stops at once (KeyboardInterrupt). The previous handlers are put back on
  exit; outside the main thread, where Python allows no handler, both signals
  keep their defaults. With several processes it asks JAX's preemption sync
  point, which answers True at the same step on every process.
  """

  SIGNALS = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'Ctrl-C (SIGINT)'}

  def __init__(self):
    self._stop = False
    self._previous = {}
    self.signal_name = 'SIGTERM'

  def __enter__(self) -> 'PreemptionWatch':
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  def _on_signal(self, signum, frame) -> None:
    del frame
    if self._stop and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: stop now
    self._stop = True
    self.signal_name = self.SIGNALS.get(signum, str(signum))
    if signum == signal.SIGINT:
      logging.warning('stopping: saving a checkpoint at the next step (Ctrl-C again to stop at once)')

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._stop
