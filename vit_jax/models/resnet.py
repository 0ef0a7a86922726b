"""ResNet backbone (He et al. 2016) with frozen BatchNorm, as DETR uses it (§4, A.2).

Frozen BatchNorm: statistics and affine parameters are parameters that get no gradient (and,
being 1-D, no weight decay), so they never change; the stem and first stage are frozen by
stopping the gradient after them (the DETR config also gives their weights a learning-rate
multiplier of 0: optax.set_to_zero, no optimizer state, no weight decay). Convolutions pad
like torchvision (k // 2 on each side), so ported weights give the same features. Returns
every stage's feature map.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import errors

VARIANTS = {
    'resnet18': dict(block='basic', depths=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
    'resnet34': dict(block='basic', depths=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    'resnet50': dict(block='bottleneck', depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048)),
    'resnet101': dict(block='bottleneck', depths=(3, 4, 23, 3), widths=(256, 512, 1024, 2048)),
    # For CPU runs and tests: a ResNet-10 at a quarter of the width.
    'resnet-tiny': dict(block='basic', depths=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                        stem_width=16),
}


def decode_variant(name):
  if name not in VARIANTS:
    raise errors.UserError(f'Unknown backbone {name!r}; expected one of {sorted(VARIANTS)}.')
  return dict(VARIANTS[name])


class FrozenBatchNorm(nn.Module):
  """y = (x − mean) / √(var + eps) · scale + bias, with fixed statistics."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    mean = self.param('mean', nn.initializers.zeros, (c,))
    var = self.param('var', nn.initializers.ones, (c,))
    scale, bias, mean, var = jax.lax.stop_gradient((scale, bias, mean, var))
    factor = scale * jax.lax.rsqrt(var + self.eps)
    return x * factor.astype(x.dtype) + (bias - mean * factor).astype(x.dtype)


def norm_layer(kind, name):
  """'frozen_bn' (DETR, for pretrained weights) or 'group_norm' (trainable, for backbones
  trained from scratch, where frozen statistics would normalise nothing)."""
  if kind == 'frozen_bn':
    return FrozenBatchNorm(name=name)
  if kind == 'group_norm':
    return nn.GroupNorm(num_groups=8, name=name.replace('bn', 'gn'))
  raise errors.UserError(f"Unknown backbone norm {kind!r}; expected 'frozen_bn' or 'group_norm'.")


def conv(features, kernel, stride=1, dilation=1, name=None, dtype=jnp.float32):
  pad = dilation * (kernel // 2)
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 kernel_dilation=(dilation, dilation), use_bias=False, dtype=dtype,
                 kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
                 name=name)


class Block(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1 → 3x3 with the stride → 1x1, torchvision v1.5)."""
  features: int
  bottleneck: bool
  stride: int = 1
  dilation: int = 1
  norm: str = 'frozen_bn'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.bottleneck:
      mid = self.features // 4
      layers = [(mid, 1, 1, 1), (mid, 3, self.stride, self.dilation), (self.features, 1, 1, 1)]
    else:
      layers = [(self.features, 3, self.stride, self.dilation),
                (self.features, 3, 1, self.dilation)]
    y = x
    for i, (features, kernel, stride, dilation) in enumerate(layers):
      y = conv(features, kernel, stride, dilation, f'conv{i}', self.dtype)(y)
      y = norm_layer(self.norm, f'bn{i}')(y)
      if i < len(layers) - 1:
        y = nn.relu(y)
    if x.shape[-1] != self.features or self.stride != 1:
      x = conv(self.features, 1, self.stride, name='shortcut_conv', dtype=self.dtype)(x)
      x = norm_layer(self.norm, 'shortcut_bn')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """image [B, H, W, 3] → {'stage1': [B, H/4, W/4, C1], …, 'stage4': [B, H/32, W/32, C4]}
  (stage4 at H/16 with `dilation`)."""
  block: str = 'bottleneck'
  depths: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (256, 512, 1024, 2048)
  stem_width: int = 64
  dilation: bool = False
  norm: str = 'frozen_bn'
  frozen_stages: int = 1  # Stem + this many stages get no gradient (DETR: stem + stage 1);
  # -1 trains everything (from scratch, e.g. on the synthetic shapes).
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.block not in ('basic', 'bottleneck'):
      raise errors.UserError(
          f"Unknown ResNet block {self.block!r}; expected 'basic' or 'bottleneck'.")
    x = conv(self.stem_width, 7, 2, name='stem_conv', dtype=self.dtype)(x.astype(self.dtype))
    x = nn.relu(norm_layer(self.norm, 'stem_bn')(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    if self.frozen_stages >= 0:
      x = jax.lax.stop_gradient(x)
    features = {}
    for s, (depth, width) in enumerate(zip(self.depths, self.widths)):
      last_dilated = self.dilation and s == len(self.depths) - 1
      for b in range(depth):
        stride = 2 if (s > 0 and b == 0 and not last_dilated) else 1
        # DC5: the last stage keeps the resolution and dilates its 3x3 convolutions instead
        # (its first block still sees the undilated input, as in torchvision).
        dilation = 2 if (last_dilated and b > 0) else 1
        x = Block(width, self.block == 'bottleneck', stride, dilation, self.norm, self.dtype,
                  name=f'stage{s + 1}_block{b}')(x)
      if s + 1 <= self.frozen_stages:
        x = jax.lax.stop_gradient(x)
      features[f'stage{s + 1}'] = x
    return features
