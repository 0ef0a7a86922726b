"""Encoder–decoder Transformer ("Attention Is All You Need", Vaswani et al. 2017).

Built from the shared core: token embedding (shared by source, target and output projection
when `share_embeddings`), embeddings scaled by √hidden_size (§3.4), sinusoidal positions
(§3.5, posemb='sincos') or learned ones ('learn'), post-LN blocks by default (pre-LN as an
option), key-padding masks on encoder self-attention and cross-attention, padding + causal
masks on decoder self-attention.
"""
import flax.linen as nn
import jax.numpy as jnp

from vit_jax import errors
from vit_jax.layers import kernels
from vit_jax.layers import masks
from vit_jax.layers import posemb
from vit_jax.layers import transformer

# The paper's base and big models (Table 3), and smaller ones for CPU runs ('small': the
# default number-words model) and tests ('tiny').
VARIANTS = {
    'tiny': dict(num_layers=1, hidden_size=32, mlp_dim=64, num_heads=2, dropout_rate=0.1),
    'small': dict(num_layers=3, hidden_size=128, mlp_dim=512, num_heads=4, dropout_rate=0.1),
    'base': dict(num_layers=6, hidden_size=512, mlp_dim=2048, num_heads=8, dropout_rate=0.1),
    'big': dict(num_layers=6, hidden_size=1024, mlp_dim=4096, num_heads=16, dropout_rate=0.3),
}


def decode_variant(variant):
  if variant not in VARIANTS:
    raise errors.UserError(f'Unknown Transformer variant {variant!r}; expected one of '
                           f'{list(VARIANTS)}.')
  return dict(VARIANTS[variant])


class Transformer(nn.Module):
  """tokens in, logits out. Token id `pad_id` marks padding in both source and target."""
  vocab_size: int
  num_layers: int = 6  # Of each stack (N in the paper).
  hidden_size: int = 512
  mlp_dim: int = 2048
  num_heads: int = 8
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  norm_first: bool = False
  final_norm: bool = False
  share_embeddings: bool = True
  posemb: str = 'sincos'  # or 'learn'
  max_length: int = 512
  activation: str = 'relu'
  layer_norm_eps: float = 1e-5
  pad_id: int = 0
  decode: bool = False
  compute: kernels.Compute = kernels.Compute()

  def setup(self):
    d = self.hidden_size
    self.embed = nn.Embed(self.vocab_size, d, embedding_init=nn.initializers.normal(d ** -0.5),
                          name='embedding')
    if not self.share_embeddings:
      self.target_embed = nn.Embed(self.vocab_size, d,
                                   embedding_init=nn.initializers.normal(d ** -0.5))
      self.output = nn.Dense(self.vocab_size, dtype=self.compute.dtype)
    if self.posemb == 'learn':
      self.positions = self.param('position_embedding', nn.initializers.normal(0.02),
                                  (self.max_length, d))
    elif self.posemb == 'sincos':
      self.positions = posemb.sinusoidal_1d(self.max_length, d)
    else:
      raise errors.UserError(f"Unknown posemb {self.posemb!r}; expected 'sincos' or 'learn'.")
    block = transformer.BlockConfig(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, norm_first=self.norm_first,
        activation=self.activation, layer_norm_eps=self.layer_norm_eps, compute=self.compute)
    self.encoder = transformer.Encoder(self.num_layers, block, final_norm=self.final_norm,
                                       name='encoder')
    self.decoder = transformer.Decoder(self.num_layers, block, final_norm=self.final_norm,
                                       decode=self.decode, name='decoder')
    self.dropout = nn.Dropout(self.dropout_rate)

  def _embed(self, table, tokens, positions, train):
    x = table(tokens) * jnp.sqrt(self.hidden_size).astype(self.compute.dtype)  # §3.4
    x = x + jnp.take(self.positions, positions, axis=0).astype(x.dtype)
    return self.dropout(x, deterministic=not train)

  def encode(self, source, *, segments=None, positions=None, train=False,
             return_attention=False):
    """source [B, S] → (memory [B, S, D], aux). Packed rows pass `segments` (ids from 1, 0 on
    padding) and per-segment `positions`, so packed sentences never see each other."""
    if positions is None:
      positions = jnp.arange(source.shape[1])[None]
    x = self._embed(self.embed, source, positions, train)
    mask = (masks.key_padding_mask(source != self.pad_id) if segments is None else
            masks.segment_mask(segments, segments))
    return self.encoder(x, mask=mask, deterministic=not train,
                        return_attention=return_attention)

  def decode_logits(self, memory, source, target_in, *, positions=None, source_segments=None,
                    target_segments=None, train=False, return_attention=False):
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
                          deterministic=not train, return_attention=return_attention)
    if self.share_embeddings:
      logits = self.embed.attend(y.astype(jnp.float32))  # Tied output projection (§3.4).
    else:
      logits = self.output(y)
    return logits.astype(jnp.float32), aux

  def __call__(self, source, target_in, *, source_segments=None, target_segments=None,
               source_positions=None, target_positions=None, train=False,
               return_attention=False):
    memory, enc_aux = self.encode(source, segments=source_segments, positions=source_positions,
                                  train=train, return_attention=return_attention)
    logits, dec_aux = self.decode_logits(
        memory, source, target_in, positions=target_positions, source_segments=source_segments,
        target_segments=target_segments, train=train, return_attention=return_attention)
    return logits, {'encoder': enc_aux, 'decoder': dec_aux, 'memory': memory}
