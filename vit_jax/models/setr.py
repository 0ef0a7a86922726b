"""SETR ("Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with
Transformers", Zheng et al. 2021): the ViT encoder (models/vit.py, its parameters under
'encoder', so a published ViT .npz initialises it) and one of the paper's three decoders
(§3.3), which turn the patch tokens back into a map of per-pixel class logits:

- 'naive': 1x1 conv + norm + ReLU + 1x1 conv to the classes, bilinear upsampling to the image.
- 'pup' (progressive upsampling): 3x3 conv + norm + ReLU + 2x bilinear upsampling, log2(patch)
  times, then a 1x1 conv to the classes at full resolution.
- 'mla' (multi-level aggregation): four encoder layers evenly spaced (the last included), each
  normalised and reduced by a 1x1 conv, summed top-down (deepest first), then per stream 3x3
  convs halving the channels and 4x upsampling; the streams concatenated, a 1x1 conv to the
  classes and upsampling to the image.

Auxiliary heads (`aux_layers`, the paper's auxiliary losses on intermediate layers) are
naive decoders on those encoder layers' outputs.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import errors
from vit_jax.layers import kernels
from vit_jax.layers.conv import conv
from vit_jax.models import resnet
from vit_jax.models import vit

DECODERS = ('naive', 'pup', 'mla')


def upsample(x, factor):
  """[B, h, w, C] → [B, h·f, w·f, C], bilinear (half-pixel centres, align_corners=False)."""
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, h * factor, w * factor, c), 'bilinear')


class ConvNormReLU(nn.Module):
  features: int
  kernel: int
  norm: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    x = conv(self.features, self.kernel, name='conv', dtype=self.dtype)(x)
    return nn.relu(resnet.norm_layer(self.norm, 'bn', train)(x))


class NaiveHead(nn.Module):
  num_classes: int
  features: int
  norm: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train):
    x = ConvNormReLU(self.features, 1, self.norm, self.dtype, name='project')(x, train)
    return conv(self.num_classes, 1, use_bias=True, name='classifier', dtype=self.dtype)(x)


class SETR(nn.Module):
  num_classes: int
  encoder: vit.VisionTransformer  # With num_classes=0: the encoder alone.
  decoder: str = 'naive'
  decoder_dim: int = 256
  norm: str = 'batch_norm'  # The paper's (synchronised) BatchNorm, or 'group_norm'.
  aux_layers: Sequence[int] = ()  # 1-based encoder layers with an auxiliary naive head.
  compute: kernels.Compute = kernels.Compute()

  @property
  def patch_size(self):
    p = self.encoder.patch_size
    return p if isinstance(p, int) else p[0]

  def mla_layers(self):
    """The four encoder layers MLA reads (1-based): evenly spaced, ending at the last."""
    n = self.encoder.num_layers
    if n < 4:
      raise errors.UserError(f"SETR's MLA decoder reads four encoder layers; the encoder has "
                             f'{n}.')
    return [n * (i + 1) // 4 for i in range(4)]

  @nn.compact
  def __call__(self, images, *, train=False, return_attention=False):
    """images [B, H, W, C] → (logits [B, H, W, num_classes], aux: 'aux_logits' (one
    [B, H, W, num_classes] per aux layer), the encoder's 'attention' when asked for)."""
    if self.decoder not in DECODERS:
      raise errors.UserError(f'Unknown SETR decoder {self.decoder!r}; expected one of '
                             f'{list(DECODERS)}.')
    h, w = images.shape[1:3]
    _, enc = self.encoder(images, train=train, return_attention=return_attention)
    gh, gw = enc['grid']
    tokens = gh * gw
    as_map = lambda x: x[:, -tokens:].reshape(x.shape[0], gh, gw, x.shape[-1])  # No cls token.
    dtype = self.compute.dtype
    full = lambda x: jax.image.resize(x, (x.shape[0], h, w, x.shape[-1]), 'bilinear')

    if self.decoder == 'naive':
      logits = full(NaiveHead(self.num_classes, self.decoder_dim, self.norm, dtype,
                              name='decoder')(as_map(enc['tokens']), train))
    elif self.decoder == 'pup':
      steps = math.log2(self.patch_size)
      if steps != int(steps):
        raise errors.UserError(f"SETR's PUP decoder upsamples 2x per step; the patch size "
                               f'{self.patch_size} is not a power of 2.')
      x = as_map(enc['tokens'])
      for i in range(int(steps)):
        x = upsample(ConvNormReLU(self.decoder_dim, 3, self.norm, dtype,
                                  name=f'decoder_up{i}')(x, train), 2)
      logits = full(conv(self.num_classes, 1, use_bias=True, name='decoder_classifier',
                         dtype=dtype)(x))
    else:
      logits = full(self._mla(enc['layers'], as_map, train))

    aux = {'aux_logits': []}
    for layer in self.aux_layers:
      if not 1 <= layer <= self.encoder.num_layers:
        raise errors.UserError(f'model.aux_layers has {layer}; the encoder has layers 1..'
                               f'{self.encoder.num_layers}.')
      x = nn.LayerNorm(epsilon=1e-6, name=f'aux_norm{layer}')(enc['layers'][layer - 1])
      aux['aux_logits'].append(full(NaiveHead(self.num_classes, self.decoder_dim, self.norm,
                                              dtype, name=f'aux_head{layer}')(as_map(x), train)))
    if return_attention:
      aux['attention'] = enc['attention']
    return logits.astype(jnp.float32), aux

  def _mla(self, layers, as_map, train):
    dtype, d = self.compute.dtype, self.decoder_dim
    streams = []
    for i, layer in enumerate(self.mla_layers()):
      x = nn.LayerNorm(epsilon=1e-6, name=f'mla_norm{i}')(layers[layer - 1])
      streams.append(ConvNormReLU(d // 2, 1, self.norm, dtype, name=f'mla_reduce{i}')(
          as_map(x), train))
    for i in reversed(range(3)):  # Top-down: each stream gets the deeper streams' sum.
      streams[i] = streams[i] + streams[i + 1]
    factor = min(4, self.patch_size)
    outs = []
    for i, x in enumerate(streams):
      x = ConvNormReLU(d // 2, 3, self.norm, dtype, name=f'mla_conv{i}a')(x, train)
      x = ConvNormReLU(d // 4, 3, self.norm, dtype, name=f'mla_conv{i}b')(x, train)
      outs.append(upsample(x, factor))
    x = jnp.concatenate(outs, -1)
    return conv(self.num_classes, 1, use_bias=True, name='mla_classifier', dtype=dtype)(x)
