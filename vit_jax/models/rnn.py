"""RNN encoder–decoders for translation: the steps before the Transformer.

attention='none': the decoder sees the source only through the encoder's final state, which
starts it and is fed at every step (Sutskever et al. 2014; Cho et al. 2014, §2.2).
'bahdanau': additive attention scored from the previous decoder state, e_j = vᵀ tanh(W s + U h_j)
(Bahdanau et al. 2015, §3.1, A.1.2). 'luong_dot', 'luong_general', 'luong_concat': global
attention scored from the current state (h_tᵀ h_j, h_tᵀ W h_j, vᵀ tanh(W [h_t; h_j])) with input
feeding, h̃_t = tanh(W_c [c_t; h_t]) fed to the next step (Luong et al. 2015, §3.1, §3.3).

The encoder is flax's nn.RNN over a GRU or LSTM cell, bidirectional by default (each direction
hidden_size / 2 wide, so encoder states and the decoder state have one width), run with the
sequence lengths so padding never enters a state; padded source positions get no attention.
Dropout is applied to the embeddings and to each step's output, not inside the recurrence.

The interface is the Transformer's (`encode`, `decode_logits` with `decode=True` and a 'cache'
collection holding the decoder's carry), so ops/decoding.py's cached greedy and beam search
decode both families.
"""
import flax.linen as nn
import jax.numpy as jnp

from vit_jax import errors
from vit_jax.layers import attention as attention_lib
from vit_jax.layers import kernels

CELLS = {'gru': nn.GRUCell, 'lstm': nn.LSTMCell}
ATTENTION = ('none', 'bahdanau', 'luong_dot', 'luong_general', 'luong_concat')


def cell_output(cell, carry):
  """The hidden state h of a cell's carry (an LSTM's carry is (c, h))."""
  return carry[1] if cell == 'lstm' else carry


class DecoderStep(nn.Module):
  """One decoder step: (carry, previous token's embedding [B, E]) → (carry, (output [B, D],
  attention weights [B, S])). memory [B, S, D] are the encoder states, keys [B, S, ·] their
  projection for scoring (None for 'luong_dot'), mask [B, S] the real source positions, summary
  [B, D] the encoder's final state."""
  cell: str
  hidden_size: int
  attention: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, y, memory, keys, mask, summary):
    d = self.hidden_size
    rnn = CELLS[self.cell](features=d, dtype=self.dtype, name='cell')
    if self.attention in ('luong_dot', 'luong_general'):
      state, h = rnn(carry['rnn'], jnp.concatenate([y, carry['feed']], -1))
      # Unscaled dot-product scores through the shared core, one head.
      context, weights = attention_lib.dot_product_attention(
          h[:, None, None], keys[:, :, None], memory[:, :, None], mask[:, None, None],
          scale=1.0)
      context, weights = context[:, 0, 0], weights[:, 0, 0]
    elif self.attention == 'luong_concat':
      state, h = rnn(carry['rnn'], jnp.concatenate([y, carry['feed']], -1))
      weights = self._additive(h, keys, mask)
      context = jnp.einsum('bs,bsd->bd', weights, memory)
    elif self.attention == 'bahdanau':
      previous = cell_output(self.cell, carry['rnn'])
      weights = self._additive(previous, keys, mask)
      context = jnp.einsum('bs,bsd->bd', weights, memory)
      state, h = rnn(carry['rnn'], jnp.concatenate([y, context], -1))
    else:  # 'none': the fixed summary is the context at every step.
      context, weights = summary, jnp.zeros(mask.shape, jnp.float32)
      state, h = rnn(carry['rnn'], jnp.concatenate([y, context], -1))
    if self.attention.startswith('luong'):
      out = jnp.tanh(nn.Dense(d, use_bias=False, dtype=self.dtype, name='combine')(
          jnp.concatenate([context, h], -1)))
      return {'rnn': state, 'feed': out}, (out, weights)
    # A deep output (Bahdanau A.2.2, with tanh in place of maxout) from h, context and y.
    out = jnp.tanh(nn.Dense(d, dtype=self.dtype, name='combine')(
        jnp.concatenate([h, context, y], -1)))
    return {'rnn': state}, (out, weights)

  def _additive(self, query, keys, mask):
    projected = nn.Dense(keys.shape[-1], use_bias=False, dtype=self.dtype, name='query')(query)
    v = self.param('v', nn.initializers.normal(keys.shape[-1] ** -0.5), (keys.shape[-1],))
    return attention_lib.masked_softmax(
        attention_lib.additive_scores(projected[:, None], keys, v)[:, 0], mask)


class Seq2Seq(nn.Module):
  """tokens in, logits out. Token id `pad_id` marks padding in both source and target."""
  vocab_size: int
  cell: str = 'gru'
  attention: str = 'bahdanau'
  hidden_size: int = 256
  embedding_size: int = 128
  bidirectional: bool = True
  num_layers: int = 1  # One recurrent layer each side (the papers' deeper stacks: not here).
  dropout_rate: float = 0.1
  pad_id: int = 0
  decode: bool = False
  compute: kernels.Compute = kernels.Compute()
  num_heads = 1  # One attention distribution per step, as ops/decoding.py records it.

  def setup(self):
    if self.cell not in CELLS:
      raise errors.UserError(f'Unknown model.cell {self.cell!r}; expected one of '
                             f'{sorted(CELLS)}.')
    if self.attention not in ATTENTION:
      raise errors.UserError(f'Unknown model.attention {self.attention!r}; expected one of '
                             f'{ATTENTION}.')
    if self.num_layers != 1:
      raise errors.UserError(f'model.num_layers={self.num_layers}: the RNN encoder–decoder has '
                             'one recurrent layer on each side.')
    if self.bidirectional and self.hidden_size % 2:
      raise errors.UserError(f'A bidirectional encoder splits model.hidden_size='
                             f'{self.hidden_size} between its directions; make it even.')
    d, dtype = self.hidden_size, self.compute.dtype  # Parameters stay float32.
    self.embed = nn.Embed(self.vocab_size, self.embedding_size, dtype=dtype, name='embedding')
    width = d // 2 if self.bidirectional else d
    cell = lambda: CELLS[self.cell](features=width, dtype=dtype)
    forward = nn.RNN(cell(), name='encoder_forward')
    self.encoder = (nn.Bidirectional(forward, nn.RNN(cell(), name='encoder_backward'))
                    if self.bidirectional else forward)
    self.bridge = nn.Dense(d, dtype=dtype, name='bridge')  # Encoder summary → first state.
    # U h_j (Bahdanau, Luong's concat) or W h_j (Luong's general), computed once per source.
    scored = self.attention in ('bahdanau', 'luong_concat', 'luong_general')
    self.key_projection = (nn.Dense(d, use_bias=False, dtype=dtype, name='keys') if scored
                           else None)
    self.step = DecoderStep(self.cell, d, self.attention, dtype, name='decoder')
    self.output = nn.Dense(self.vocab_size, dtype=dtype, name='output')
    self.dropout = nn.Dropout(self.dropout_rate)

  def encode(self, source, *, train=False, return_attention=False, **unused):
    """source [B, S] → (memory [B, S, D] encoder states, aux {})."""
    del return_attention, unused
    lengths = (source != self.pad_id).sum(-1)
    x = self.dropout(self.embed(source), deterministic=not train)
    return self.dropout(self.encoder(x, seq_lengths=lengths), deterministic=not train), {}

  def _summary(self, memory, source):
    """The encoder's final state [B, D]: the forward direction's at the last real position,
    the backward direction's at the first."""
    last = jnp.maximum((source != self.pad_id).sum(-1) - 1, 0)
    final = memory[jnp.arange(memory.shape[0]), last]
    if not self.bidirectional:
      return final
    half = self.hidden_size // 2
    return jnp.concatenate([final[:, :half], memory[:, 0, half:]], -1)

  def _initial_carry(self, summary):
    h = jnp.tanh(self.bridge(summary))
    carry = {'rnn': (jnp.zeros_like(h), h) if self.cell == 'lstm' else h}
    if self.attention.startswith('luong'):
      carry['feed'] = jnp.zeros_like(h)
    return carry

  def decode_logits(self, memory, source, target_in, *, positions=None, train=False,
                    return_attention=False, **unused):
    """Teacher forcing (target_in [B, T] = target shifted right) or, with `decode=True`, one
    step (target_in [B, 1]) continuing from the cached carry. → (logits [B, T, V], aux with
    'attention': [{'cross': [B, 1, T, S]}] when asked for)."""
    del positions, unused  # The carry knows where it is.
    mask = source != self.pad_id
    summary = self._summary(memory, source)
    keys = memory if self.key_projection is None else self.key_projection(memory)
    y = self.dropout(self.embed(target_in), deterministic=not train)
    if self.decode and self.has_variable('cache', 'carry'):
      carry, (out, weights) = self.step(self.get_variable('cache', 'carry'), y[:, 0], memory,
                                        keys, mask, summary)
      self.put_variable('cache', 'carry', carry)
      out, weights = out[:, None], weights[:, None]
    else:
      carry = self._initial_carry(summary)
      if self.decode:  # The sizing call (decoding.init_cache) stores the first carry.
        self.put_variable('cache', 'carry', carry)
      scan = nn.scan(lambda step, c, y_t, *rest: step(c, y_t, *rest),
                     variable_broadcast='params', split_rngs={'params': False},
                     in_axes=(1,) + (nn.broadcast,) * 4, out_axes=1)
      _, (out, weights) = scan(self.step, carry, y, memory, keys, mask, summary)
    logits = self.output(self.dropout(out, deterministic=not train))
    aux = {'attention': [{'cross': weights[:, None]}]} if return_attention else {}
    return logits.astype(jnp.float32), aux

  def __call__(self, source, target_in, *, train=False, return_attention=False, **unused):
    """Packing (segment ids) is not supported: the config refuses data.pack."""
    memory, _ = self.encode(source, train=train)
    logits, aux = self.decode_logits(memory, source, target_in, train=train,
                                     return_attention=return_attention)
    return logits, aux
