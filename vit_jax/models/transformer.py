"""Encoder–decoder Transformer ("Attention Is All You Need", Vaswani et al. 2017).

Built from the shared core: token embedding (shared by source, target and output projection
when `share_embeddings`), embeddings scaled by √d_model (§3.4), sinusoidal positions (§3.5) or
learned ones, post-LN blocks by default (pre-LN as an option), key-padding masks on encoder
self-attention and cross-attention, padding + causal masks on decoder self-attention.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vit_jax.layers import masks
from vit_jax.layers import posemb
from vit_jax.layers import transformer

SIZES = {
    'tiny': dict(num_layers=2, d_model=64, d_ff=128, num_heads=4, dropout_rate=0.1),
    'small': dict(num_layers=3, d_model=256, d_ff=1024, num_heads=4, dropout_rate=0.1),
    'base': dict(num_layers=6, d_model=512, d_ff=2048, num_heads=8, dropout_rate=0.1),
    'big': dict(num_layers=6, d_model=1024, d_ff=4096, num_heads=16, dropout_rate=0.3),
}


def decode_size(size):
  if size not in SIZES:
    raise ValueError(f'Unknown Transformer size {size!r}; expected one of {list(SIZES)}.')
  return dict(SIZES[size])


class Transformer(nn.Module):
  """tokens in, logits out. Token id `pad_id` marks padding in both source and target."""
  vocab_size: int
  num_layers: int = 6
  d_model: int = 512
  d_ff: int = 2048
  num_heads: int = 8
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  norm_first: bool = False
  final_norm: bool = False
  share_embeddings: bool = True
  learned_positions: bool = False
  max_length: int = 512
  activation: str = 'relu'
  layer_norm_eps: float = 1e-5
  pad_id: int = 0
  decode: bool = False
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  remat: bool = False
  scan_layers: bool = False  # Each stack as one nn.scan (parameters stacked [L, ...]).

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.d_model,
                          embedding_init=nn.initializers.normal(self.d_model ** -0.5),
                          name='embedding')
    if not self.share_embeddings:
      self.target_embed = nn.Embed(self.vocab_size, self.d_model,
                                   embedding_init=nn.initializers.normal(self.d_model ** -0.5))
      self.output = nn.Dense(self.vocab_size, dtype=self.dtype)
    if self.learned_positions:
      self.positions = self.param('position_embedding', nn.initializers.normal(0.02),
                                  (self.max_length, self.d_model))
    else:
      self.positions = posemb.sinusoidal_1d(self.max_length, self.d_model)
    stack = dict(num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.d_ff,
                 dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                 norm_first=self.norm_first, final_norm=self.final_norm,
                 activation=self.activation, layer_norm_eps=self.layer_norm_eps, dtype=self.dtype,
                 remat=self.remat, scan=self.scan_layers)
    self.encoder = transformer.Encoder(**stack, name='encoder')
    self.decoder = transformer.Decoder(**stack, decode=self.decode, name='decoder')
    self.dropout = nn.Dropout(self.dropout_rate)

  def _embed(self, table, tokens, positions, train):
    x = table(tokens) * jnp.sqrt(self.d_model).astype(self.dtype)  # §3.4
    x = x + jnp.take(self.positions, positions, axis=0).astype(x.dtype)
    return self.dropout(x, deterministic=not train)

  def encode(self, source, *, segments=None, positions=None, train=False):
    """source [B, S] → (memory [B, S, D], aux). Packed rows pass `segments` (ids from 1, 0 on
    padding) and per-segment `positions`, so packed sentences never see each other."""
    if positions is None:
      positions = jnp.arange(source.shape[1])[None]
    x = self._embed(self.embed, source, positions, train)
    mask = (masks.key_padding_mask(source != self.pad_id) if segments is None else
            masks.segment_mask(segments, segments))
    return self.encoder(x, mask=mask, deterministic=not train)

  def decode_logits(self, memory, source, target_in, *, positions=None, source_segments=None,
                    target_segments=None, train=False):
    """Teacher forcing (target_in [B, T] = target shifted right) or, with `decode=True`, one
    step at a time (target_in [B, 1] at `positions` [B, 1]). → (logits [B, T, V], aux)."""
    if positions is None:
      positions = jnp.arange(target_in.shape[1])[None]
    table = self.embed if self.share_embeddings else self.target_embed
    y = self._embed(table, target_in, positions, train)
    if target_segments is None:
      cross_mask = masks.key_padding_mask(source != self.pad_id)
      # While decoding, the cache masks the future; the current token is never padding.
      self_mask = None if self.decode else masks.combine(
          masks.causal_mask(target_in.shape[1]), masks.key_padding_mask(target_in != self.pad_id))
    else:
      cross_mask = masks.segment_mask(target_segments, source_segments)
      self_mask = masks.combine(masks.causal_mask(target_in.shape[1]),
                                masks.segment_mask(target_segments, target_segments))
    y, aux = self.decoder(y, memory, self_mask=self_mask, cross_mask=cross_mask,
                          deterministic=not train)
    if self.share_embeddings:
      logits = self.embed.attend(y.astype(jnp.float32))  # Tied output projection (§3.4).
    else:
      logits = self.output(y)
    return logits.astype(jnp.float32), aux

  def __call__(self, source, target_in, *, source_segments=None, target_segments=None,
               source_positions=None, target_positions=None, train=False):
    memory, enc_aux = self.encode(source, segments=source_segments, positions=source_positions,
                                  train=train)
    logits, dec_aux = self.decode_logits(
        memory, source, target_in, positions=target_positions, source_segments=source_segments,
        target_segments=target_segments, train=train)
    return logits, {'encoder': enc_aux, 'decoder': dec_aux, 'memory': memory}
