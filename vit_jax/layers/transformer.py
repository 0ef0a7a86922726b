"""Encoder and decoder blocks and stacks shared by the three families.

`norm_first=True` is pre-LayerNorm (ViT), `False` post-LayerNorm (the original Transformer,
DETR). `remat=True` recomputes each block's activations in the backward pass (less memory
for deep models, about a third more compute). `scan=True` runs the stack as one `nn.scan`
(one block compiled once, whatever the depth; its parameters stacked [L, ...] under
'encoderblock'/'decoderblock' instead of 'encoderblock_0', ...; `vit_jax.pretrained` converts
between the two layouts). Positions given as `pos`/`query_pos` are added to queries and keys
only (DETR §3.2); the Transformer and ViT add theirs to the input instead and pass None.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.layers import attention
from vit_jax.layers import posemb

ACTIVATIONS = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'relu': jax.nn.relu,
}


# Logical names of a block's output [B, L, D]; the trainer maps them to mesh axes
# (vit_jax/sharding.py) and without its rules they do nothing.
ACTIVATION_AXES = ('batch', 'length', 'embed')


def with_pos(x, pos):
  return x if pos is None else x + pos


class MlpBlock(nn.Module):
  """Dense → activation → dropout → Dense → dropout, as 2-D matmuls."""
  mlp_dim: int
  activation: str = 'gelu'
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'Unknown activation {self.activation!r}; expected one of '
                       f'{sorted(ACTIVATIONS)}.')
    shape, dim = x.shape, x.shape[-1]
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, name=name, kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6),
        dot_general=lambda x, w, *_, **__: attention.matmul(x, w, self.dtype))
    y = dense(self.mlp_dim, 'Dense_0')(x.reshape(-1, dim))
    y = ACTIVATIONS[self.activation](y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic)
    y = dense(dim, 'Dense_1')(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic)
    return y.reshape(shape)


class DropPath(nn.Module):
  """Stochastic depth: drops a whole residual branch per example. `rate` may be traced (a
  scanned stack's per-layer rate)."""
  rate: Any = 0.0

  @nn.compact
  def __call__(self, x, deterministic=True):
    if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
      return x
    keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.rate,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - self.rate), 0.0)


class EncoderBlock(nn.Module):
  """Self-attention + MLP, each in a residual branch. Names match published ViT checkpoints."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  norm_first: bool = True
  activation: str = 'gelu'
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, pos=None, deterministic=True, droppath_rate=None):
    """x [B, L, D], mask [B, 1, L, L] or [B, 1, 1, L], pos [B, L, D] → (x, attention weights).
    `droppath_rate`, when given, replaces the attribute (a scanned stack's per-layer rate)."""
    rate = self.droppath_rate if droppath_rate is None else droppath_rate
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)
    attn = attention.MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout_rate,
                                        dtype=self.dtype, name='MultiHeadDotProductAttention_1')
    drop = lambda y: DropPath(rate)(nn.Dropout(self.dropout_rate)(y, deterministic), deterministic)
    mlp = MlpBlock(self.mlp_dim, self.activation, self.dropout_rate, self.dtype, name='MlpBlock_3')

    if self.norm_first:
      y = norm('LayerNorm_0')(x)
      qk = with_pos(y, pos)
      y, weights = attn(qk, qk, y, mask=mask, deterministic=deterministic)
      x = x + drop(y)
      x = x + DropPath(rate)(mlp(norm('LayerNorm_2')(x), deterministic), deterministic)
    else:
      qk = with_pos(x, pos)
      y, weights = attn(qk, qk, x, mask=mask, deterministic=deterministic)
      x = norm('LayerNorm_0')(x + drop(y))
      x = norm('LayerNorm_2')(x + DropPath(rate)(mlp(x, deterministic), deterministic))
    return x, weights


class DecoderBlock(nn.Module):
  """Self-attention (causal/padding mask), cross-attention to the encoder memory, MLP."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  norm_first: bool = False
  activation: str = 'relu'
  layer_norm_eps: float = 1e-5
  decode: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, memory, self_mask=None, cross_mask=None, query_pos=None,
               memory_pos=None, deterministic=True, droppath_rate=None):
    """x [B, Lq, D], memory [B, Lk, D] → (x, {'self': weights, 'cross': weights}).
    `droppath_rate`, when given, replaces the attribute (a scanned stack's per-layer rate)."""
    rate = self.droppath_rate if droppath_rate is None else droppath_rate
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name=name)
    mha = lambda name, decode: attention.MultiHeadAttention(
        self.num_heads, dropout_rate=self.attention_dropout_rate, decode=decode,
        dtype=self.dtype, name=name)
    drop = lambda y: DropPath(rate)(nn.Dropout(self.dropout_rate)(y, deterministic), deterministic)
    mlp = MlpBlock(self.mlp_dim, self.activation, self.dropout_rate, self.dtype, name='MlpBlock')
    self_attn = mha('SelfAttention', self.decode)
    cross_attn = mha('CrossAttention', False)
    memory_k = with_pos(memory, memory_pos)

    def self_branch(y):
      qk = with_pos(y, query_pos)
      return self_attn(qk, qk, y, mask=self_mask, deterministic=deterministic)

    def cross_branch(y):
      return cross_attn(with_pos(y, query_pos), memory_k, memory, mask=cross_mask,
                        deterministic=deterministic)

    if self.norm_first:
      y, self_weights = self_branch(norm('LayerNorm_0')(x))
      x = x + drop(y)
      y, cross_weights = cross_branch(norm('LayerNorm_1')(x))
      x = x + drop(y)
      x = x + DropPath(rate)(mlp(norm('LayerNorm_2')(x), deterministic), deterministic)
    else:
      y, self_weights = self_branch(x)
      x = norm('LayerNorm_0')(x + drop(y))
      y, cross_weights = cross_branch(x)
      x = norm('LayerNorm_1')(x + drop(y))
      x = norm('LayerNorm_2')(x + DropPath(rate)(mlp(x, deterministic), deterministic))
    return x, {'self': self_weights, 'cross': cross_weights}


def droppath_rates(max_rate, num_layers):
  """Stochastic depth grows linearly with depth (Huang et al. 2016): 0 for the first block."""
  return [max_rate * i / max(num_layers - 1, 1) for i in range(num_layers)]


def run_stack(make_block, name, num_layers, max_droppath_rate, scan, x, *args):
  """Applies `num_layers` blocks make_block(name, droppath_rate)(x, *args) to x.

  A Python loop (parameters '<name>_0', ...) or, with `scan`, one nn.scan whose parameters
  (and decoding cache) are stacked [L, ...] under '<name>', each layer's drop-path rate a
  scanned input. Returns (x, every block's output, every block's attention weights), as lists
  either way.
  """
  rates = droppath_rates(max_droppath_rate, num_layers)
  if not scan:
    layers, weights = [], []
    for i, rate in enumerate(rates):
      x, w = make_block(f'{name}_{i}', rate)(x, *args)
      x = nn.with_logical_constraint(x, ACTIVATION_AXES)
      layers.append(x)
      weights.append(w)
    return x, layers, weights

  def body(block, x, rate):
    x, w = block(x, *args, rate)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    return x, (x, w)

  scanned = nn.scan(body, variable_axes={'params': 0, 'cache': 0},
                    split_rngs={'params': True, 'dropout': True}, length=num_layers)
  # Without drop-path the rate stays a Python 0.0, so no random mask is drawn.
  rates = jnp.asarray(rates) if max_droppath_rate else None
  x, (layers, weights) = scanned(make_block(name, max_droppath_rate), x, rates)
  unstack = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
  return x, list(layers), [unstack(weights, i) for i in range(num_layers)]


class Encoder(nn.Module):
  """A stack of encoder blocks, optionally preceded by a learned position embedding (ViT).

  Returns (x, aux): aux['layers'] holds every block's output, aux['attention'] every block's
  attention weights (unused entries cost nothing under jit).
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  norm_first: bool = True
  final_norm: bool = True
  learned_posemb: bool = False
  activation: str = 'gelu'
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  remat: bool = False
  scan: bool = False

  @nn.compact
  def __call__(self, x, *, mask=None, pos=None, deterministic=True):
    block = nn.remat(EncoderBlock, static_argnums=(4,)) if self.remat else EncoderBlock
    if self.learned_posemb:
      x = posemb.AddPositionEmbs(name='posembed_input')(x)
      x = nn.Dropout(self.dropout_rate)(x, deterministic)
    make_block = lambda name, rate: block(
        self.num_heads, self.mlp_dim, self.dropout_rate, self.attention_dropout_rate, rate,
        self.norm_first, self.activation, self.layer_norm_eps, self.dtype, name=name)
    x, layers, weights = run_stack(make_block, 'encoderblock', self.num_layers,
                                   self.droppath_rate, self.scan, x, mask, pos, deterministic)
    if self.final_norm:
      x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name='encoder_norm')(x)
    return x, {'layers': layers, 'attention': weights}


class Decoder(nn.Module):
  """A stack of decoder blocks. aux['layers'] holds every block's output (after the final
  norm when `norm_every_output`, as DETR's auxiliary losses need)."""
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droppath_rate: float = 0.0
  norm_first: bool = False
  final_norm: bool = False
  norm_every_output: bool = False
  activation: str = 'relu'
  layer_norm_eps: float = 1e-5
  decode: bool = False
  dtype: Any = jnp.float32
  remat: bool = False
  scan: bool = False

  @nn.compact
  def __call__(self, x, memory, *, self_mask=None, cross_mask=None, query_pos=None,
               memory_pos=None, deterministic=True):
    block = DecoderBlock
    if self.remat and not self.decode:  # Decoding keeps no activations for a backward pass.
      block = nn.remat(DecoderBlock, static_argnums=(7,))
    norm = None
    if self.final_norm:
      norm = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name='decoder_norm')
    make_block = lambda name, rate: block(
        self.num_heads, self.mlp_dim, self.dropout_rate, self.attention_dropout_rate, rate,
        self.norm_first, self.activation, self.layer_norm_eps, self.decode,
        self.dtype, name=name)
    x, layers, weights = run_stack(make_block, 'decoderblock', self.num_layers,
                                   self.droppath_rate, self.scan, x, memory, self_mask,
                                   cross_mask, query_pos, memory_pos, deterministic)
    if norm is not None and self.norm_every_output:
      layers = [norm(y) for y in layers]
    if norm is not None:
      x = norm(x)
    return x, {'layers': layers, 'attention': weights}
