"""Attention rollout, and the attention pictures written at the end of training."""
import numpy as np
import pytest

from vit_jax.ops import rollout


def test_rollout_multiplies_residual_mixed_attention_through_the_layers():
  rng = np.random.default_rng(0)
  weights = [rng.dirichlet(np.ones(5), size=(2, 3, 5)) for _ in range(3)]  # [B, H, N, N]
  got = rollout.attention_rollout(weights)
  want = np.eye(5)[None].repeat(2, 0)
  for w in weights:  # Directly from the definition, one example at a time.
    a = 0.5 * np.eye(5) + 0.5 * w.mean(1)
    a = a / a.sum(-1, keepdims=True)
    want = np.einsum('bij,bjk->bik', a, want)
  np.testing.assert_allclose(got, want, rtol=1e-12)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-12)  # Still a flow of attention.


@pytest.mark.parametrize('prefix', [1, 2])  # The class token (and DeiT's distillation token).
def test_class_token_map_follows_where_the_class_token_looks(prefix):
  # One layer in which the class token attends only to patch 2 (of 0-3) of a 2x2 grid.
  n = prefix + 4
  weights = np.full((1, 1, n, n), 1 / n)
  weights[0, 0, 0] = np.eye(n)[prefix + 2]
  maps = rollout.class_token_map(rollout.attention_rollout([weights]), (2, 2))
  assert maps.shape == (1, 2, 2) and np.isclose(maps.sum(), 1.0)
  assert np.unravel_index(maps[0].argmax(), (2, 2)) == (1, 0)  # Patch 2 = row 1, column 0.
