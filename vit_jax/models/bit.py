"""The ResNet of the ViT paper's hybrid models (§3.1; Kolesnikov et al. 2020, "Big Transfer"):
bottleneck units whose convolutions standardise their weights, with GroupNorm instead of
BatchNorm, so nothing depends on the batch.

`stem_and_stages` creates its modules in the calling module's scope with the names of the
published hybrid `.npz` files ('conv_root', 'gn_root', 'block1/unit1/conv1', ...), which
therefore load as they are.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

# The published models' epsilons: weight standardisation w' = (w − mean) / (std + WS_EPS), and
# Flax's GroupNorm default. (Hugging Face's port uses 1e-8 inside the square root and 1e-5:
# outputs differ by up to ~2e-4; tests/models/test_bit.py compares at its settings.)
WS_EPS = 1e-5
GN_EPS = 1e-6


class StdConv(nn.Conv):
  """A convolution whose kernel is standardised per output channel before use (Qiao et al.
  2019), which lets GroupNorm train as well as BatchNorm."""
  ws_eps: float = WS_EPS

  def param(self, name, init_fn, *init_args, **kwargs):
    value = super().param(name, init_fn, *init_args, **kwargs)
    if name == 'kernel':  # [kh, kw, C_in, C_out]: statistics over all but C_out.
      value = value - value.mean(axis=(0, 1, 2))
      value = value / (value.std(axis=(0, 1, 2)) + self.ws_eps)
    return value


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1 (features) → 3x3 (features, stride) → 1x1 (4·features), each
  followed by GroupNorm, ReLU between; a projection on the shortcut when the shape changes.
  The last GroupNorm starts at zero scale, so every unit starts as the identity's ReLU."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  eps: tuple = (WS_EPS, GN_EPS)  # (weight standardisation, GroupNorm)

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, s, name: StdConv(f, (k, k), (s, s), padding='SAME', use_bias=False,
                                         dtype=self.dtype, ws_eps=self.eps[0], name=name)
    norm = lambda name, **kw: nn.GroupNorm(num_groups=32, epsilon=self.eps[1],
                                           dtype=self.dtype, name=name, **kw)
    residual = x
    if x.shape[-1] != 4 * self.features or self.stride != 1:
      residual = norm('gn_proj')(conv(4 * self.features, 1, self.stride, 'conv_proj')(x))
    y = nn.relu(norm('gn1')(conv(self.features, 1, 1, 'conv1')(x)))
    y = nn.relu(norm('gn2')(conv(self.features, 3, self.stride, 'conv2')(y)))
    y = norm('gn3', scale_init=nn.initializers.zeros)(conv(4 * self.features, 1, 1, 'conv3')(y))
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`units` residual units ('unit1', 'unit2', ...); the first one strides."""
  units: int
  features: int
  stride: int
  dtype: Any = jnp.float32
  eps: tuple = (WS_EPS, GN_EPS)

  @nn.compact
  def __call__(self, x):
    for j in range(self.units):
      x = ResidualUnit(self.features, self.stride if j == 0 else 1, self.dtype, self.eps,
                       name=f'unit{j + 1}')(x)
    return x


def stem_and_stages(x, num_layers: Sequence[int], width_factor: float = 1.0,
                    dtype=jnp.float32, eps=(WS_EPS, GN_EPS)):
  """images [B, H, W, C] → features [B, H / (4 · 2^(stages − 1)), ..., 4 · width · 2^(stages − 1)].

  Root: a 7x7 stride-2 convolution (64 · width_factor channels), GroupNorm, ReLU, 3x3 stride-2
  max pooling; then one stage per entry of num_layers (that many units; the first unit of
  every stage but the first halves the resolution, each stage doubles the width). Call from
  inside a module's compact method: the modules are that module's children. eps: (weight
  standardisation, GroupNorm) epsilons.
  """
  width = int(64 * width_factor)
  x = StdConv(width, (7, 7), (2, 2), padding='SAME', use_bias=False, dtype=dtype,
              ws_eps=eps[0], name='conv_root')(x)
  x = nn.relu(nn.GroupNorm(num_groups=32, epsilon=eps[1], dtype=dtype, name='gn_root')(x))
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
  for i, units in enumerate(num_layers):
    x = ResNetStage(units, width * 2 ** i, 2 if i else 1, dtype, eps, name=f'block{i + 1}')(x)
  return x


def stride_of(num_layers):
  """How much stem_and_stages shrinks the image: 4 (root) · 2 per stage after the first."""
  return 4 * 2 ** (len(num_layers) - 1)
