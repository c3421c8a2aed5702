"""The convolution, pooling and batch-norm functions the convolutional encoders call.

`ResNet18Encoder` and the small conv/frames encoders take an `ops` attribute,
an `Ops` tuple of these functions, chosen once by `build_model` from
`config.model.kernels` (`mlb_jax.models.resolve_kernels`):

  * `PLAIN_OPS` (here): the textbook operations, differentiated by plain
    autodiff: `lax.conv_general_dilated`, `lax.reduce_window` max-pooling, and
    batch norm written out as mean / variance / normalise;
  * `cpu_kernels.CPU_OPS`: the same functions reformulated for fast gradients on
    XLA:CPU (see `mlb_jax/models/cpu_kernels.py`).

Both compute the same values and gradients (to float rounding) and the modules
create the same parameters with either, so checkpoints do not depend on the
choice.
"""

from typing import Callable, NamedTuple

import jax.numpy as jnp
from jax import lax

_DIMS = ('NHWC', 'HWIO', 'NHWC')


class Ops(NamedTuple):
  """The functions behind `resnet.Conv`, `resnet.BatchNorm`, the ResNet's
  max-pool and `encoders.PatchConv`.

  Fields:
    name: 'plain' | 'cpu' (the resolved `config.model.kernels`).
    conv: (x [N, H, W, C_in], w [k, k, C_in, C_out], stride, padding) -> [N, H', W', C_out]
      in x's dtype, bias-free; padding p on every side or ((top, bottom), (left, right)).
      The ResNet's convolutions.
    patch_conv: same signature; the 3x3 convolutions of the small conv/frames encoders.
    max_pool: 3x3 max-pool, stride 2, padding 1, NHWC.
    batch_norm: (x, scale, bias, residual, relu, eps) -> (out, batch mean, biased batch
      variance): training-mode batch norm over all axes but the last, then `+ residual`
      (None: none) and ReLU (if `relu`); statistics in float32, `out` in x's dtype.
  """
  name: str
  conv: Callable
  patch_conv: Callable
  max_pool: Callable
  batch_norm: Callable

  def __repr__(self):
    return f"Ops('{self.name}')"


def _padding(padding):
  return ((padding, padding),) * 2 if isinstance(padding, int) else tuple(map(tuple, padding))


def conv(x, w, stride: int, padding):
  """Bias-free 2-D convolution, NHWC x HWIO (`lax.conv_general_dilated`)."""
  return lax.conv_general_dilated(x, w, (stride, stride), _padding(padding), dimension_numbers=_DIMS)


def max_pool(x):
  """torch `max_pool2d(kernel_size=3, stride=2, padding=1)`, NHWC, as XLA's reduce_window."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


def batch_moments(x):
  """Per-channel (mean, biased variance) of x over all axes but the last, in float32."""
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=axes)
  var = jnp.maximum(jnp.mean(jnp.square(xf), axis=axes) - jnp.square(mean), 0.0)
  return mean, var


def normalize(x, mean, rstd, scale, bias, residual=None, relu: bool = False):
  """(x - mean) * rstd * scale + bias [+ residual] [then ReLU], in float32."""
  y = (x.astype(jnp.float32) - mean) * (rstd * scale) + bias
  if residual is not None:
    y = y + residual.astype(jnp.float32)
  return jnp.maximum(y, 0.0) if relu else y


def batch_norm(x, scale, bias, residual=None, relu: bool = False, eps: float = 1e-5):
  """Training-mode batch norm (then `+ residual` and ReLU, each optional) by plain autodiff.

  Returns (output in x's dtype, batch mean, biased batch variance)."""
  mean, var = batch_moments(x)
  out = normalize(x, mean, lax.rsqrt(var + eps), scale, bias, residual, relu)
  return out.astype(x.dtype), mean, var


PLAIN_OPS = Ops(name='plain', conv=conv, patch_conv=conv, max_pool=max_pool, batch_norm=batch_norm)
