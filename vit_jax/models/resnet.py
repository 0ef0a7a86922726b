"""ResNet (He et al. 2016): DETR's backbone with frozen BatchNorm (§4, A.2), and an image
classifier with BatchNorm and, optionally, one of the attention modules for CNNs
(layers/channel_attention.py, layers/spatial_attention.py) where its paper puts it.

Frozen BatchNorm: statistics and affine parameters are parameters that get no gradient (and,
being 1-D, no weight decay), so they never change; the stem and first stage are frozen by
stopping the gradient after them (the DETR config also gives their weights a learning-rate
multiplier of 0: optax.set_to_zero, no optimizer state, no weight decay). Convolutions pad
like torchvision (layers/conv.py), so ported weights give the same features. Returns
every stage's feature map.
"""
import dataclasses
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import errors
from vit_jax.layers import channel_attention as ca
from vit_jax.layers import conv as conv_lib
from vit_jax.layers import spatial_attention as sa
from vit_jax.layers.conv import conv, stem_max_pool

VARIANTS = {
    'resnet18': dict(block='basic', depths=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
    'resnet34': dict(block='basic', depths=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    'resnet50': dict(block='bottleneck', depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048)),
    'resnet101': dict(block='bottleneck', depths=(3, 4, 23, 3), widths=(256, 512, 1024, 2048)),
    # For CPU runs, tests and 28x28 digits: a ResNet-10 at a quarter of the width.
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


NORMS = ('frozen_bn', 'group_norm', 'batch_norm')


def norm_layer(kind, name, train=False):
  """'frozen_bn' (DETR, for pretrained weights), 'group_norm' (trainable, for backbones
  trained from scratch without batch statistics) or 'batch_norm' (the ResNet papers', with
  running statistics in 'batch_stats')."""
  if kind == 'frozen_bn':
    return FrozenBatchNorm(name=name)
  if kind == 'group_norm':
    return nn.GroupNorm(num_groups=8, name=name.replace('bn', 'gn'))
  if kind == 'batch_norm':
    return conv_lib.batch_norm(train, name)
  raise errors.UserError(f'Unknown backbone norm {kind!r}; expected one of {NORMS}.')


# model.block_attention: where each module goes (see the modules' docstrings for the papers).
IN_BLOCK = {  # On the residual branch, before the addition, in every block.
    'se': ca.SqueezeExcite, 'eca': ca.EfficientChannelAttention, 'gc': ca.GlobalContext,
    'gsop': ca.GlobalSecondOrderPooling, 'cbam': sa.CBAM}
AFTER_STAGES = {  # After the stages in model.attention_stages (default: the paper's).
    'nonlocal': (sa.NonLocal, (3,)),  # Wang et al. 2018 §4.1: in res4 (our stage 3).
    'danet': (sa.DualAttention, (4,)),  # Fu et al. 2019: on the last feature map.
    'bam': (sa.BAM, (1, 2, 3)),  # Park et al. 2018 §3: at each bottleneck between stages.
}
# Every module by name (its class holds its hyperparameters). 'sk' replaces each block's 3x3
# convolution (a bottleneck's middle one, a basic block's first); 'anl' fuses the last two
# stages (AFNB) and refines the result (APNB), as ANN.
MODULES = {**IN_BLOCK, **{name: m for name, (m, _) in AFTER_STAGES.items()},
           'sk': ca.SelectiveKernel, 'anl': sa.AFNB}
ATTENTION = tuple(MODULES)
# Modules with BatchNorm inside, as their papers have it: a ResNet without batch statistics
# (frozen_bn or group_norm, the detection backbones) has none for them to train.
WITH_BATCH_NORM = ('gsop', 'sk', 'bam', 'nonlocal', 'anl')
SET_BY_THE_BLOCK = ('parent', 'name', 'dtype', 'features', 'stride')


def attention_args(name, args, key='model.attention_args'):
  """The hyperparameters a config sets (None: the paper's value) → the module's keyword
  arguments; one the module does not take is an error naming those it does."""
  given = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if v is not None}
  if given and name is None:
    raise errors.UserError(f'{key} sets {sorted(given)}, but no attention module is chosen.')
  if name is None:
    return flax.core.FrozenDict()
  takes = [f.name for f in dataclasses.fields(MODULES[name]) if f.name not in SET_BY_THE_BLOCK]
  wrong = sorted(set(given) - set(takes))
  if wrong:
    raise errors.UserError(f'{key}.{wrong[0]} does not apply to {name!r}; it takes {takes}.')
  return flax.core.FrozenDict(given)


def check_attention(name, norm='batch_norm', key='model.block_attention'):
  if name is not None and name not in ATTENTION:
    raise errors.UserError(f'Unknown {key} {name!r}; expected None or one of '
                           f'{sorted(ATTENTION)}.')
  if norm != 'batch_norm' and name in WITH_BATCH_NORM:
    raise errors.UserError(
        f'{key} {name!r} has BatchNorm inside, whose statistics a backbone with norm {norm!r} '
        f'does not train; expected one of {sorted(set(ATTENTION) - set(WITH_BATCH_NORM))}.')


class Block(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1 → 3x3 with the stride → 1x1, torchvision v1.5), with
  an optional attention module (IN_BLOCK, or 'sk' in place of the 3x3 convolution)."""
  features: int
  bottleneck: bool
  stride: int = 1
  dilation: int = 1
  norm: str = 'frozen_bn'
  attention: Optional[str] = None
  attention_args: Any = flax.core.FrozenDict()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    if self.bottleneck:
      mid = self.features // 4
      layers = [(mid, 1, 1, 1), (mid, 3, self.stride, self.dilation), (self.features, 1, 1, 1)]
    else:
      layers = [(self.features, 3, self.stride, self.dilation),
                (self.features, 3, 1, self.dilation)]
    y = x
    for i, (features, kernel, stride, dilation) in enumerate(layers):
      if self.attention == 'sk' and kernel == 3 and (self.bottleneck or i == 0):
        y = ca.SelectiveKernel(features, stride, **self.attention_args, dtype=self.dtype,
                               name='sk')(y, train)  # Its branches have their norm and ReLU.
        continue
      y = conv(features, kernel, stride, dilation, name=f'conv{i}', dtype=self.dtype)(y)
      y = norm_layer(self.norm, f'bn{i}', train)(y)
      if i < len(layers) - 1:
        y = nn.relu(y)
    if self.attention in IN_BLOCK:
      y = IN_BLOCK[self.attention](**self.attention_args, dtype=self.dtype,
                                   name='attention')(y, train)
    if x.shape[-1] != self.features or self.stride != 1:
      x = conv(self.features, 1, self.stride, name='shortcut_conv', dtype=self.dtype)(x)
      x = norm_layer(self.norm, 'shortcut_bn', train)(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """image [B, H, W, 3] → {'stage1': [B, H/4, W/4, C1], …, 'stage4': [B, H/32, W/32, C4]}
  (with `dilation`: the last `dilation` stages keep the resolution, e.g. 1 (or True): DETR's DC5,
  stage4 at H/16; 2: stage3 and stage4 at H/8; with stem='small', a 3x3 stride-1 stem and no max-pool for
  small images such as 28x28 digits, H/1 … H/8)."""
  block: str = 'bottleneck'
  depths: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (256, 512, 1024, 2048)
  stem_width: int = 64
  stem: str = 'imagenet'  # or 'small'
  dilation: int = 0  # How many last stages dilate instead of striding (True: 1, DC5).
  norm: str = 'frozen_bn'
  frozen_stages: int = 1  # Stem + this many stages get no gradient (DETR: stem + stage 1);
  # -1 trains everything (from scratch, e.g. on the synthetic shapes).
  block_attention: Optional[str] = None  # A name in ATTENTION.
  attention_args: Any = flax.core.FrozenDict()  # Its hyperparameters, e.g. {'reduction': 16}.
  attention_stages: Optional[Sequence[int]] = None  # For AFTER_STAGES (None: the paper's).
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    if self.block not in ('basic', 'bottleneck'):
      raise errors.UserError(
          f"Unknown ResNet block {self.block!r}; expected 'basic' or 'bottleneck'.")
    if self.stem not in ('imagenet', 'small'):
      raise errors.UserError(f"Unknown ResNet stem {self.stem!r}; expected 'imagenet' or "
                             "'small'.")
    check_attention(self.block_attention, self.norm)
    args = dict(self.attention_args or {})
    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = conv(self.stem_width, 7, 2, name='stem_conv', dtype=self.dtype)(x)
      x = nn.relu(norm_layer(self.norm, 'stem_bn', train)(x))
      x = stem_max_pool(x)
    else:
      x = conv(self.stem_width, 3, 1, name='stem_conv', dtype=self.dtype)(x)
      x = nn.relu(norm_layer(self.norm, 'stem_bn', train)(x))
    if self.frozen_stages >= 0:
      x = jax.lax.stop_gradient(x)
    in_block = (self.block_attention if self.block_attention in IN_BLOCK
                or self.block_attention == 'sk' else None)
    after, default_stages = AFTER_STAGES.get(self.block_attention, (None, ()))
    stages = tuple(self.attention_stages or default_stages)
    features = {}
    rate = 1  # torchvision's replace_stride_with_dilation: each dilated stage doubles the rate.
    for s, (depth, width) in enumerate(zip(self.depths, self.widths)):
      dilated = s >= len(self.depths) - int(self.dilation) and s > 0
      previous, rate = rate, rate * 2 if dilated else rate
      for b in range(depth):
        stride = 2 if (s > 0 and b == 0 and not dilated) else 1
        # A dilated stage keeps the resolution and dilates its 3x3 convolutions instead (its
        # first block at the previous stage's rate, as in torchvision).
        dilation = previous if b == 0 else rate
        x = Block(width, self.block == 'bottleneck', stride, dilation, self.norm, in_block,
                  args if in_block else {}, self.dtype, name=f'stage{s + 1}_block{b}')(x, train)
      if s + 1 <= self.frozen_stages:
        x = jax.lax.stop_gradient(x)
      if after is not None and s + 1 in stages:
        x = after(**args, dtype=self.dtype, name=f'stage{s + 1}_attention')(x, train)
      features[f'stage{s + 1}'] = x
    if self.block_attention == 'anl':
      last, previous = f'stage{len(self.depths)}', f'stage{len(self.depths) - 1}'
      x = sa.AFNB(**args, dtype=self.dtype, name='afnb')(features[previous], x, train)
      features[last] = sa.APNB(**args, dtype=self.dtype, name='apnb')(x, train)
    return features


class ResNetClassifier(nn.Module):
  """image [B, H, W, C] → logits [B, num_classes]: the ResNet's last stage, global average
  pooling, one linear layer (He et al. 2016, §3.4)."""
  num_classes: int
  backbone: Any = flax.core.FrozenDict()  # ResNet's fields.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image, train=False):
    features = ResNet(**self.backbone, dtype=self.dtype, name='resnet')(image, train)
    pooled = conv_lib.global_avg_pool(features[f'stage{len(features)}'])
    self.sow('intermediates', 'pre_logits', pooled)  # Frozen features (few-shot evaluation).
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(pooled).astype(jnp.float32)
