"""Spatial attention and self-attention over CNN feature maps: where to look, and which other
positions (or channels) each position should gather from.

Modules map x [B, H, W, C] → [B, H, W, C] (AFNB: the high-level map's shape) and are called as
module(x, train). Each (but ANL, whose keys are pooled anchors, not positions) sows its
attention into 'intermediates' (read by the pictures):
'spatial' [B, H, W], 'channel_weights' [B, C], or for self-attention over positions
'pairwise' [B, H, W, h, w] (each position's weights over the key grid). The
self-attention modules (non-local, DANet, ANL) compute their weights with the shared core
(layers/attention.py). BatchNorm, where a paper uses it, keeps running statistics in
'batch_stats'. Placement in the ResNet is models/resnet.py's.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vit_jax.layers import attention as attention_lib
from vit_jax.layers.channel_attention import reduced
from vit_jax.layers.conv import (adaptive_avg_pool, batch_norm, conv, global_avg_pool,
                                 global_max_pool, max_over)


def single_head_attention(query, key, value, scale):
  """[B, Lq, D], [B, Lk, D], [B, Lk, Dv] → ([B, Lq, Dv], weights [B, Lq, Lk]) through the core."""
  out, weights = attention_lib.dot_product_attention(
      query[:, :, None], key[:, :, None], value[:, :, None], scale=scale, dtype=value.dtype)
  return out[:, :, 0], weights[:, 0]


class CBAM(nn.Module):
  """Convolutional Block Attention Module (Woo et al. 2018, §3, Eq. 1-3): channel attention
  M_c = σ(MLP(AvgPool(F)) + MLP(MaxPool(F))) with one shared MLP (C → C/r → C), F' = M_c ⊙ F;
  then spatial attention M_s = σ(f⁷ˣ⁷([AvgPool_c(F'); MaxPool_c(F')])) over the channel-wise
  mean and max maps, F'' = M_s ⊙ F'. (The official code adds a BatchNorm after f⁷ˣ⁷; the
  paper's equation has none, nor has this module.)"""
  reduction: int = 16
  kernel_size: int = 7
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    del train
    c = x.shape[-1]
    hidden = nn.Dense(reduced(c, self.reduction), dtype=self.dtype, name='mlp_reduce')
    expand = nn.Dense(c, dtype=self.dtype, name='mlp_expand')
    mlp = lambda z: expand(nn.relu(hidden(z)))
    channel = nn.sigmoid(mlp(global_avg_pool(x)) + mlp(global_max_pool(x)))
    self.sow('intermediates', 'channel_weights', channel)
    x = x * channel[:, None, None, :].astype(x.dtype)
    pooled = jnp.concatenate([x.astype(jnp.float32).mean(-1, keepdims=True).astype(x.dtype),
                              max_over(x, -1)], -1)
    spatial = nn.sigmoid(conv(1, self.kernel_size, use_bias=True, name='spatial_conv',
                              dtype=self.dtype)(pooled))  # [B, H, W, 1]
    self.sow('intermediates', 'spatial', spatial[..., 0])
    return x * spatial.astype(x.dtype)


class BAM(nn.Module):
  """Bottleneck Attention Module (Park et al. 2018, §3, Eq. 1-4), placed between ResNet stages:
  F' = F + F ⊙ σ(M_c(F) + M_s(F)), with the channel branch
  M_c = BN(MLP(AvgPool(F))) (C → C/r → C, BN and ReLU inside) and, in parallel, the spatial
  branch M_s = BN(f₃¹ˣ¹(f₂³ˣ³(f₁³ˣ³(f₀¹ˣ¹(F))))): 1x1 to C/r, two 3x3 convolutions dilated by
  d, 1x1 to one map (BN and ReLU after each inner convolution, as the official code)."""
  reduction: int = 16
  dilation: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    c = x.shape[-1]
    r = reduced(c, self.reduction)
    m = nn.Dense(r, dtype=self.dtype, name='channel_reduce')(global_avg_pool(x))
    m = nn.relu(batch_norm(train, 'channel_reduce_bn')(m))
    channel = batch_norm(train, 'channel_bn')(nn.Dense(c, dtype=self.dtype,
                                                       name='channel_expand')(m))
    s = x
    for i, (kernel, dilation, width) in enumerate(
        [(1, 1, r), (3, self.dilation, r), (3, self.dilation, r)]):
      s = conv(width, kernel, dilation=dilation, use_bias=True, name=f'spatial_conv{i}',
               dtype=self.dtype)(s)
      s = nn.relu(batch_norm(train, f'spatial_bn{i}')(s))
    spatial = batch_norm(train, 'spatial_bn')(
        conv(1, 1, use_bias=True, name='spatial_conv3', dtype=self.dtype)(s))  # [B, H, W, 1]
    attention = nn.sigmoid(channel[:, None, None, :] + spatial)
    self.sow('intermediates', 'spatial', attention.mean(-1))
    return x + x * attention.astype(x.dtype)


class NonLocal(nn.Module):
  """Non-local block, embedded Gaussian (Wang et al. 2018, §3.2-3.3, Eq. 1, 3, 6):
  y_i = Σ_j softmax_j(θ(x_i)ᵀ φ(x_j)) g(x_j) (unscaled scores), z = BN(W_z y) + x, with θ, φ,
  g 1x1 convolutions to C/2 channels, φ and g optionally max-pooled 2x2 ('subsample', §3.3).
  BN's scale starts at zero (§4.1), so the block starts as the identity."""
  subsample: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    b, h, w, c = x.shape
    inner = max(c // 2, 1)
    theta = nn.Dense(inner, dtype=self.dtype, name='theta')(x).reshape(b, h * w, inner)
    phi, g = (nn.Dense(inner, dtype=self.dtype, name=n)(x) for n in ('phi', 'g'))
    if self.subsample:
      phi, g = (nn.max_pool(t, (2, 2), (2, 2)) for t in (phi, g))
    flat = lambda t: t.reshape(b, -1, inner)
    y, weights = single_head_attention(theta, flat(phi), flat(g), scale=1.0)
    self.sow('intermediates', 'pairwise', weights.reshape(b, h, w, *phi.shape[1:3]))
    z = nn.Dense(c, dtype=self.dtype, name='out')(y.reshape(b, h, w, inner))
    return batch_norm(train, 'out_bn', scale_init=nn.initializers.zeros)(z) + x


class DualAttention(nn.Module):
  """DANet's two modules in parallel (Fu et al. 2019, §3.2-3.3), summed:
  position attention E_j = α Σ_i s_ji D_i + A_j, s_ji = softmax_i(B_iᵀ C_j) over positions,
  with B, C 1x1 convolutions to C/8 channels and D to C; channel attention
  E_j = β Σ_i x_ji A_i + A_j, x_ji = softmax_i(A_iᵀ A_j) over channels (A_i: channel i's map).
  Both unscaled; α and β start at 0, so y = x + α·PAM + β·CAM starts as the identity. (In the
  paper's head each module sits between convolutions and their outputs are summed; inside a
  ResNet the two share the one residual x. The official code's channel attention also
  subtracts the scores from their maximum before the softmax; the paper's equation does not.)"""
  reduction: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    del train
    b, h, w, c = x.shape
    flat = lambda t: t.reshape(b, h * w, -1)
    r = reduced(c, self.reduction)
    query = flat(nn.Dense(r, dtype=self.dtype, name='position_query')(x))
    key = flat(nn.Dense(r, dtype=self.dtype, name='position_key')(x))
    value = flat(nn.Dense(c, dtype=self.dtype, name='position_value')(x))
    position, weights = single_head_attention(query, key, value, scale=1.0)
    self.sow('intermediates', 'pairwise', weights.reshape(b, h, w, h, w))
    channels = flat(x).transpose(0, 2, 1)  # [B, C, HW]: each channel's map a token.
    channel, _ = single_head_attention(channels, channels, channels, scale=1.0)
    alpha = self.param('alpha', nn.initializers.zeros, ())
    beta = self.param('beta', nn.initializers.zeros, ())
    return (x + (alpha * position).reshape(x.shape).astype(x.dtype)
            + (beta * channel.transpose(0, 2, 1)).reshape(x.shape).astype(x.dtype))


def pyramid_pool(x, sizes):
  """ANL's sampling (Zhu et al. 2019, §3.2): adaptive average pooling to each size x size grid,
  flattened and concatenated: [B, H, W, C] → [B, S, C], S = Σ size²."""
  return jnp.concatenate([adaptive_avg_pool(x, s).reshape(x.shape[0], -1, x.shape[-1])
                          for s in sizes], axis=1)


class PyramidAttention(nn.Module):
  """ANL's attention (Zhu et al. 2019, §3.2-3.3): queries from `query_source` at every
  position, keys and values from `kv_source` sampled at S pyramid-pooled anchors, so the cost
  is O(N·S), not O(N²): O = softmax(Ĉ^-½ θ(q) φ_P(kv)ᵀ) γ_P(kv), then W_o (initialised to
  zero, as the official code). θ and φ share one 1x1 convolution + BN + ReLU when queries and
  keys come from one map (APNB), as in the official code."""
  key_dim: int
  value_dim: int
  out_dim: int
  sizes: Sequence[int] = (1, 3, 6, 8)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_source, kv_source, train=False):
    def embed(t, name):
      t = nn.Dense(self.key_dim, dtype=self.dtype, name=name)(t)
      return nn.relu(batch_norm(train, f'{name}_bn')(t))
    b, h, w, _ = query_source.shape
    shared = query_source is kv_source
    key_map = embed(kv_source, 'key')
    query_map = key_map if shared else embed(query_source, 'query')
    value_map = nn.Dense(self.value_dim, dtype=self.dtype, name='value')(kv_source)
    out, _ = single_head_attention(
        query_map.reshape(b, h * w, -1), pyramid_pool(key_map, self.sizes),
        pyramid_pool(value_map, self.sizes), scale=self.key_dim ** -0.5)
    out = nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                   name='out')(out)
    return out.reshape(b, h, w, self.out_dim)


class AFNB(nn.Module):
  """Asymmetric Fusion Non-local Block (Zhu et al. 2019, §3.4): the high-level map's positions
  query the low-level map's pyramid-pooled anchors, Y = conv¹ˣ¹([O; X_h]) + BN + ReLU."""
  key_dim: int = 0  # Ĉ; 0: C_high/2.
  sizes: Sequence[int] = (1, 3, 6, 8)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, low, high, train=False):
    c = high.shape[-1]
    d = self.key_dim or max(c // 2, 1)
    out = PyramidAttention(d, d, c, self.sizes, self.dtype, name='attention')(high, low, train)
    y = nn.Dense(c, use_bias=False, dtype=self.dtype, name='fuse')(
        jnp.concatenate([out, high], -1))
    return nn.relu(batch_norm(train, 'fuse_bn')(y))


class APNB(AFNB):
  """Asymmetric Pyramid Non-local Block (Zhu et al. 2019, §3.3): AFNB with one map as both,
  self-attention onto its own pyramid-pooled anchors, Y = conv¹ˣ¹([O; X]) + BN + ReLU."""

  def __call__(self, x, train=False):
    return super().__call__(x, x, train)
