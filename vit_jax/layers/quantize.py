"""Vector quantisation with a learned codebook (van den Oord et al. 2017, "Neural Discrete
Representation Learning", Eq. 3; VQGAN's Eq. 4 is the same loss): every vector is replaced by
its nearest code, the gradient passes straight through the replacement to the encoder, and the
loss pulls codes and encoder outputs together.

Two ways to move the codes: by gradient, from the codebook term ‖sg[z] − e‖² (the default), or
by exponential moving averages of the encoder outputs assigned to each code (the paper's
Appendix A.1, with Laplace smoothing of the counts as in VQ-VAE-2), leaving only the
commitment term β‖z − sg[e]‖². The averages are state, not parameters: they live in the
'batch_stats' collection, like BatchNorm's running statistics, and change only when `train`.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def perplexity(counts):
  """exp(entropy) of the code frequencies: 1 when one code takes every vector, K when all K
  codes are used equally often."""
  p = counts / jnp.maximum(counts.sum(), 1)
  return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1)), 0)))


class VectorQuantizer(nn.Module):
  """[..., D] → (the nearest codes [..., D] with straight-through gradient, {'loss': the
  codebook and commitment terms, 'indices': [...], 'counts': [K] uses per code in this call,
  'perplexity'}). The terms are means over every element, as in the official VQGAN code."""
  num_codes: int
  commitment: float = 0.25  # β.
  ema_decay: Optional[float] = None  # γ, e.g. 0.99: codes moved by moving averages instead.
  epsilon: float = 1e-5  # Laplace smoothing of the moving counts.

  def _check(self):
    if self.num_codes < 2:
      raise ValueError(f'VectorQuantizer num_codes={self.num_codes}: needs at least 2 codes.')
    if self.ema_decay is not None and not 0 < self.ema_decay < 1:
      raise ValueError(f'VectorQuantizer ema_decay={self.ema_decay}: expected a value in (0, 1)'
                       ' or None (codes moved by gradient).')

  def _codebook(self, dim):
    k = self.num_codes
    init = nn.initializers.uniform(2 / k)  # U(-1/K, 1/K), as the official code.
    shifted = lambda rng, shape: init(rng, shape) - 1 / k
    if self.ema_decay is None:
      return self.param('codebook', shifted, (k, dim)), None
    rng = self.make_rng('params') if self.is_initializing() else None
    codebook = self.variable('batch_stats', 'codebook', shifted, rng, (k, dim))
    # Each code starts as if it had been assigned itself once: m / N is the initial code, and
    # a code no vector picks keeps its place (N and m fade together) instead of jumping to 0.
    size = self.variable('batch_stats', 'cluster_size', jnp.ones, (k,))
    total = self.variable('batch_stats', 'code_sum', lambda: codebook.value)
    return codebook.value, (codebook, size, total)

  def codes(self, indices):
    """The code vectors of `indices` [...] → [..., D] (a decoder's input when sampling)."""
    if self.ema_decay is None:
      return self.get_variable('params', 'codebook')[indices]
    return self.get_variable('batch_stats', 'codebook')[indices]

  @nn.compact
  def __call__(self, z, train=False):
    self._check()
    dim = z.shape[-1]
    codebook, ema = self._codebook(dim)
    flat = z.reshape(-1, dim).astype(jnp.float32)
    distances = (jnp.sum(flat ** 2, -1, keepdims=True) - 2 * flat @ codebook.T
                 + jnp.sum(codebook ** 2, -1))
    indices = jnp.argmin(distances, -1)
    onehot = jax.nn.one_hot(indices, self.num_codes, dtype=jnp.float32)
    quantized = codebook[indices]
    commitment = jnp.mean((flat - jax.lax.stop_gradient(quantized)) ** 2)
    if ema is None:
      loss = jnp.mean((jax.lax.stop_gradient(flat) - quantized) ** 2) + self.commitment * commitment
    else:
      loss = self.commitment * commitment
      if train and not self.is_initializing():
        self._ema_update(ema, jax.lax.stop_gradient(flat), onehot)
    counts = onehot.sum(0)
    # Straight-through: the forward value is the code, the gradient w.r.t. z is the identity.
    out = flat + jax.lax.stop_gradient(quantized - flat)
    return out.reshape(z.shape).astype(z.dtype), {
        'loss': loss, 'indices': indices.reshape(z.shape[:-1]), 'counts': counts,
        'perplexity': perplexity(counts)}

  def _ema_update(self, ema, flat, onehot):
    """N ← γN + (1−γ)n, m ← γm + (1−γ)Σz, e = m / N̂ with N̂ the Laplace-smoothed N."""
    codebook, size, total = ema
    g = self.ema_decay
    size.value = g * size.value + (1 - g) * onehot.sum(0)
    total.value = g * total.value + (1 - g) * onehot.T @ flat
    n = size.value.sum()
    smoothed = (size.value + self.epsilon) / (n + self.num_codes * self.epsilon) * n
    codebook.value = total.value / smoothed[:, None]
