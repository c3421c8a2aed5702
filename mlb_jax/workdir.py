"""A workdir belongs to one training at a time, and its files describe exactly one run.

* `locked(workdir)`: an exclusive `flock` on `<workdir>/.lock` for the training's
  lifetime. A second training of the same workdir is refused at once, naming the
  holder's pid; the kernel drops the lock of a process that dies (kill -9
  included), so a stale lock never blocks the resume.
* `truncate_history(path, step)`: after a resume from step N, metrics.jsonl keeps
  only the rows of steps <= N (the later ones are computed again), rewritten atomically.
"""

import contextlib
import fcntl
import json
import os

LOCK = '.lock'


class WorkdirBusy(RuntimeError):
  """Another process trains in this workdir."""


@contextlib.contextmanager
def locked(workdir: str, *, enabled: bool = True):
  """Holds the exclusive lock of `workdir` (which must exist) inside the block."""
  if not enabled:
    yield
    return
  path = os.path.join(workdir, LOCK)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 64, 0).decode(errors='replace').strip() or 'unknown'
      raise WorkdirBusy(f"workdir '{workdir}' is in use by another training (pid {holder}); wait for it to "
                        'finish or use another --workdir') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def truncate_history(path: str, step: int) -> int:
  """Drops the rows of `path` (JSON lines with a 'step') after `step`; returns how many were dropped."""
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if json.loads(line).get('step', 0) <= step]
  if len(kept) == len(lines):
    return 0
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(kept)
  os.replace(tmp, path)
  return len(lines) - len(kept)
