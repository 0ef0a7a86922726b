"""VQGAN's first stage (Esser et al. 2021, "Taming Transformers for High-Resolution Image
Synthesis", §3.2): a convolutional encoder down to a grid of vectors, each replaced by its
nearest code (vit_jax/layers/quantize.py), and a convolutional decoder back to pixels; plus the
patch discriminator that judges the reconstructions.

The layout follows the paper's released code (CompVis/taming-transformers, read, not copied):
residual blocks of GroupNorm(32) → swish → 3x3 conv, twice; strided 3x3 convs (padded on the
bottom and right only) to go down, nearest-neighbour x2 and a 3x3 conv to go up; single-head
self-attention over the grid at the resolutions named, and in the middle, here on the shared
attention core; a 1x1 conv into and out of the codebook's width. The discriminator is
pix2pix's PatchGAN with BatchNorm, as the official code's default.
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.layers import attention
from vit_jax.layers import conv as conv_lib
from vit_jax.layers import quantize


def group_norm(channels, name=None):
  """GroupNorm with 32 groups, or one per channel below 32 channels (tiny models)."""
  return nn.GroupNorm(num_groups=min(32, channels), epsilon=1e-6, name=name)


def conv3(features, name=None, stride=1, padding=((1, 1), (1, 1))):
  return nn.Conv(features, (3, 3), (stride, stride), padding=padding, name=name)


class ResBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    h = conv3(self.features, 'conv1')(nn.swish(group_norm(x.shape[-1], 'norm1')(x)))
    h = conv3(self.features, 'conv2')(nn.swish(group_norm(self.features, 'norm2')(h)))
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), name='shortcut')(x)
    return x + h


class GridAttention(nn.Module):
  """x + Attention(GroupNorm(x)) over the H·W positions, one head (the official AttnBlock:
  its 1x1 q, k, v and output convs are the core's dense projections)."""

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    tokens = group_norm(c, 'norm')(x).reshape(b, h * w, c)
    out, _ = attention.MultiHeadAttention(num_heads=1, name='attention')(tokens)
    return x + out.reshape(b, h, w, c)


def check_size(size, levels, what):
  factor = 2 ** (levels - 1)
  if size % factor:
    raise ValueError(f'VQGAN {what} {size}: the {levels} levels halve it {levels - 1} times, '
                     f'so it must be a multiple of {factor}.')


class Encoder(nn.Module):
  """[B, H, W, 3] → [B, H/f, W/f, z_channels], f = 2^(len(channel_mult) - 1)."""
  channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  attention_resolutions: Sequence[int]
  z_channels: int

  @nn.compact
  def __call__(self, x):
    check_size(x.shape[1], len(self.channel_mult), 'image size')
    h = conv3(self.channels, 'conv_in')(x)
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = ResBlock(self.channels * mult, name=f'down{level}_block{i}')(h)
        if h.shape[1] in self.attention_resolutions:
          h = GridAttention(name=f'down{level}_attention{i}')(h)
      if level < len(self.channel_mult) - 1:
        h = conv3(h.shape[-1], f'down{level}_downsample', 2, ((0, 1), (0, 1)))(h)
    h = ResBlock(h.shape[-1], name='mid_block1')(h)
    h = GridAttention(name='mid_attention')(h)
    h = ResBlock(h.shape[-1], name='mid_block2')(h)
    return conv3(self.z_channels, 'conv_out')(nn.swish(group_norm(h.shape[-1], 'norm_out')(h)))


class Decoder(nn.Module):
  """[B, h, w, z_channels] → the features before the last conv, [B, h·f, w·f, channels]; the
  last conv (`to_pixels`) is separate because VQGAN's adaptive weight differentiates the
  losses with respect to its kernel."""
  channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  attention_resolutions: Sequence[int]

  @nn.compact
  def __call__(self, z):
    h = conv3(self.channels * self.channel_mult[-1], 'conv_in')(z)
    h = ResBlock(h.shape[-1], name='mid_block1')(h)
    h = GridAttention(name='mid_attention')(h)
    h = ResBlock(h.shape[-1], name='mid_block2')(h)
    for level in reversed(range(len(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = ResBlock(self.channels * self.channel_mult[level], name=f'up{level}_block{i}')(h)
        if h.shape[1] in self.attention_resolutions:
          h = GridAttention(name=f'up{level}_attention{i}')(h)
      if level > 0:
        b, hh, ww, c = h.shape
        h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), 'nearest')
        h = conv3(c, f'up{level}_upsample')(h)
    return nn.swish(group_norm(h.shape[-1], 'norm_out')(h))


class VQAutoencoder(nn.Module):
  """Encoder → 1x1 conv → vector quantiser → 1x1 conv → decoder → 3x3 conv to RGB."""
  channels: int = 128
  channel_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (16,)
  z_channels: int = 256
  num_codes: int = 1024
  code_dim: int = 256
  commitment: float = 0.25
  ema_decay: Optional[float] = None

  def setup(self):
    self.encoder = Encoder(self.channels, self.channel_mult, self.num_res_blocks,
                           self.attention_resolutions, self.z_channels)
    self.quant_conv = nn.Conv(self.code_dim, (1, 1))
    self.quantizer = quantize.VectorQuantizer(self.num_codes, self.commitment, self.ema_decay)
    self.post_quant_conv = nn.Conv(self.z_channels, (1, 1))
    self.decoder = Decoder(self.channels, self.channel_mult, self.num_res_blocks,
                           self.attention_resolutions)
    self.to_pixels = conv3(3)

  def encode(self, images, train=False):
    """Images in [-1, 1] → (codes with straight-through gradient [B, h, w, code_dim], the
    quantiser's {'loss', 'indices', 'counts', 'perplexity'})."""
    return self.quantizer(self.quant_conv(self.encoder(images)), train)

  def decode_features(self, codes):
    return self.decoder(self.post_quant_conv(codes))

  def decode_indices(self, indices):
    """Code indices [B, h, w] → images (what the stage-2 prior's samples become)."""
    return self.to_pixels(self.decode_features(self.quantizer.codes(indices)))

  def __call__(self, images, train=False):
    """→ (reconstructions, the decoder's features before `to_pixels`, the quantiser's dict)."""
    codes, aux = self.encode(images, train)
    features = self.decode_features(codes)
    return self.to_pixels(features), features, aux


class PatchDiscriminator(nn.Module):
  """pix2pix's PatchGAN: 4x4 convs, stride 2 `num_layers` times, then stride 1 twice; one
  real/fake logit per overlapping patch [B, h', w', 1]."""
  channels: int = 64
  num_layers: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    pad = ((1, 1), (1, 1))
    x = nn.leaky_relu(nn.Conv(self.channels, (4, 4), (2, 2), pad, name='conv0')(x), 0.2)
    for n in range(1, self.num_layers + 1):
      stride = 2 if n < self.num_layers else 1
      x = nn.Conv(self.channels * min(2 ** n, 8), (4, 4), (stride, stride), pad, use_bias=False,
                  name=f'conv{n}')(x)
      x = nn.leaky_relu(conv_lib.batch_norm(train, f'bn{n}')(x), 0.2)
    return nn.Conv(1, (4, 4), (1, 1), pad, name=f'conv{self.num_layers + 1}')(x)
