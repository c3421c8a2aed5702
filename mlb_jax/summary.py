"""TensorBoard event files written with TensorBoard's own writer (no TensorFlow import).

Scalars are plain `simple_value` summaries, so `EventAccumulator(path).Scalars(tag)`
reads them with its defaults, and TensorBoard plots them as usual. The config
goes in as TensorBoard hparams (the HParams tab) at the start of a fresh run.

Resuming. A run resumed from step N writes a `SessionLog.START` event at step
N + 1 first: TensorBoard then drops the events of every earlier file of the run
whose step is > N (they were logged after the checkpoint and are computed
again), so each step shows once.
"""

import os
import time
from typing import Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class SummaryWriter:
  """Writes scalars of one run into `logdir`; only `enabled` writers touch files (process 0)."""

  def __init__(self, logdir: str, *, enabled: bool = True):
    self._writer = EventFileWriter(logdir) if enabled else None

  def _add(self, event: event_pb2.Event) -> None:
    if self._writer is not None:
      event.wall_time = time.time()
      self._writer.add_event(event)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._add(event_pb2.Event(step=int(step), summary=summary_pb2.Summary(value=values)))

  def write_hparams(self, hparams: Mapping[str, object]) -> None:
    from tensorboard.plugins.hparams import summary_v2
    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
    self._add(event_pb2.Event(step=0, summary=summary_v2.hparams_pb(values)))

  def restart(self, step: int) -> None:
    """Marks a restart at `step`: TensorBoard forgets this run's earlier events at steps >= `step`."""
    self._add(event_pb2.Event(step=int(step), session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def event_files(logdir: str) -> list[str]:
  """The event files of `logdir`, oldest first."""
  return sorted(os.path.join(logdir, f) for f in os.listdir(logdir) if f.startswith('events.out.tfevents'))
