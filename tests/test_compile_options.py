"""The XLA compiler options of the library's jitted steps (mlb_jax/compile_options.py)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import synthetic
from data_pipelines import common
from mlb_jax import compile_options, loop, multiseed, steps

CPU = jax.default_backend() == 'cpu'


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.skipif(not CPU, reason='CPU backend options')
def test_cpu_options_leave_convolutions_to_xla_and_keep_results():
  assert compile_options.jit_options() == compile_options.CPU_OPTIONS
  assert compile_options.jit_options('gpu') == {}
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((8, 28, 28, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 32)), jnp.float32)
  grad = jax.grad(lambda x, w: jnp.sum(_conv(x, w) ** 2), argnums=(0, 1))
  compiled = jax.jit(grad).lower(x, w).compile(compiler_options=compile_options.jit_options())
  entry = compiled.as_text().split('ENTRY')[1]
  # Forward, input gradient and weight gradient are XLA convolutions in the entry computation.
  assert len(re.findall(r'= f32\[[\d,]+\]\{[\d,]+\} convolution\(', entry)) == 3
  ours, ref = compiled(x, w), jax.jit(grad)(x, w)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-3 * float(jnp.max(jnp.abs(b))))


def test_steps_are_compiled_with_the_options(monkeypatch):
  """Every jitted step passes `jit_options()` to XLA: an option XLA refuses makes each fail to compile."""
  exp = loop.build(synthetic.get_config('method=mlb,smoke'))
  model, tx, method, weights = exp.model, exp.tx, exp.method, exp.loss_weights
  state = loop.initial_state(exp)
  batch = next(common.train_batches(exp.dataset.splits['train'], batch_size=exp.config.data.batch_size, seed=0))
  monkeypatch.setattr(compile_options, 'jit_options', lambda backend=None: {'xla_not_an_option': 1})
  built = {
      'train': (steps.make_train_step(model=model, tx=tx, method=method, loss_weights=weights, donate=False),
                (state, batch)),
      'eval': (steps.make_eval_step(model=model), (state, batch)),
      'encode': (steps.make_encode_step(model=model), (state, batch)),
      'multi': (multiseed.make_multi_train_step(model=model, tx=tx, method=method, loss_weights=weights,
                                                donate=False),
                (multiseed.stack([state, state]), jax.tree.map(lambda a: np.stack([a, a]), batch))),
  }
  for name, (fn, args) in built.items():
    with pytest.raises(Exception, match='xla_not_an_option'):
      fn(*args)
      pytest.fail(f'{name} step compiled without the options')


def test_options_xla_refuses_fall_back_to_none(monkeypatch):
  monkeypatch.setattr(compile_options, 'CPU_OPTIONS', {'xla_cpu_experimental_ynn_fusion_type': 'NOT_A_TYPE'})
  compile_options._cpu_options_supported.cache_clear()
  try:
    assert compile_options.jit_options('cpu') == {}
  finally:
    compile_options._cpu_options_supported.cache_clear()
