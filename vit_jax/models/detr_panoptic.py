"""DETR's panoptic segmentation head (Carion et al. 2020, §4.4 and Fig. 8).

On top of the detector (whose parameters keep their names, so a trained DETR loads into it):
each object query's multi-head attention maps over the encoder output (layers/attention.py:
AttentionMap), then a small FPN-style convolutional upsampler — the projected features with
the maps, 3x3 convolutions with GroupNorm and ReLU, three nearest 2x steps that add the
ResNet's stage 3, 2 and 1 features — gives one mask logit per query at stride 4.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import errors
from vit_jax.layers import attention
from vit_jax.models import detr

# The official code's kaiming_uniform_(a=1): variance 1 / fan-in.
CONV_INIT = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def nearest_resize(x, height, width):
  """[..., h, w, C] → [..., height, width, C], torch's 'nearest' (source = ⌊i · h / height⌋)."""
  h, w = x.shape[-3:-1]
  rows = (jnp.arange(height) * h) // height
  cols = (jnp.arange(width) * w) // width
  return x[..., rows, :, :][..., cols, :]


class ConvBlock(nn.Module):
  """3x3 convolution → GroupNorm (8 groups, or one per channel below 8) → ReLU."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), padding=1, kernel_init=CONV_INIT, dtype=self.dtype,
                name='conv')(x)
    x = nn.GroupNorm(num_groups=min(8, self.features), epsilon=1e-5, name='norm')(x)
    return nn.relu(x)


class MaskHead(nn.Module):
  """features [B, h, w, D] (the projected backbone features), maps [B, Q, H, h, w] and skips
  (the backbone's stage 3, 2, 1 features, coarse to fine) → mask logits [B, Q, 4h', 4w'] at
  the finest skip's size.

  The first convolution reads the features and the maps stacked (D + H channels, as the
  paper); it runs on the features once per image and on the maps once per query, the sum of
  the two halves of its kernel, which is the same convolution without copying the features
  for every query. The skips' 1x1 adapters run once per image too."""
  hidden_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features, maps, skips):
    b, q, heads, h, w = maps.shape
    d = self.hidden_size
    channels = d + heads
    if channels % 8:
      raise errors.UserError(f'The mask head\'s GroupNorm needs hidden_size + num_heads = {d} + '
                             f'{heads} = {channels} divisible by 8.')
    maps = maps.transpose(0, 1, 3, 4, 2).reshape(b * q, h, w, heads)
    kernel = self.param('conv1_kernel', CONV_INIT, (3, 3, channels, channels))
    bias = self.param('conv1_bias', nn.initializers.zeros, (channels,))
    conv = lambda x, k: jax.lax.conv_general_dilated(
        x.astype(self.dtype), k.astype(self.dtype), (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), preferred_element_type=jnp.float32)
    x = (conv(features, kernel[:, :, :d])[:, None] +
         conv(maps, kernel[:, :, d:]).reshape(b, q, h, w, channels) + bias)
    x = nn.relu(nn.GroupNorm(num_groups=8, epsilon=1e-5, name='conv1_norm')(
        x.reshape(b * q, h, w, channels)))
    x = ConvBlock(d // 2, self.dtype, name='conv2')(x)
    for i, (skip, out) in enumerate(zip(skips, (d // 4, d // 8, d // 16))):
      skip = nn.Conv(x.shape[-1], (1, 1), kernel_init=CONV_INIT, dtype=self.dtype,
                     name=f'adapter{i}')(skip)  # [B, H_i, W_i, C]
      x = nearest_resize(x.reshape(b, q, *x.shape[1:]), *skip.shape[1:3]) + skip[:, None]
      x = ConvBlock(out, self.dtype, name=f'fpn{i}')(x.reshape(b * q, *x.shape[2:]))
    x = nn.Conv(1, (3, 3), padding=1, kernel_init=CONV_INIT, dtype=self.dtype,
                name='out')(x)
    return x.reshape(b, q, *x.shape[1:3]).astype(jnp.float32)


class PanopticDETR(detr.DETR):
  """DETR with the mask head: outputs also hold 'masks' [B, Q, H/4, W/4], each query's mask
  logits from the last decoder layer."""

  def setup(self):
    super().setup()
    self.bbox_attention = attention.AttentionMap(self.num_heads, dtype=self.compute.dtype)
    self.mask_head = MaskHead(self.hidden_size, dtype=self.compute.dtype)

  def __call__(self, image, pixel_mask=None, *, train=False, return_attention=False,
               masks=True):
    """As DETR's; `masks=False` leaves the masks out and returns in aux what `masks()` needs
    to draw them for chosen queries (training draws only the matched ones: the loss sees no
    other)."""
    stages, mask = self.backbone_stages(image, pixel_mask)
    outputs, aux = self.detect(stages['stage4'], mask, train=train,
                               return_attention=return_attention)
    aux['skips'] = [stages['stage3'], stages['stage2'], stages['stage1']]
    if masks:
      outputs['masks'], aux['mask_attention'] = self.masks(aux['hidden'], aux)
    return outputs, aux

  def masks(self, hidden, aux):
    """Query states [B, K, D] and the forward pass's aux → (mask logits [B, K, H/4, W/4],
    attention maps [B, K, heads, h, w])."""
    maps = self.bbox_attention(hidden, aux['memory'], aux['feature_mask'])
    return self.mask_head(aux['projected'], maps, aux['skips']), maps
