"""Multi-scale deformable attention (Zhu et al. 2021, "Deformable DETR", §4.1, Eq. 3).

Each query attends to a few sampled points per head and feature level instead of to every
position: around its reference point p̂ (normalised to [0, 1]) it predicts offsets Δp and
weights A (a softmax over the levels x points of its head), and reads the values there by
bilinear interpolation:

  MSDeformAttn(z_q, p̂_q, {x_l}) = Σ_m W_m Σ_l Σ_k A_mlqk · W'_m x_l(φ_l(p̂_q) + Δp_mlqk).

Sampling follows PyTorch's `grid_sample(align_corners=False)`, zero outside the map, as the
official code does, so ported models compute the same. Pure JAX gathers: jit-, vmap- and
grad-friendly on every backend.
"""
import functools
import math
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import errors


DENSE_MAX_POSITIONS = 1024  # 'auto' sampling: dense up to this many positions, then gathers.
SAMPLINGS = ('auto', 'dense', 'gather')


def multi_scale_deformable_attention(value, shapes, locations, weights, sampling='auto'):
  """The sampling and weighted sum of Eq. 3, before the output projection.

  value [B, S, heads, Dh]: every level's map flattened row-major and concatenated
  (S = Σ H_l·W_l); shapes: ((H_l, W_l), ...), static; locations [B, Q, heads, L, P, 2]:
  normalised (x, y), 0 and 1 the maps' outer edges; weights [B, Q, heads, L, P].
  → [B, Q, heads·Dh].

  Two ways to the same numbers (and gradients): 'gather' reads every level, point and bilinear
  corner with one gather (backwards, one scatter-add), memory O(Q·L·P); 'dense' writes each
  query's bilinear weights over all S positions and multiplies them with the values, memory
  O(Q·S) but only elementwise work and matrix products: on a 2-core CPU, forward and
  backward, 17-20x faster at S = 85, 8x at 340, 3x at 1,360
  (benchmarks/detr_throughput.py, Intel Xeon family 6 model 167). 'auto' is dense up to
  DENSE_MAX_POSITIONS positions.
  """
  b, q, heads, levels, points, _ = locations.shape
  sizes = np.asarray(shapes, np.int32).reshape(levels, 2)  # (H_l, W_l)
  if value.shape[1] != int(sizes.prod(1).sum()):
    raise errors.UserError(f'value has {value.shape[1]} positions, the level shapes {shapes} '
                           f'{int(sizes.prod(1).sum())}.')
  if sampling not in SAMPLINGS:
    raise errors.UserError(f'Unknown deformable sampling {sampling!r}; expected one of '
                           f'{SAMPLINGS}.')
  if sampling == 'dense' or (sampling == 'auto' and value.shape[1] <= DENSE_MAX_POSITIONS):
    return _dense_sampling(value, shapes, locations, weights)
  return _gather_sampling(value, sizes, locations, weights)


def _pixels(locations, sizes):
  """Normalised (x, y) [..., L, P, 2] → continuous pixel coordinates x, y, each [..., L, P]
  (pixel i covers [i − 0.5, i + 0.5], align_corners=False)."""
  return (locations[..., 0] * sizes[:, 1, None] - 0.5,
          locations[..., 1] * sizes[:, 0, None] - 0.5)


def _corners(x, y):
  """Continuous pixel coordinates → (the top-left corner's integer column and row, fractions
  fx, fy)."""
  x0, y0 = jnp.floor(x), jnp.floor(y)
  return x0.astype(jnp.int32), y0.astype(jnp.int32), x - x0, y - y0


_DX, _DY = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])  # The four corners around a point.


def _four_corners(x, y, h, w):
  """Continuous pixel coordinates [...] on h x w maps (h, w broadcastable against [..., 4])
  → each point's four corners, [..., 4]: the row-major index in the map (clipped), whether
  the corner is inside (outside: zero padding), and its bilinear factors along x and y."""
  x0, y0, fx, fy = _corners(x, y)
  xi, yi = x0[..., None] + _DX, y0[..., None] + _DY
  inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
  index = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
  fx, fy = fx[..., None], fy[..., None]
  return index, inside, jnp.where(_DX, fx, 1 - fx), jnp.where(_DY, fy, 1 - fy)


def _dense_sampling(value, shapes, locations, weights):
  b, q, heads = locations.shape[:3]
  # Heads before queries throughout: the product below is then a batched matrix product.
  x, y = _pixels(locations.transpose(0, 2, 1, 3, 4, 5), np.asarray(shapes, np.int32))
  weights = weights.transpose(0, 2, 1, 3, 4)  # [B, heads, Q, L, P]
  rows = [_bilinear_grid(x[..., level, :], y[..., level, :], weights[..., level, :], h, w)
          for level, (h, w) in enumerate(shapes)]
  out = jnp.einsum('bmqs,bsmd->bmqd', jnp.concatenate(rows, -1).astype(value.dtype), value)
  return out.transpose(0, 2, 1, 3).reshape(b, q, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bilinear_grid(x, y, weight, h, w):
  """Each query's weighted bilinear tents over an h x w map, flattened row-major: x, y,
  weight [..., P] → [..., h·w], Σ_p weight_p · tent(y_p)ᵢ · tent(x_p)ⱼ at position (i, j).
  tent(x)ⱼ is 1 − f at the left corner, f at the next, 0 elsewhere and for corners outside
  the map (zero padding).

  Summed over points as P elementwise outer products; its own gradient reads the incoming
  gradient at each point's four corners only, the entries its derivatives are not zero at.
  As an einsum over points left to autodiff (per query, products of [H, P] @ [P, W] and their
  gradients over the whole map), the sampling at 340 positions took 2.6x as long forward and
  backward (a jitted jax.vjp, batch 32, Intel Xeon family 6 model 167), and Deformable DETR's
  train step 1.6x (benchmarks/detr_throughput.py: 827 against 522 ms)."""
  x0, y0, fx, fy = _corners(x, y)
  tent = lambda i0, f, n: (jnp.where(np.arange(n) == i0[..., None], 1 - f[..., None], 0) +
                           jnp.where(np.arange(n) == i0[..., None] + 1, f[..., None], 0))
  across, down = tent(x0, fx, w), tent(y0, fy, h) * weight[..., None]  # [..., P, W], [..., P, H]
  grid = sum(down[..., p, :, None] * across[..., p, None, :] for p in range(x.shape[-1]))
  return grid.reshape(grid.shape[:-2] + (h * w,))


def _bilinear_grid_forward(x, y, weight, h, w):
  return _bilinear_grid(x, y, weight, h, w), (x, y, weight)


def _bilinear_grid_backward(h, w, saved, d_grid):
  x, y, weight = saved
  index, inside, across, down = _four_corners(x, y, h, w)  # [..., P, 4]
  at_corners = jnp.take_along_axis(d_grid.reshape(-1, h * w),
                                   index.reshape(-1, index.shape[-2] * 4), axis=1)
  at_corners = jnp.where(inside, at_corners.reshape(index.shape), 0)
  d_x = weight * (at_corners * down * np.where(_DX, 1.0, -1.0)).sum(-1)
  d_y = weight * (at_corners * across * np.where(_DY, 1.0, -1.0)).sum(-1)
  d_weight = (at_corners * across * down).sum(-1)
  return d_x.astype(x.dtype), d_y.astype(y.dtype), d_weight.astype(weight.dtype)


_bilinear_grid.defvjp(_bilinear_grid_forward, _bilinear_grid_backward)


def _gather_sampling(value, sizes, locations, weights):
  b, q, heads, levels, points, _ = locations.shape
  starts = np.concatenate([[0], np.cumsum(sizes.prod(1))[:-1]]).astype(np.int32)
  per_level = lambda a: a[:, None, None]  # [L] → broadcastable against [..., L, P, 4].
  h, w, start = per_level(sizes[:, 0]), per_level(sizes[:, 1]), per_level(starts)
  index, inside, across, down = _four_corners(*_pixels(locations, sizes), h, w)
  index = start + index  # [B, Q, heads, L, P, 4]
  total = weights[..., None] * across * down * inside
  k = levels * points * 4
  index = index.reshape(b, q, heads, k).transpose(0, 2, 1, 3).reshape(b, heads, q * k, 1)
  sampled = jnp.take_along_axis(value.transpose(0, 2, 1, 3), index, axis=2)  # [B, heads, Q·k, Dh]
  sampled = sampled.reshape(b, heads, q, k, -1)
  out = jnp.einsum('bhqkd,bqhk->bqhd', sampled, total.reshape(b, q, heads, k).astype(
      sampled.dtype))
  return out.reshape(b, q, -1)


def offset_bias_init(num_heads, num_levels, num_points):
  """The paper's initial sampling points: head m looks in direction 2πm/heads (scaled so the
  larger coordinate is 1), point k at k + 1 times that, at every level."""
  def init(key, shape, dtype=jnp.float32):
    del key
    theta = 2 * math.pi * np.arange(num_heads) / num_heads
    grid = np.stack([np.cos(theta), np.sin(theta)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    grid = grid[:, None, None] * (np.arange(num_points) + 1)[None, None, :, None]
    grid = np.broadcast_to(grid, (num_heads, num_levels, num_points, 2))
    return jnp.asarray(grid.reshape(shape), dtype)
  return init


class MultiScaleDeformableAttention(nn.Module):
  """The module of Eq. 3 (Hugging Face's / the official code's parameter names).

  query [B, Q, D] (positions already added), reference [B, Q, L, 2] normalised points, or
  [B, Q, L, 4] boxes (cx, cy, w, h: offsets then scale with half the box, for iterative box
  refinement and two-stage), inputs [B, S, D] the flattened levels, shapes ((H_l, W_l), ...),
  padding [B, S] (True = a real pixel; padded values are zeroed).
  → (output [B, Q, D], (sampling locations [B, Q, heads, L, P, 2] as normalised (x, y) of
  each level's map, attention weights [B, Q, heads, L, P])).
  """
  num_heads: int = 8
  num_levels: int = 4
  num_points: int = 4
  sampling: str = 'auto'  # One of SAMPLINGS.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query, reference, inputs, shapes: Sequence[Tuple[int, int]], padding=None):
    b, q, d = query.shape
    m, lv, p = self.num_heads, self.num_levels, self.num_points
    if d % m:
      raise errors.UserError(f'hidden size {d} is not divisible by num_heads={m}.')
    if len(shapes) != lv:
      raise errors.UserError(f'{len(shapes)} feature levels given, num_levels={lv}.')
    dense = lambda n, name, **kw: nn.Dense(n, dtype=self.dtype, name=name, **kw)
    value = dense(d, 'value_proj', kernel_init=nn.initializers.xavier_uniform())(inputs)
    if padding is not None:
      value = jnp.where(padding[..., None], value, 0.0)
    value = value.reshape(b, -1, m, d // m)
    offsets = dense(m * lv * p * 2, 'sampling_offsets', kernel_init=nn.initializers.zeros,
                    bias_init=offset_bias_init(m, lv, p))(query).reshape(b, q, m, lv, p, 2)
    weights = dense(m * lv * p, 'attention_weights', kernel_init=nn.initializers.zeros)(query)
    weights = nn.softmax(weights.reshape(b, q, m, lv * p).astype(jnp.float32), axis=-1)
    weights = weights.reshape(b, q, m, lv, p)
    if reference.shape[-1] == 2:  # Offsets in pixels of each level.
      size = jnp.asarray([(w, h) for h, w in shapes], jnp.float32)  # [L, 2] as (x, y)
      locations = reference[:, :, None, :, None] + offsets / size[None, None, None, :, None]
    elif reference.shape[-1] == 4:  # Offsets relative to the box.
      locations = (reference[:, :, None, :, None, :2] +
                   offsets / p * reference[:, :, None, :, None, 2:] * 0.5)
    else:
      raise errors.UserError(f'reference points end in 2 (x, y) or 4 (box) coordinates, got '
                             f'{reference.shape[-1]}.')
    out = multi_scale_deformable_attention(value, tuple(shapes), locations,
                                           weights.astype(value.dtype), self.sampling)
    out = dense(d, 'output_proj', kernel_init=nn.initializers.xavier_uniform())(out)
    return out, (locations, weights)
