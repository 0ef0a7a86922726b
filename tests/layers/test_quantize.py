"""The vector quantiser against float64 numpy written from VQ-VAE's equations: nearest codes,
the loss, the straight-through gradient, the codebook's gradient, the moving-average update."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.layers import quantize


def setup(ema_decay=None, shape=(2, 3, 4, 5), num_codes=7, seed=0):
  module = quantize.VectorQuantizer(num_codes, commitment=0.25, ema_decay=ema_decay)
  z = np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 0.3
  variables = module.init(jax.random.key(seed), z)
  # Codes spread like the inputs, so that several of them are picked.
  collection = 'params' if ema_decay is None else 'batch_stats'
  codebook = np.random.default_rng(seed + 1).normal(size=(num_codes, shape[-1])) * 0.3
  variables[collection]['codebook'] = jnp.asarray(codebook, jnp.float32)
  if ema_decay is not None:
    variables['batch_stats']['code_sum'] = jnp.asarray(codebook, jnp.float32)
  return module, variables, z, codebook


def nearest(z, codebook):
  flat = z.reshape(-1, z.shape[-1]).astype(np.float64)
  d = ((flat[:, None] - codebook[None]) ** 2).sum(-1)
  return flat, d.argmin(-1)


def test_each_vector_becomes_its_nearest_code_and_the_loss_follows_eq_3():
  module, variables, z, codebook = setup()
  out, aux = module.apply(variables, z)
  flat, idx = nearest(z, codebook)
  np.testing.assert_array_equal(aux['indices'].reshape(-1), idx)
  np.testing.assert_allclose(out.reshape(-1, 5), codebook[idx], atol=1e-6)
  # ‖sg[z] − e‖² + β‖z − sg[e]‖²: equal in value, (1 + β) times the mean squared distance.
  np.testing.assert_allclose(aux['loss'], 1.25 * ((flat - codebook[idx]) ** 2).mean(), rtol=1e-5)
  counts = np.bincount(idx, minlength=7)
  np.testing.assert_array_equal(aux['counts'], counts)
  p = counts[counts > 0] / counts.sum()
  np.testing.assert_allclose(aux['perplexity'], np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
  assert len(set(idx)) > 2  # The case is not degenerate.


def test_gradient_passes_straight_through_and_the_codebook_moves_toward_its_vectors():
  module, variables, z, codebook = setup()
  w = np.random.default_rng(5).normal(size=z.shape).astype(np.float32)

  def objective(params, z):
    out, aux = module.apply({'params': params}, z)
    return jnp.sum(w * out) + aux['loss']

  g_params, g_z = jax.grad(objective, argnums=(0, 1))(variables['params'], z)
  flat, idx = nearest(z, codebook)
  n = flat.size
  # d/dz: the identity through the quantiser (w) plus the commitment term 2β(z − e)/n.
  expected_z = w.reshape(-1, 5) + 2 * 0.25 * (flat - codebook[idx]) / n
  np.testing.assert_allclose(g_z.reshape(-1, 5), expected_z, atol=1e-6)
  # d/de_k: only the codebook term, 2 Σ_{i→k} (e_k − z_i)/n; the straight-through path and the
  # commitment term give the codes nothing.
  expected_e = np.zeros_like(codebook)
  np.add.at(expected_e, idx, 2 * (codebook[idx] - flat) / n)
  np.testing.assert_allclose(g_params['codebook'], expected_e, atol=1e-6)


def test_moving_averages_follow_the_papers_update_and_get_no_gradient():
  module, variables, z, codebook = setup(ema_decay=0.9)
  assert 'params' not in variables or 'codebook' not in variables.get('params', {})
  out, state = module.apply(variables, z, train=True, mutable=['batch_stats'])
  aux = out[1]
  flat, idx = nearest(z, codebook)
  onehot = np.eye(7)[idx]
  size = 0.9 * np.ones(7) + 0.1 * onehot.sum(0)
  total = 0.9 * codebook + 0.1 * onehot.T @ flat
  smoothed = (size + 1e-5) / (size.sum() + 7e-5) * size.sum()
  stats = state['batch_stats']
  np.testing.assert_allclose(stats['cluster_size'], size, rtol=1e-6)
  np.testing.assert_allclose(stats['code_sum'], total, atol=1e-6)
  np.testing.assert_allclose(stats['codebook'], total / smoothed[:, None], atol=1e-5)
  unused = np.setdiff1d(np.arange(7), idx)
  assert unused.size  # An unused code stays where it was (up to the smoothing).
  np.testing.assert_allclose(stats['codebook'][unused], codebook[unused], atol=1e-4)
  np.testing.assert_allclose(aux['loss'], 0.25 * ((flat - codebook[idx]) ** 2).mean(), rtol=1e-5)
  # Evaluation leaves the averages alone.
  _, unchanged = module.apply(variables, z, train=False, mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, unchanged['batch_stats'], variables['batch_stats'])


def test_codes_looks_up_indices():
  module, variables, z, codebook = setup()
  _, aux = module.apply(variables, z)
  codes = module.apply(variables, aux['indices'], method='codes')
  np.testing.assert_allclose(codes, codebook[aux['indices']], atol=1e-6)


def test_perplexity_spans_one_to_the_number_of_codes():
  assert float(quantize.perplexity(jnp.array([0., 9., 0.]))) == pytest.approx(1.0)
  assert float(quantize.perplexity(jnp.array([3., 3., 3., 3.]))) == pytest.approx(4.0)


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_codes=1), r'VectorQuantizer num_codes=1: needs at least 2 codes\.'),
    (dict(num_codes=8, ema_decay=1.0), r'VectorQuantizer ema_decay=1\.0: expected a value in '
                                       r'\(0, 1\) or None \(codes moved by gradient\)\.'),
])
def test_bad_settings_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    quantize.VectorQuantizer(**kwargs).init(jax.random.key(0), np.zeros((2, 4), np.float32))
