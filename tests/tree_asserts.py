"""Tiny pytree comparison helpers for the tests (no chex dependency)."""

import jax
import numpy as np


def _flatten(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b, f'tree structures differ:\n{tree_a}\nvs\n{tree_b}'
  return zip(jax.tree_util.tree_leaves_with_path(a), leaves_b)


def assert_trees_all_close(a, b, rtol=1e-6, atol=0.0):
  """Same structure, and every pair of leaves close (np.testing.assert_allclose)."""
  for (path, x), y in _flatten(a, b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=f'leaf {jax.tree_util.keystr(path)}')


def assert_trees_all_equal(a, b):
  """Same structure, and every pair of leaves exactly equal."""
  for (path, x), y in _flatten(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=f'leaf {jax.tree_util.keystr(path)}')
