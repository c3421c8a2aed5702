"""XLA compiler options of the library's jitted steps, by `config.model.kernels`.

`jit_options(kernels)` returns the `compiler_options` for `jax.jit` that go with
the encoders' kernels, `kernels` being the resolved `config.model.kernels`
(`mlb_jax.models.resolve_kernels`):

  * 'cpu' (the CPU formulations of `mlb_jax/models/cpu_kernels.py`): XLA:CPU
    hands dot products, reductions and convolutions to YNNPACK by default; its
    convolutions (forward and both gradients) are about half as fast as XLA's
    own Eigen convolutions on the ResNet-18 layers of the paper (e.g. a 3 x 3,
    64-channel layer on 56 x 56 maps of 24 frames: 67 ms against 35 ms
    forward). The CPU options keep YNNPACK for dot products and reductions and
    leave convolutions to XLA:

      {'xla_cpu_experimental_ynn_fusion_type':
           'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}

    Only the kernels differ (results agree to float rounding). The option is
    checked once per process by compiling a tiny program with it; a jaxlib that
    no longer knows it gets no options and a warning, never a failure.
  * 'plain': no options.

The training build resolves `config.model.kernels` once and passes these options
to every step it jits; to compile your own function the same way:

  kernels = models.resolve_kernels(config.model.kernels)
  jax.jit(fn, compiler_options=compile_options.jit_options(kernels))
"""

import functools

import jax
import jax.numpy as jnp
from absl import logging

# XLA:CPU's default YNNPACK fusion types (individual dots, individual
# convolutions, reductions) without the convolutions.
CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
               'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}

KERNELS = ('plain', 'cpu')


@functools.cache
def _cpu_options_supported() -> bool:
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((2,), jnp.float32)).compile(compiler_options=CPU_OPTIONS)
  except Exception as e:  # pylint: disable=broad-except  (any refusal means: compile without them)
    logging.warning('XLA:CPU compiler options %s not accepted (%s); compiling with XLA defaults',
                    CPU_OPTIONS, str(e).splitlines()[0][:200])
    return False
  return True


def jit_options(kernels: str) -> dict:
  """`compiler_options` for `jax.jit` with the encoders' `kernels` ('plain' | 'cpu',
  the resolved `config.model.kernels`).

  'cpu': `CPU_OPTIONS` where XLA accepts them (checked once), else {}; 'plain': {}.
  """
  if kernels not in KERNELS:
    raise ValueError(f"unknown kernels '{kernels}' (the resolved model.kernels); expected one of {list(KERNELS)}")
  if kernels == 'cpu' and _cpu_options_supported():
    return dict(CPU_OPTIONS)
  return {}
