"""The library snippet in README.md runs as printed and trains."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def readme_snippet() -> str:
  text = open(README).read()
  match = re.search(r'<!-- library-snippet -->\s*```python\n(.*?)```', text, re.S)
  assert match, 'README.md has no library snippet block'
  return match.group(1)


def test_library_snippet_trains_without_our_trainer():
  namespace = {}
  exec(compile(readme_snippet(), 'README.md', 'exec'), namespace)
  model, tx, train_step = namespace['model'], namespace['tx'], namespace['train_step']
  rng = np.random.default_rng(0)
  y = jnp.asarray(np.arange(32) % 4)
  x = {'audio': jnp.asarray(rng.standard_normal((32, 8)), jnp.float32) + y[:, None],
       'video': jnp.asarray(rng.standard_normal((32, 6)), jnp.float32)}
  params = model.init(jax.random.key(0), x)['params']
  assert set(params) == {'audio', 'video', 'fusion'}
  opt_state = tx.init(params)
  losses = []
  for _ in range(20):
    params, opt_state, loss = train_step(params, opt_state, x, y)
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  assert train_step._cache_size() == 1  # k changed every step, one compilation
