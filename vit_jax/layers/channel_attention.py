"""Channel attention in CNNs: which feature maps matter, from a global descriptor of each.

Every module maps x [B, H, W, C] → [B, H, W, C] (SK: → [B, H', W', features]) and is called as
module(x, train); BatchNorm, where a paper uses it, keeps running statistics in
'batch_stats'. Each sows its attention into 'intermediates' (read by the pictures):
'channel_weights' [B, C], 'spatial' [B, H, W] or SK's 'branch_weights' [B, M, C]. Placement in the ResNet (inside each residual block, on the residual branch
before the addition, or in place of the 3x3 convolution for SK) is models/resnet.py's.
"""
import math

import flax.linen as nn
import jax.numpy as jnp

from vit_jax.layers import attention as attention_lib
from vit_jax.layers.conv import batch_norm, conv, global_avg_pool


def reduced(channels, reduction, minimum=1):
  """The bottleneck width C/r of an excitation MLP (at least `minimum`)."""
  return max(channels // reduction, minimum)


class SqueezeExcite(nn.Module):
  """SE (Hu et al. 2018, §3, Eq. 2-4): s = σ(W₂ δ(W₁ GAP(x))), y = s ⊙ x, with W₁ C → C/r and
  W₂ C/r → C (2C²/r weights, plus biases)."""
  reduction: int = 16
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    del train
    c = x.shape[-1]
    z = global_avg_pool(x)
    s = nn.relu(nn.Dense(reduced(c, self.reduction), dtype=self.dtype, name='reduce')(z))
    s = nn.sigmoid(nn.Dense(c, dtype=self.dtype, name='expand')(s))
    self.sow('intermediates', 'channel_weights', s)
    return x * s[:, None, None, :].astype(x.dtype)


def eca_kernel_size(channels, gamma=2, b=1):
  """ECA-Net §3.3, Eq. 12: k = |log₂(C)/γ + b/γ| rounded to the nearest odd number above."""
  t = int(abs((math.log2(channels) + b) / gamma))
  return t if t % 2 else t + 1


class EfficientChannelAttention(nn.Module):
  """ECA (Wang et al. 2020, §3.2-3.3): s = σ(conv1d_k(GAP(x))) across channels, without a
  bias or dimensionality reduction (k weights in all), y = s ⊙ x."""
  gamma: int = 2
  b: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    del train
    k = eca_kernel_size(x.shape[-1], self.gamma, self.b)
    z = global_avg_pool(x)[:, :, None]  # [B, C, 1]: channels as a 1-D sequence.
    s = nn.Conv(1, (k,), padding=((k // 2, k // 2),), use_bias=False, dtype=self.dtype,
                name='conv')(z)[:, :, 0]
    s = nn.sigmoid(s)
    self.sow('intermediates', 'channel_weights', s)
    return x * s[:, None, None, :].astype(x.dtype)


class GlobalContext(nn.Module):
  """GC block (Cao et al. 2019, §4.2, Eq. 4): one query-independent attention map
  α = softmax_j(W_k x_j) pools the context Σ_j α_j x_j, transformed by
  W_v2 ReLU(LN(W_v1 ·)) (C → C/r → C) and added at every position. W_v2 starts at zero
  (the official code's last_zero_init), so the block starts as the identity."""
  reduction: int = 16
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    del train
    b, h, w, c = x.shape
    scores = nn.Dense(1, dtype=self.dtype, name='attention')(x).reshape(b, h * w)
    weights = attention_lib.masked_softmax(scores)  # [B, HW]
    self.sow('intermediates', 'spatial', weights.reshape(b, h, w))
    context = jnp.einsum('bn,bnc->bc', weights.astype(x.dtype), x.reshape(b, h * w, c))
    t = nn.Dense(reduced(c, self.reduction), dtype=self.dtype, name='transform_reduce')(context)
    t = nn.relu(nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='norm')(t))
    t = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                 name='transform_expand')(t)
    return x + t[:, None, None, :].astype(x.dtype)


def covariance(x):
  """[B, H, W, C] → [B, C, C]: (1/M) Xᵀ Ī X with Ī = I − (1/M) 1 1ᵀ over the M = HW positions
  (GSoP §3.1, in float32)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h * w, c).astype(jnp.float32)
  centred = x - x.mean(axis=1, keepdims=True)
  return jnp.einsum('bmi,bmj->bij', centred, centred) / (h * w)


class GlobalSecondOrderPooling(nn.Module):
  """GSoP-Net1's block (Gao et al. 2019, §3.1-3.2): a 1x1 convolution reduces C to C' (BN,
  ReLU), the C' x C' covariance matrix of the positions is normalised row by row (BN), each row
  is convolved on its own (a grouped convolution: 4 outputs per row), then ReLU, a 1x1
  convolution to C and σ give the channel weights: y = σ(·) ⊙ x. As in the official code, x
  first passes a ReLU (the block sits before the residual addition's ReLU)."""
  dim: int = 128  # C' (the paper's 128; at most C).
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    c = x.shape[-1]
    d = min(self.dim, c)
    y = nn.Dense(d, dtype=self.dtype, name='reduce')(nn.relu(x))
    y = nn.relu(batch_norm(train, 'reduce_bn')(y))
    cov = covariance(y)  # [B, C', C']
    cov = batch_norm(train, 'row_bn', axis=1)(cov)  # One BN channel per row.
    kernel = self.param('row_conv', nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'),
                        (d, d, 4))  # Row i, its column j → its 4 outputs.
    bias = self.param('row_conv_bias', nn.initializers.zeros, (d, 4))
    rows = nn.relu(jnp.einsum('bij,ijk->bik', cov, kernel) + bias).reshape(-1, 4 * d)
    s = nn.sigmoid(nn.Dense(c, dtype=self.dtype, name='expand')(rows))
    self.sow('intermediates', 'channel_weights', s)
    return x * s[:, None, None, :].astype(x.dtype)


class SelectiveKernel(nn.Module):
  """SK convolution (Li et al. 2019, §3.1), replacing a 3x3 convolution: branches of 3x3
  convolutions with different dilations (1, 2: a 3x3 and a 5x5 receptive field), each with BN
  and ReLU (Split); U = Σ U_m, z = δ(BN(W GAP(U))) with d = max(C/r, L) (Fuse); softmax across
  the branches, per channel, weighs them: V = Σ_m a_m ⊙ U_m (Select)."""
  features: int
  stride: int = 1
  dilations: tuple = (1, 2)
  reduction: int = 16
  min_dim: int = 32  # L.
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    branches = []
    for m, dilation in enumerate(self.dilations):
      u = conv(self.features, 3, self.stride, dilation, name=f'branch{m}_conv',
               dtype=self.dtype)(x)
      branches.append(nn.relu(batch_norm(train, f'branch{m}_bn')(u)))
    u = jnp.stack(branches, axis=1)  # [B, M, H, W, C]
    z = nn.Dense(reduced(self.features, self.reduction, self.min_dim), use_bias=False,
                 dtype=self.dtype, name='fuse')(global_avg_pool(u.sum(axis=1)))
    z = nn.relu(batch_norm(train, 'fuse_bn')(z))
    logits = nn.Dense(len(self.dilations) * self.features, use_bias=False, dtype=self.dtype,
                      name='select')(z).reshape(-1, len(self.dilations), self.features)
    a = nn.softmax(logits.astype(jnp.float32), axis=1)  # [B, M, C]: across the branches.
    self.sow('intermediates', 'branch_weights', a)
    return (u * a[:, :, None, None, :].astype(u.dtype)).sum(axis=1)
