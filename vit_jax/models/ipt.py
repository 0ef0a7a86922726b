"""IPT ("Pre-Trained Image Processing Transformer", Chen et al. 2021): one convolutional head
and tail per restoration task around one shared Transformer body (§3.1, Fig. 2).

- Head (per task): 3x3 conv to `features` channels, two residual blocks of 5x5 convs.
- Body (shared): the head's features [B, H, W, C] cut into non-overlapping p x p patches,
  each flattened (channel-major, as torch's `unfold`) into a token of C·p² values, a linear
  embedding added to it, learned positions added once; a pre-LN encoder; a pre-LN decoder
  whose queries and keys get the task's learned query embedding (one per token position,
  §3.1 "task-specific embedding"); an MLP added back; the tokens folded into a map and the
  head's features added (a global residual).
- Tail (per task): for a scale s > 1, 3x3 convs to C·r² channels each followed by a pixel
  shuffle by r (r = 2 log2(s) times, or r = 3 once), then a 3x3 conv to the image channels.

Images come in and go out in [0, 1]; the network works on them minus the mean colour. The
shared blocks are the encoder and decoder every family uses (layers/transformer.py); the
task-specific parameters are named after the task ('head_sr2', 'tail_sr2', 'query_sr2') so a
pre-trained body fine-tunes on a subset of its tasks or on new ones.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import errors
from vit_jax.layers import kernels
from vit_jax.layers import transformer
from vit_jax.layers.conv import conv

MEAN_RGB = (0.4488, 0.4371, 0.4040)  # DIV2K's mean colour, subtracted as the official code.
TORCH_CONV = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')  # nn.Conv2d's.


def to_tokens(x, p):
  """[B, H, W, C] → [B, (H/p)·(W/p), C·p·p], patches in row-major order, each flattened
  channel-major (torch.nn.functional.unfold's order)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, (h // p) * (w // p), c * p * p)


def from_tokens(x, p, h, w):
  """Inverse of to_tokens (torch's `fold` of non-overlapping patches)."""
  b, _, d = x.shape
  c = d // (p * p)
  x = x.reshape(b, h // p, w // p, c, p, p).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h, w, c)


def pixel_shuffle(x, r):
  """[B, H, W, C·r²] → [B, H·r, W·r, C] with torch.nn.PixelShuffle's channel order."""
  b, h, w, d = x.shape
  c = d // (r * r)
  x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c)


def shuffle_steps(scale):
  """The pixel-shuffle factors of an upsampler by `scale` (EDSR's): 2 repeatedly, or 3."""
  if scale == 1:
    return []
  if scale & (scale - 1) == 0:
    return [2] * (scale.bit_length() - 1)
  if scale == 3:
    return [3]
  raise errors.UserError(f'IPT upsamples by 1, 3 or a power of 2; got scale {scale}.')


def conv_layer(features, kernel, name, dtype, kernel_init=TORCH_CONV):
  return conv(features, kernel, use_bias=True, name=name, dtype=dtype, kernel_init=kernel_init)


class Head(nn.Module):
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv_layer(self.features, 3, 'conv', self.dtype)(x)
    for i in range(2):
      y = nn.relu(conv_layer(self.features, 5, f'res{i}_conv0', self.dtype)(x))
      x = x + conv_layer(self.features, 5, f'res{i}_conv1', self.dtype)(y)
    return x


class Tail(nn.Module):
  scale: int
  channels: int
  dtype: jnp.dtype = jnp.float32
  zero_init: bool = False  # The last convolution starts at 0: the output starts at 0.

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    for i, r in enumerate(shuffle_steps(self.scale)):
      x = pixel_shuffle(conv_layer(c * r * r, 3, f'up{i}', self.dtype)(x), r)
    return conv_layer(self.channels, 3, 'conv', self.dtype,
                      nn.initializers.zeros if self.zero_init else TORCH_CONV)(x)


class Body(nn.Module):
  """The shared Transformer on feature patches. [B, H, W, C], task queries [L, D] →
  ([B, H, W, C], tokens [B, L, D] before folding, for the contrastive loss)."""
  patch_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  compute: kernels.Compute = kernels.Compute()

  @nn.compact
  def __call__(self, x, query, deterministic=True):
    _, h, w, _ = x.shape
    tokens = to_tokens(x, self.patch_size)  # [B, L, D], D = C·p²
    b, length, d = tokens.shape
    embedding = transformer.Dense(d, self.compute.dtype, name='embedding')
    embedded = embedding(tokens.reshape(b * length, d)).reshape(tokens.shape)
    tokens = tokens + nn.Dropout(self.dropout_rate)(embedded, deterministic)
    config = transformer.BlockConfig(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, norm_first=True,
        activation='relu', compute=self.compute)
    memory, _ = transformer.Encoder(self.num_layers, config, final_norm=False, posemb='learn',
                                    name='encoder')(tokens, deterministic=deterministic)
    query = jnp.broadcast_to(query, memory.shape).astype(memory.dtype)
    y, _ = transformer.Decoder(self.num_layers, config, name='decoder')(
        memory, memory, query_pos=query, deterministic=deterministic)
    y = y + transformer.MlpBlock(config, deterministic, name='mlp_head')(y)
    return from_tokens(y, self.patch_size, h, w), y


class IPT(nn.Module):
  """Degraded images [B, H, W, channels] in [0, 1] → restored [B, H·s, W·s, channels] for
  task `tasks[task]` (a Python int: each task is its own head and tail)."""
  tasks: Sequence[str]   # Names, for the task-specific parameters.
  scales: Sequence[int]  # Per task: 1 (denoising, deraining) or the super-resolution factor.
  image_size: int        # The side of the inputs: the body has one position per patch.
  channels: int = 3
  features: int = 64
  patch_size: int = 3
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 2304    # 4 x the token width C·p², as the paper.
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  # Not in the paper: add the input (bicubic-upsampled for super-resolution) to the output,
  # so the network learns the residual (VDSR, DnCNN); the tails' last convolutions start at
  # zero, so the model starts as the identity (bicubic upsampling), not at noise.
  input_skip: bool = False
  compute: kernels.Compute = kernels.Compute()

  def setup(self):
    if len(self.tasks) != len(self.scales):
      raise errors.UserError(f'IPT has {len(self.tasks)} tasks but {len(self.scales)} scales.')
    if self.image_size % self.patch_size:
      raise errors.UserError(f'IPT image_size={self.image_size} is not a multiple of '
                             f'patch_size={self.patch_size}.')
    width = self.features * self.patch_size ** 2
    if width % self.num_heads:
      raise errors.UserError(f'IPT token width features·patch_size² = {width} is not divisible '
                             f'by num_heads={self.num_heads}.')
    for scale in self.scales:
      shuffle_steps(scale)  # A bad scale is named now.
    dtype = self.compute.dtype
    self.heads = [Head(self.features, dtype, name=f'head_{t}') for t in self.tasks]
    self.tails = [Tail(s, self.channels, dtype, self.input_skip, name=f'tail_{t}')
                  for t, s in zip(self.tasks, self.scales)]
    length = (self.image_size // self.patch_size) ** 2
    self.queries = [self.param(f'query_{t}', nn.initializers.normal(1.0), (length, width))
                    for t in self.tasks]
    self.body = Body(self.patch_size, self.num_layers, self.num_heads, self.mlp_dim,
                     self.dropout_rate, self.attention_dropout_rate, self.compute, name='body')

  def __call__(self, image, task, train=False):
    """→ (restored [B, H·s, W·s, channels] in [0, 1] (not clipped), aux {'tokens': the body's
    output tokens [B, L, D]})."""
    if image.shape[1:3] != (self.image_size, self.image_size):
      raise errors.UserError(f'IPT was built for {self.image_size}x{self.image_size} inputs; '
                             f'got {image.shape[2]}x{image.shape[1]}.')
    mean = jnp.asarray(MEAN_RGB) if self.channels == 3 else 0.5
    x = self.heads[task](image - mean)
    y, tokens = self.body(x, self.queries[task], deterministic=not train)
    if self.input_skip:
      b, h, w, c = image.shape
      s = self.scales[task]
      mean = jax.image.resize(image, (b, h * s, w * s, c), 'bicubic')
    return self.tails[task](x + y) + mean, {'tokens': tokens}

  def init_all_tasks(self, images):
    """Creates every task's parameters (images: one batch per task), for `init`: each task's
    head and tail, the shared body once. Running the body once per task would give the same
    parameters, traced that many times over (the paper's six tasks: 8.5 s to trace against
    1.3 s, 2-core AMD EPYC Zen 3)."""
    self(images[0], 0)
    for t, x in enumerate(images[1:], 1):
      self.tails[t](self.heads[t](x))
