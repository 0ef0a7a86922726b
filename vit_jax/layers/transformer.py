"""Encoder and decoder blocks and stacks shared by the three families.

Every block of a stack is built from one `BlockConfig`. `norm_first=True` is pre-LayerNorm
(ViT), `False` post-LayerNorm (the original Transformer, DETR). Positions given as
`pos`/`query_pos` are added to queries and keys only (DETR §3.2); the Transformer and ViT add
theirs to the input instead and pass None. How the stack runs (`Compute`: remat, scan over
layers, precision, attention kernel) never changes what it computes: with `scan_layers` the
blocks' parameters are stacked [L, ...] under 'encoderblock'/'decoderblock' instead of
'encoderblock_0', ... (`vit_jax.pretrained` converts between the two layouts).
"""
import dataclasses
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import errors
from vit_jax.layers import attention
from vit_jax.layers import kernels
from vit_jax.layers import posemb


@jax.custom_jvp
def gelu(x):
  """Exact GELU, x·Φ(x) = x/2·(1 + erf(x/√2)), as PyTorch computes it. Not jax.nn.gelu's
  x/2·erfc(-x/√2): XLA:CPU evaluates erfc's two branches, exponential and divisions included,
  for every element, where erf is one rational polynomial: ViT-Ti/16's train step ran 1.09x
  faster, ViT-S/16's 1.04x (benchmarks/activations.py). Both are within 1e-6 of float64's."""
  return 0.5 * x * (1 + jax.lax.erf(x * math.sqrt(0.5)))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
  """d/dx x·Φ(x) = Φ(x) + x·φ(x), from x alone. Differentiated as written, GELU kept
  erf(x/√2) from the forward pass: an activation-sized buffer per MLP, which XLA:CPU wrote in a
  pass of its own and read twice. Here Φ is 1/2 − erf(−x/√2)/2, which XLA does not merge with
  the forward's erf, so the backward pass recomputes it from x: ViT-Ti/16's train step needs
  12% less temporary memory (benchmarks/activations.py)."""
  (x,), (t,) = primals, tangents
  cdf = 0.5 - 0.5 * jax.lax.erf(x * -math.sqrt(0.5))
  pdf = jnp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
  return gelu(x), t * (cdf + x * pdf)


ACTIVATIONS = {
    'gelu': gelu,
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'relu': jax.nn.relu,
}

# Logical names of a block's output [B, L, D]; the trainer maps them to mesh axes
# (vit_jax/sharding.py) and without its rules they do nothing.
ACTIVATION_AXES = ('batch', 'length', 'embed')


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """What every block of a stack is, and how the stack runs. Defaults: the original
  Transformer's post-LN block (§3.1); ViT passes norm_first=True, 'gelu', 1e-6."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0  # The last block's; it grows linearly from 0 at the first.
  norm_first: bool = False
  activation: str = 'relu'
  layer_norm_eps: float = 1e-5
  compute: kernels.Compute = kernels.Compute()

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise errors.UserError(f'Unknown activation {self.activation!r}; expected one of '
                             f'{sorted(ACTIVATIONS)}.')


def with_pos(x, pos):
  return x if pos is None else x + pos


class Dense(nn.Module):
  """activation(x [N, D] @ kernel [D, features] + bias), in the compute dtype
  (kernels.matmul)."""
  features: int
  dtype: jnp.dtype
  activation: Optional[Callable] = None
  kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()
  bias_init: nn.initializers.Initializer = nn.initializers.normal(stddev=1e-6)

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    return kernels.matmul(x, kernel, self.dtype, bias, self.activation)


class MlpBlock(nn.Module):
  """Dense → activation → dropout → Dense → dropout (§3.3), position-wise: the tokens of
  every example are one [B*L, D] matrix."""
  config: BlockConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    c, dtype = self.config, self.config.compute.dtype
    y = Dense(c.mlp_dim, dtype, ACTIVATIONS[c.activation], name='Dense_0')(
        x.reshape(-1, x.shape[-1]))
    y = nn.Dropout(c.dropout_rate)(y, self.deterministic)
    y = Dense(x.shape[-1], dtype, name='Dense_1')(y)
    return nn.Dropout(c.dropout_rate)(y, self.deterministic).reshape(x.shape)


class DropPath(nn.Module):
  """Stochastic depth: drops a whole residual branch per example. `rate` may be traced (a
  scanned stack's per-layer rate)."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic=True):
    if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
      return x
    keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.rate,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - self.rate), 0.0)


class _Block(nn.Module):
  """What encoder and decoder blocks share: norms, attention, residual branches."""
  config: BlockConfig
  droppath_rate: float = 0.0  # This block's rate (in a scanned stack: replaced per call).
  deterministic: bool = True
  return_attention: bool = False
  # Self-attention reads and extends a key/value cache ('cache'); cross-attention projects
  # the memory's keys and values once, into the same cache.
  decode: bool = False

  def norm(self, name):
    return nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=self.config.compute.dtype,
                        name=name)

  def attention(self, name, decode=False, cache_memory=False):
    c = self.config
    return attention.MultiHeadAttention(
        c.num_heads, dropout_rate=c.attention_dropout_rate, decode=decode,
        cache_memory=cache_memory, dtype=c.compute.dtype,
        implementation=c.compute.attention_impl, name=name)

  def residual(self, y, rate):
    """A branch's output before it is added back: dropout (§5.4), then stochastic depth."""
    y = nn.Dropout(self.config.dropout_rate)(y, self.deterministic)
    return DropPath(rate)(y, self.deterministic)

  def attend(self, module, x, pos, mask, memory=None, memory_pos=None):
    """x (+ pos) attends to itself, or to `memory` (+ memory_pos). Positions go to queries
    and keys, never to values (DETR §3.2); without them one input feeds all three."""
    if memory is None:
      keys, values = None, (None if pos is None else x)
    else:
      keys, values = with_pos(memory, memory_pos), (None if memory_pos is None else memory)
    return module(with_pos(x, pos), keys, values, mask=mask, deterministic=self.deterministic,
                  return_weights=self.return_attention)


class EncoderBlock(_Block):
  """Self-attention + MLP, each in a residual branch. Names match published ViT checkpoints.
  With a causal mask (or `decode`) it is a decoder-only language model's block."""

  @nn.compact
  def __call__(self, x, mask=None, pos=None, droppath_rate=None):
    """x [B, L, D], mask [B, 1, L, L] or [B, 1, 1, L], pos [B, L, D] → (x, attention weights
    [B, H, L, L] or None). `droppath_rate`, when given, replaces the attribute."""
    rate = self.droppath_rate if droppath_rate is None else droppath_rate
    mlp = MlpBlock(self.config, self.deterministic, name='MlpBlock_3')
    attention_layer = self.attention('MultiHeadDotProductAttention_1', decode=self.decode)
    if self.config.norm_first:
      y, weights = self.attend(attention_layer, self.norm('LayerNorm_0')(x), pos, mask)
      x = x + self.residual(y, rate)
      x = x + DropPath(rate)(mlp(self.norm('LayerNorm_2')(x)), self.deterministic)
    else:
      y, weights = self.attend(attention_layer, x, pos, mask)
      x = self.norm('LayerNorm_0')(x + self.residual(y, rate))
      x = self.norm('LayerNorm_2')(x + DropPath(rate)(mlp(x), self.deterministic))
    return x, weights


class DecoderBlock(_Block):
  """Self-attention (causal/padding mask), cross-attention to the encoder memory, MLP."""

  @nn.compact
  def __call__(self, x, memory, self_mask=None, cross_mask=None, query_pos=None,
               memory_pos=None, droppath_rate=None):
    """x [B, Lq, D], memory [B, Lk, D] → (x, {'self': weights, 'cross': weights} or None).
    `droppath_rate`, when given, replaces the attribute."""
    rate = self.droppath_rate if droppath_rate is None else droppath_rate
    mlp = MlpBlock(self.config, self.deterministic, name='MlpBlock')
    self_attention = self.attention('SelfAttention', decode=self.decode)
    cross_attention = self.attention('CrossAttention', cache_memory=self.decode)
    self_branch = lambda y: self.attend(self_attention, y, query_pos, self_mask)
    cross_branch = lambda y: self.attend(cross_attention, y, query_pos, cross_mask, memory,
                                         memory_pos)

    if self.config.norm_first:
      y, self_weights = self_branch(self.norm('LayerNorm_0')(x))
      x = x + self.residual(y, rate)
      y, cross_weights = cross_branch(self.norm('LayerNorm_1')(x))
      x = x + self.residual(y, rate)
      x = x + DropPath(rate)(mlp(self.norm('LayerNorm_2')(x)), self.deterministic)
    else:
      y, self_weights = self_branch(x)
      x = self.norm('LayerNorm_0')(x + self.residual(y, rate))
      y, cross_weights = cross_branch(x)
      x = self.norm('LayerNorm_1')(x + self.residual(y, rate))
      x = self.norm('LayerNorm_2')(x + DropPath(rate)(mlp(x), self.deterministic))
    weights = {'self': self_weights, 'cross': cross_weights} if self.return_attention else None
    return x, weights


def droppath_rates(max_rate, num_layers):
  """Stochastic depth grows linearly with depth (Huang et al. 2016): 0 for the first block."""
  return [max_rate * i / max(num_layers - 1, 1) for i in range(num_layers)]


def run_stack(block, name, num_layers, config, x, *args, **block_attributes):
  """Applies `num_layers` blocks block(config, name=..., droppath_rate=...,
  **block_attributes)(x, *args) to x.

  A Python loop (parameters '<name>_0', ...) or, with `config.compute.scan_layers`, one
  nn.scan whose parameters (and decoding cache) are stacked [L, ...] under '<name>', each
  layer's drop-path rate a scanned input. Returns (x, every block's output, every block's
  attention weights (None entries unless asked for)), as lists either way.
  """
  if config.compute.remat:  # No static arguments: mode flags are module attributes.
    block = nn.remat(block)
  make = lambda name, rate: block(config, name=name, droppath_rate=rate, **block_attributes)
  rates = droppath_rates(config.droppath_rate, num_layers)
  if not config.compute.scan_layers:
    layers, weights = [], []
    for i, rate in enumerate(rates):
      x, w = make(f'{name}_{i}', rate)(x, *args)
      x = nn.with_logical_constraint(x, ACTIVATION_AXES)
      layers.append(x)
      weights.append(w)
    return x, layers, weights

  def body(module, x, rate):
    x, w = module(x, *args, rate)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    return x, (x, w)

  scanned = nn.scan(body, variable_axes={'params': 0, 'cache': 0},
                    split_rngs={'params': True, 'dropout': True}, length=num_layers)
  # Without drop-path the rate stays a Python 0.0, so no random mask is drawn.
  rates = jnp.asarray(rates) if config.droppath_rate else None
  x, (layers, weights) = scanned(make(name, config.droppath_rate), x, rates)
  unstack = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
  return x, list(layers), [unstack(weights, i) for i in range(num_layers)]


class Encoder(nn.Module):
  """A stack of encoder blocks, optionally preceded by a learned position embedding (ViT).

  Returns (x, aux): aux['layers'] holds every block's output and, when asked for,
  aux['attention'] every block's attention weights.
  """
  num_layers: int
  config: BlockConfig
  final_norm: bool = True
  posemb: Optional[str] = None  # 'learn': ViT's learned table, added before the first block.

  @nn.compact
  def __call__(self, x, *, mask=None, pos=None, deterministic=True, return_attention=False):
    if self.posemb not in (None, 'learn'):
      raise errors.UserError(f"Unknown encoder posemb {self.posemb!r}; expected None or 'learn'.")
    if self.posemb == 'learn':
      x = posemb.AddPositionEmbs(name='posembed_input')(x)
      x = nn.Dropout(self.config.dropout_rate)(x, deterministic)
    x, layers, weights = run_stack(EncoderBlock, 'encoderblock', self.num_layers, self.config,
                                   x, mask, pos, deterministic=deterministic,
                                   return_attention=return_attention)
    if self.final_norm:
      x = nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=self.config.compute.dtype,
                       name='encoder_norm')(x)
    aux = {'layers': layers}
    if return_attention:
      aux['attention'] = weights
    return x, aux


class MAPHead(nn.Module):
  """Multi-head attention pooling (big_vision's 'map' head, after Lee et al. 2019's PMA): one
  learned probe attends over all tokens, then a residual MLP. [B, L, D] → [B, D]. Parameter
  names are big_vision's, so its checkpoints load."""
  config: BlockConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    probe = self.param('probe', nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]))
    probe = jnp.broadcast_to(probe, (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
    y, _ = attention.MultiHeadAttention(c.num_heads, dtype=c.compute.dtype,
                                        implementation=c.compute.attention_impl,
                                        name='MultiHeadDotProductAttention_0')(probe, x)
    z = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=c.compute.dtype, name='LayerNorm_0')(y)
    return (y + MlpBlock(c, name='MlpBlock_0')(z))[:, 0]


class Decoder(nn.Module):
  """A stack of decoder blocks. aux['layers'] holds every block's output (after the final
  norm when `norm_every_output`, as DETR's auxiliary losses need) and, when asked for,
  aux['attention'] every block's {'self', 'cross'} weights."""
  num_layers: int
  config: BlockConfig
  final_norm: bool = False
  norm_every_output: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, memory, *, self_mask=None, cross_mask=None, query_pos=None,
               memory_pos=None, deterministic=True, return_attention=False):
    config = self.config
    if self.decode and config.compute.remat:  # Decoding keeps no activations for a backward pass.
      config = dataclasses.replace(config, compute=dataclasses.replace(config.compute,
                                                                       remat=False))
    norm = None
    if self.final_norm:
      norm = nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.compute.dtype,
                          name='decoder_norm')
    x, layers, weights = run_stack(DecoderBlock, 'decoderblock', self.num_layers, config, x,
                                   memory, self_mask, cross_mask, query_pos, memory_pos,
                                   deterministic=deterministic,
                                   return_attention=return_attention, decode=self.decode)
    if norm is not None and self.norm_every_output:
      layers = [norm(y) for y in layers]
    if norm is not None:
      x = norm(x)
    aux = {'layers': layers}
    if return_attention:
      aux['attention'] = weights
    return x, aux
