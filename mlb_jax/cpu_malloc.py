"""Opt-in glibc malloc settings that let XLA's CPU runtime reuse freed memory.

Every execution of a jitted function on the CPU backend allocates its scratch
("temp") buffer afresh (`posix_memalign` from an XLA worker thread) and frees it
at the end: 0.44 GB for the CREMA-D ResNet-18 train step at 112 px frames,
about 1.2 GB at 224 px. A worker thread allocates from a glibc *thread arena*,
whose heaps are at most 64 MB, so glibc serves such a request with a fresh
`mmap` (even with `M_MMAP_MAX = 0`) and `munmap`s it on free: every step then
page-faults its whole scratch buffer in again (about 110k faults per step at
112 px, 0.3-0.6 s of system time on the 2-core VM of the README, a tenth of the
step). New output buffers (the train state, when not donated) fault in the same
way.

`reuse_freed_memory()` makes glibc keep and reuse that memory instead:

  * `M_ARENA_MAX = 1`: all threads allocate from the main arena (brk heap),
    which can hold a buffer of any size;
  * `M_MMAP_MAX = 0`: no chunk is served by `mmap`;
  * `M_TRIM_THRESHOLD` = 2 GiB - 1: freed memory at the top of the heap is not
    returned to the kernel, so the next step's buffers are already mapped.

The price is resident memory: the peak stays mapped (it is reached every step
anyway), and one arena means malloc takes one lock (XLA allocates a few large
buffers per step, not many small ones). It is process-wide (it also affects
PyTorch, NumPy, ... in the same process), so it is opt-in: nothing in this
library calls it; `benchmarks/compare_pytorch.py --malloc_reuse` and
`benchmarks/step_time.py --malloc_reuse` do. Call it first thing in the
process, before JAX's backend (and its thread pools) start: a thread that has
already been given a thread arena keeps it. The same settings without code:

  GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647

It is a no-op (returns False) where the C library has no `mallopt` (not glibc).
"""

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


def reuse_freed_memory() -> bool:
  """Applies the settings above; True when glibc accepted all of them."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1
             for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))
