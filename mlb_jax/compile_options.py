"""XLA compiler options the library's jitted steps are compiled with.

`jit_options()` returns the `compiler_options` for `jax.jit` on the default
backend. On the CPU backend XLA hands dot products, reductions and
convolutions to YNNPACK by default; its convolutions (forward and both
gradients) are about half as fast as XLA's own Eigen convolutions on the
ResNet-18 layers of the paper (e.g. a 3 x 3, 64-channel layer on 56 x 56 maps of
24 frames: 67 ms against 35 ms forward). The CPU options keep YNNPACK for dot
products and reductions and leave convolutions to XLA:

  {'xla_cpu_experimental_ynn_fusion_type':
       'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}

Only the kernels differ (results agree to float rounding). Other backends get
no options. The option is checked once per process by compiling a tiny
program with it; a jaxlib that no longer knows it gets no options and a
warning, never a failure.

Steps built by `mlb_jax.steps` and `mlb_jax.multiseed` use these options; to
compile your own function the same way:

  jax.jit(fn, compiler_options=compile_options.jit_options())
"""

import functools

import jax
import jax.numpy as jnp
from absl import logging

# XLA:CPU's default YNNPACK fusion types (individual dots, individual
# convolutions, reductions) without the convolutions.
CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
               'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


@functools.cache
def _cpu_options_supported() -> bool:
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((2,), jnp.float32)).compile(compiler_options=CPU_OPTIONS)
  except Exception as e:  # pylint: disable=broad-except  (any refusal means: compile without them)
    logging.warning('XLA:CPU compiler options %s not accepted (%s); compiling with XLA defaults',
                    CPU_OPTIONS, str(e).splitlines()[0][:200])
    return False
  return True


def jit_options(backend: str | None = None) -> dict:
  """`compiler_options` for `jax.jit` on `backend` (default: JAX's default backend)."""
  backend = backend or jax.default_backend()
  if backend == 'cpu' and _cpu_options_supported():
    return dict(CPU_OPTIONS)
  return {}
