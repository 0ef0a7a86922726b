import math

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.layers import posemb


def test_sinusoidal_1d_matches_the_paper_formula():
  pe = np.asarray(posemb.sinusoidal_1d(50, 16))
  pos, i = 37, 3
  np.testing.assert_allclose(pe[pos, 2 * i], math.sin(pos / 10000 ** (2 * i / 16)), atol=1e-6)
  np.testing.assert_allclose(pe[pos, 2 * i + 1], math.cos(pos / 10000 ** (2 * i / 16)),
                             atol=1e-6)


def test_sincos_2d_layout():
  pe = np.asarray(posemb.sincos_2d(3, 4, 8))  # [12, 8]: sin x, cos x, sin y, cos y; 2 each.
  assert pe.shape == (12, 8)
  row, col = 2, 3
  np.testing.assert_allclose(pe[row * 4 + col, 0], math.sin(col), atol=1e-6)
  np.testing.assert_allclose(pe[row * 4 + col, 7], math.cos(row * 1e-4), atol=1e-6)


def test_sine_2d_matches_detr_and_ignores_padding():
  mask = np.zeros((1, 6, 7), bool)
  mask[0, :4, :5] = True  # A 4x5 image on a 6x7 canvas.
  pe = np.asarray(posemb.sine_2d(mask, 8))
  small = np.asarray(posemb.sine_2d(np.ones((1, 4, 5), bool), 8))
  np.testing.assert_allclose(pe[0, :4, :5], small[0], atol=1e-6)
  # DETR: y_embed = cumsum / (max + eps) * 2π; feature 0 = sin(y / 10000^0), 1 = cos.
  y = (2 + 1) / (4 + 1e-6) * 2 * math.pi
  x = (3 + 1) / (5 + 1e-6) * 2 * math.pi
  np.testing.assert_allclose(pe[0, 2, 3, 0], math.sin(y), atol=1e-5)
  np.testing.assert_allclose(pe[0, 2, 3, 3], math.cos(y / 10000 ** (2 / 8)), atol=1e-5)
  np.testing.assert_allclose(pe[0, 2, 3, 8], math.sin(x), atol=1e-5)


def test_learned_embeddings_shapes():
  x = jnp.zeros((2, 5, 8))
  module = posemb.AddPositionEmbs()
  params = module.init(jax.random.key(0), x)
  assert params['params']['pos_embedding'].shape == (1, 5, 8)
  grid = posemb.LearnedPosition2D(num_features=4)
  out = grid.apply(grid.init(jax.random.key(0), 3, 5), 3, 5)
  assert out.shape == (3, 5, 8)
