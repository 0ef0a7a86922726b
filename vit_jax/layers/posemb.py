"""Position embeddings for the three families."""
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vit_jax import errors


def sinusoidal_1d(length, dim, max_timescale=10_000.0):
  """[L, D] with PE(p, 2i) = sin(p / 10000^(2i/D)), PE(p, 2i+1) = cos(...) (paper §3.5)."""
  position = np.arange(length)[:, None]
  inv_freq = np.exp(-math.log(max_timescale) * np.arange(0, dim, 2) / dim)
  pe = np.zeros((length, dim), np.float32)
  pe[:, 0::2] = np.sin(position * inv_freq)
  pe[:, 1::2] = np.cos(position * inv_freq)[:, :dim // 2]
  return jnp.asarray(pe)


def sincos_2d(height, width, dim, temperature=10_000.0):
  """[H*W, D] fixed 2-D sin-cos embedding (MoCo v3 / big_vision): D/4 channels per (axis, fn)."""
  if dim % 4:
    raise errors.UserError(f'sincos_2d needs a width divisible by 4, got {dim}.')
  y, x = np.mgrid[:height, :width]
  omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1 or 1))
  y = y.reshape(-1)[:, None] * omega
  x = x.reshape(-1)[:, None] * omega
  return jnp.asarray(np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], 1), jnp.float32)


def sine_2d(pixel_mask, num_features, temperature=10_000.0, normalize=True, scale=2 * math.pi,
            offset=0.0):
  """DETR's 2-D sine embedding from a padding mask (Deformable DETR: offset 0.5, so a pixel's
  position is its centre).

  pixel_mask [B, H, W] (True = real pixel) → [B, H, W, 2 * num_features], y features first.
  Positions are cumulative sums over real pixels, normalised to the unpadded extent, so the
  same image gets the same embedding however much padding surrounds it.
  """
  mask = pixel_mask.astype(jnp.float32)
  y = jnp.cumsum(mask, axis=1)
  x = jnp.cumsum(mask, axis=2)
  if normalize:
    eps = 1e-6
    y = (y - offset) / (y[:, -1:, :] + eps) * scale
    x = (x - offset) / (x[:, :, -1:] + eps) * scale
  return jnp.concatenate([sine_features(y, num_features, temperature),
                          sine_features(x, num_features, temperature)], axis=-1)


def sine_features(p, num_features, temperature=10_000.0):
  """Positions [...] → [..., num_features]: sin and cos (interleaved) of p / T^(2i/n) at
  num_features / 2 frequencies, the Transformer's sinusoids of a continuous position."""
  dim_t = temperature ** (2 * (np.arange(num_features) // 2) / num_features)
  p = p[..., None] / dim_t
  return jnp.stack([jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])], -1).reshape(p.shape)


class AddPositionEmbs(nn.Module):
  """Adds a learned embedding `pos_embedding` [1, L, D] (ViT's name for it)."""
  posemb_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.02)

  @nn.compact
  def __call__(self, x):
    pe = self.param('pos_embedding', self.posemb_init, (1,) + x.shape[1:])
    return x + pe.astype(x.dtype)


class LearnedPosition2D(nn.Module):
  """DETR's learned alternative: row and column tables, concatenated → [H, W, 2*num_features]."""
  num_features: int
  max_size: int = 50

  @nn.compact
  def __call__(self, height, width):
    init = nn.initializers.uniform(1.0)
    row = self.param('row_embed', init, (self.max_size, self.num_features))[:height]
    col = self.param('col_embed', init, (self.max_size, self.num_features))[:width]
    return jnp.concatenate([jnp.broadcast_to(col[None], (height, width, self.num_features)),
                            jnp.broadcast_to(row[:, None], (height, width, self.num_features))],
                           -1)
