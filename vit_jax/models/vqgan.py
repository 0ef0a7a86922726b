"""VQGAN (Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis"). Its
first stage (§3.2): a convolutional encoder down to a grid of vectors, each replaced by its
nearest code (vit_jax/layers/quantize.py), and a convolutional decoder back to pixels; plus the
patch discriminator that judges the reconstructions.

The layout follows the paper's released code (CompVis/taming-transformers, read, not copied):
residual blocks of GroupNorm(32) → swish → 3x3 conv, twice; strided 3x3 convs (padded on the
bottom and right only) to go down, nearest-neighbour x2 and a 3x3 conv to go up; single-head
self-attention over the grid at the resolutions named, and in the middle, here on the shared
attention core; a 1x1 conv into and out of the codebook's width. The discriminator is
pix2pix's PatchGAN with BatchNorm, as the official code's default. Its second stage: `Prior`,
a decoder-only Transformer over the code indices, and `sample`.
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.layers import attention
from vit_jax.layers import conv as conv_lib
from vit_jax.layers import masks
from vit_jax.layers import quantize
from vit_jax.layers import transformer


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
  """Encoder → 1x1 conv → vector quantiser → 1x1 conv → decoder → 3x3 conv to pixels."""
  image_channels: int = 3
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
    self.to_pixels = conv3(self.image_channels)

  def encode(self, images, train=False):
    """Images in [-1, 1] → (codes with straight-through gradient [B, h, w, code_dim], the
    quantiser's {'loss', 'indices', 'counts', 'perplexity'})."""
    return self.quantizer(self.quant_conv(self.encoder(images)), train)

  def decode_features(self, codes):
    return self.decoder(self.post_quant_conv(codes))

  def decode_indices(self, indices):
    """Code indices [B, h, w] → images (what the stage-2 prior's samples become)."""
    return self.to_pixels(self.decode_features(self.quantizer.codes(indices)))

  def pixels(self, features):
    """The last layer alone: the decoder's features → images (for the adaptive weight)."""
    return self.to_pixels(features)

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


class Prior(nn.Module):
  """VQGAN's second stage (§3.2): p(s | c) = Π_i p(s_i | s_<i, c) over an image's code indices
  in raster order, a decoder-only Transformer on the shared core (pre-LN blocks with a causal
  mask, GPT-style), the class c a prefix token from its own table (one start token for all
  when num_classes is 0). With `decode=True` each call feeds the next tokens through a
  key/value cache: `sample` below."""
  num_codes: int
  length: int  # h · w codes per image.
  num_classes: int = 0
  hidden_size: int = 256
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 1024
  dropout_rate: float = 0.0
  deterministic: bool = True  # False when training: dropout on (rngs={'dropout': key}).
  decode: bool = False

  def setup(self):
    self.code_embed = nn.Embed(self.num_codes, self.hidden_size)
    self.start_embed = nn.Embed(max(self.num_classes, 1), self.hidden_size)
    self.positions = self.param('positions', nn.initializers.normal(0.02),
                                (self.length, self.hidden_size))
    config = transformer.BlockConfig(self.num_heads, self.mlp_dim, self.dropout_rate,
                                     norm_first=True, activation='gelu')
    self.blocks = [transformer.EncoderBlock(config, deterministic=self.deterministic,
                                            decode=self.decode, name=f'block{i}')
                   for i in range(self.num_layers)]
    self.norm = nn.LayerNorm()
    self.head = nn.Dense(self.num_codes)

  def start(self, labels):
    """The prefix token's embedding [B, 1, D] (labels [B], ignored when unconditional)."""
    labels = labels if self.num_classes else jnp.zeros_like(labels)
    return self.start_embed(labels)[:, None]

  def logits(self, x, offset=0):
    """Embedded inputs x [B, T, D] at positions offset … offset+T−1 → next-code logits."""
    x = x + jax.lax.dynamic_slice_in_dim(self.positions, offset, x.shape[1])[None]
    mask = None if self.decode else masks.causal_mask(x.shape[1])
    for block in self.blocks:
      x, _ = block(x, mask)
    return self.head(self.norm(x))

  def __call__(self, codes, labels):
    """Teacher forcing: codes [B, n] → logits [B, n, num_codes], position i predicting codes[:, i]
    from the prefix and codes[:, :i]."""
    if codes.shape[1] != self.length:
      raise ValueError(f'VQGAN prior: {codes.shape[1]} codes per image, expected '
                       f'{self.length}.')
    x = jnp.concatenate([self.start(labels), self.code_embed(codes[:, :-1])], 1)
    return self.logits(x)

  def next_logits(self, previous, labels, t):
    """Decoding step t: the prefix (t = 0) or code t−1 [B] in → logits of code t [B, K]."""
    x = jnp.where(t == 0, self.start(labels), self.code_embed(previous)[:, None])
    return self.logits(x, t)[:, 0]


def sample(prior, params, labels, rng, temperature=1.0, top_k=None):
  """Class-conditional samples [B, n] from the prior, one code at a time through the cache;
  top_k keeps the k likeliest codes at each step (None: all), temperature divides the logits."""
  decoder = prior.clone(decode=True)
  cache = decoder.init(jax.random.key(0), jnp.zeros((labels.shape[0], prior.length), jnp.int32),
                       labels)['cache']

  def step(carry, t):
    cache, previous, rng = carry
    logits, updated = decoder.apply({'params': params, 'cache': cache}, previous, labels, t,
                                    method=decoder.next_logits, mutable=['cache'])
    logits = logits / temperature
    if top_k is not None:
      kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    rng, key = jax.random.split(rng)
    code = jax.random.categorical(key, logits)
    return (updated['cache'], code, rng), code

  start = (cache, jnp.zeros(labels.shape, jnp.int32), rng)
  _, codes = jax.lax.scan(step, start, jnp.arange(prior.length))
  return codes.T
