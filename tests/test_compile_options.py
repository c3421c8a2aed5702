"""The XLA compiler options of the library's jitted steps (mlb_jax/compile_options.py), by kernels."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import synthetic
from data_pipelines import common
from mlb_jax import build, compile_options, models

CPU = jax.default_backend() == 'cpu'


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_options_by_kernels():
  assert compile_options.jit_options('plain') == {}
  for bad in ('auto', 'gpu'):
    with pytest.raises(ValueError, match=rf"unknown kernels '{bad}'"):
      compile_options.jit_options(bad)


@pytest.mark.skipif(not CPU, reason='CPU backend options')
def test_cpu_options_leave_convolutions_to_xla_and_keep_results():
  assert compile_options.jit_options('cpu') == compile_options.CPU_OPTIONS
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((8, 28, 28, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 32)), jnp.float32)
  grad = jax.grad(lambda x, w: jnp.sum(_conv(x, w) ** 2), argnums=(0, 1))
  compiled = jax.jit(grad).lower(x, w).compile(compiler_options=compile_options.jit_options('cpu'))
  entry = compiled.as_text().split('ENTRY')[1]
  # Forward, input gradient and weight gradient are XLA convolutions in the entry computation.
  assert len(re.findall(r'= f32\[[\d,]+\]\{[\d,]+\} convolution\(', entry)) == 3
  ours, ref = compiled(x, w), jax.jit(grad)(x, w)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-3 * float(jnp.max(jnp.abs(b))))


def test_steps_are_compiled_with_the_options(monkeypatch):
  """The build passes `jit_options(resolved model.kernels)` to every step it jits: with an
  option XLA refuses, each of them (one seed and vmapped seeds) fails to compile."""
  config = synthetic.get_config('method=mlb,smoke')
  exp = build.build(config)
  training = exp.training
  assert training.compiler_options == compile_options.jit_options(models.resolve_kernels(config.model.kernels))
  sample = exp.dataset.splits['train'][0]
  state = training.initial_state(sample, [0])
  batch = next(common.train_batches(exp.dataset.splits['train'], batch_size=config.data.batch_size, seed=0))
  asked = []
  monkeypatch.setattr(compile_options, 'jit_options', lambda kernels: asked.append(kernels) or {'xla_not_an_option': 1})
  refused = {'one': build.build_training(config, training.spec, donate=False),
             'many': build.build_training(config, training.spec, num_replicas=2, donate=False)}
  assert asked == [models.resolve_kernels(config.model.kernels)] * 2
  stacked = jax.tree.map(lambda a: jnp.stack([a, a]), state)
  calls = {
      'init': lambda t: t.initial_state(sample, [0] * t.num_replicas),
      'train': lambda t: t.train_step(state if t.num_replicas == 1 else stacked,
                                      t.place_batch([batch] * t.num_replicas)),
      'eval': lambda t: t.eval_step(state, batch),
      'encode': lambda t: t.encode_step(state, batch),
  }
  for kind, t in refused.items():
    assert t.compiler_options == {'xla_not_an_option': 1}
    for name, call in calls.items():
      with pytest.raises(Exception, match='xla_not_an_option'):
        call(t)
        pytest.fail(f'{kind}: {name} compiled without the options')


def test_options_xla_refuses_fall_back_to_none(monkeypatch):
  monkeypatch.setattr(compile_options, 'CPU_OPTIONS', {'xla_cpu_experimental_ynn_fusion_type': 'NOT_A_TYPE'})
  compile_options._cpu_options_supported.cache_clear()
  try:
    assert compile_options.jit_options('cpu') == {}
  finally:
    compile_options._cpu_options_supported.cache_clear()
