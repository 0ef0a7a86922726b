"""RNN encoder–decoders: cells ported from PyTorch, attention scores from the papers' equations,
cached decoding equal to teacher forcing, padding that changes nothing."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vit_jax.layers import attention
from vit_jax.models import rnn
from vit_jax.ops import decoding

ATTENTIONS = rnn.ATTENTION


def test_unscaled_dot_product_and_additive_scores_match_the_equations():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=shape) for shape in ((1, 2, 1, 3), (1, 4, 1, 3), (1, 4, 1, 3)))
  mask = np.array([True, True, True, False])[None, None, None]
  out, weights = attention.dot_product_attention(q, k, v, mask, scale=1.0)
  scores = q[0, :, 0] @ k[0, :, 0].T  # Unscaled, as in the source article's worked example.
  scores[:, 3] = -np.inf
  expected = np.exp(scores - scores.max(1, keepdims=True))
  expected /= expected.sum(1, keepdims=True)
  np.testing.assert_allclose(weights[0, 0], expected, rtol=1e-6)
  np.testing.assert_allclose(out[0, :, 0], expected @ v[0, :, 0], rtol=1e-5)
  wq, uk, w = rng.normal(size=(2, 5)), rng.normal(size=(4, 5)), rng.normal(size=5)
  additive = attention.additive_scores(wq[None], uk[None], w)[0]
  np.testing.assert_allclose(additive, [[w @ np.tanh(a + b) for b in uk] for a in wq],
                             rtol=1e-5)


def port_gru(torch_gru, hidden):
  """torch.nn.GRU (gates r, z, n stacked in its matrices) → flax GRUCell parameters: flax has
  one bias for r and z where torch has two, and keeps torch's two for n."""
  w_ih = torch_gru.weight_ih_l0.detach().numpy()
  w_hh = torch_gru.weight_hh_l0.detach().numpy()
  b_ih, b_hh = torch_gru.bias_ih_l0.detach().numpy(), torch_gru.bias_hh_l0.detach().numpy()
  gate = lambda m, i: m[i * hidden:(i + 1) * hidden]
  return {'ir': {'kernel': gate(w_ih, 0).T, 'bias': gate(b_ih, 0) + gate(b_hh, 0)},
          'iz': {'kernel': gate(w_ih, 1).T, 'bias': gate(b_ih, 1) + gate(b_hh, 1)},
          'in': {'kernel': gate(w_ih, 2).T, 'bias': gate(b_ih, 2)},
          'hr': {'kernel': gate(w_hh, 0).T}, 'hz': {'kernel': gate(w_hh, 1).T},
          'hn': {'kernel': gate(w_hh, 2).T, 'bias': gate(b_hh, 2)}}


def port_lstm(torch_lstm, hidden):
  """torch.nn.LSTM (gates i, f, g, o) → flax LSTMCell: one bias per gate, on the hidden side."""
  w_ih = torch_lstm.weight_ih_l0.detach().numpy()
  w_hh = torch_lstm.weight_hh_l0.detach().numpy()
  bias = (torch_lstm.bias_ih_l0 + torch_lstm.bias_hh_l0).detach().numpy()
  gate = lambda m, i: m[i * hidden:(i + 1) * hidden]
  params = {}
  for i, name in enumerate('ifgo'):
    params[f'i{name}'] = {'kernel': gate(w_ih, i).T}
    params[f'h{name}'] = {'kernel': gate(w_hh, i).T, 'bias': gate(bias, i)}
  return params


@pytest.mark.parametrize('kind', ['gru', 'lstm'])
def test_cells_equal_pytorch_with_ported_weights(kind):
  torch.manual_seed(0)
  batch, length, features, hidden = 3, 7, 5, 6
  layer = (torch.nn.GRU if kind == 'gru' else torch.nn.LSTM)(features, hidden, batch_first=True)
  x = torch.randn(batch, length, features)
  expected, _ = layer(x)
  params = (port_gru if kind == 'gru' else port_lstm)(layer, hidden)
  ours = nn.RNN(rnn.CELLS[kind](features=hidden))
  got = ours.apply({'params': {'cell': params}}, jnp.asarray(x.numpy()))
  np.testing.assert_allclose(got, expected.detach().numpy(), atol=1e-5)


def make(attention_kind, cell='gru', **kw):
  model = rnn.Seq2Seq(vocab_size=11, cell=cell, attention=attention_kind, hidden_size=8,
                      embedding_size=6, dropout_rate=0.0, **kw)
  source = jnp.array([[5, 6, 7, 8, 0, 0], [4, 9, 10, 3, 7, 6]])
  target_in = jnp.array([[1, 5, 6, 7, 8], [1, 4, 4, 9, 0]])
  # Not key 0, which an init call sizing the cache would use: the decoded carry must come
  # from these parameters.
  params = jax.jit(model.init)(jax.random.key(7), source, target_in)['params']
  return model, params, source, target_in


def forward(model):
  """The teacher-forced pass with attention, jitted (op by op compiles far more)."""
  return jax.jit(lambda v, s, t: model.apply(v, s, t, return_attention=True))


@pytest.mark.parametrize('attention_kind,cell', [(a, 'gru') for a in ATTENTIONS] +
                         [('luong_general', 'lstm'), ('bahdanau', 'lstm')])
def test_one_step_decoding_equals_teacher_forcing(attention_kind, cell):
  model, params, source, target_in = make(attention_kind, cell)
  forced, aux = forward(model)({'params': params}, source, target_in)
  memory, _ = jax.jit(lambda v, s: model.apply(v, s, method=model.encode))(
      {'params': params}, source)
  decoder, cache = decoding.init_cache(model, params, memory, source, target_in.shape[1])
  step = jax.jit(lambda v, previous: decoder.apply(
      v, memory, source, previous, method=decoder.decode_logits, mutable=['cache'],
      return_attention=True))
  for t in range(target_in.shape[1]):
    (logits, step_aux), updated = step({'params': params, 'cache': cache}, target_in[:, t:t + 1])
    cache = updated['cache']
    np.testing.assert_allclose(logits[:, 0], forced[:, t], atol=1e-5, err_msg=f'step {t}')
    np.testing.assert_allclose(step_aux['attention'][0]['cross'][:, 0, 0],
                               aux['attention'][0]['cross'][:, 0, t], atol=1e-6)


@pytest.mark.parametrize('attention_kind', ['bahdanau', 'luong_dot', 'luong_concat'])
def test_padded_source_positions_get_no_attention_and_change_nothing(attention_kind):
  model, params, source, target_in = make(attention_kind)
  apply = forward(model)
  logits, aux = apply({'params': params}, source, target_in)
  weights = aux['attention'][0]['cross'][:, 0]  # [B, T, S]
  np.testing.assert_array_equal(weights[0, :, 4:], 0.0)  # Row 0 is padded after 4 tokens.
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  # Padding changes nothing: row 0 alone, unpadded, gives the same logits.
  alone, _ = apply({'params': params}, source[:1, :4], target_in[:1])
  np.testing.assert_allclose(alone, logits[:1], atol=1e-5)


def test_beam_of_one_is_greedy_and_beams_decode():
  model, params, source, _ = make('bahdanau')
  kw = dict(max_length=6, bos_id=1, eos_id=2, pad_id=0)
  greedy, greedy_scores, attention_maps = jax.jit(
      lambda p, s: decoding.greedy(model, p, s, **kw))(params, source)
  assert attention_maps.shape == (2, 6, 1, 1, 6)
  beam = jax.jit(lambda p, s, size, alpha: decoding.beam_search(
      model, p, s, beam_size=size, alpha=alpha, **kw), static_argnums=(2, 3))
  beams, scores, _ = beam(params, source, 1, 0.0)
  np.testing.assert_array_equal(beams[:, 0], greedy)
  np.testing.assert_allclose(scores[:, 0], greedy_scores, rtol=1e-5)
  beams, scores, _ = beam(params, source, 3, 0.6)
  assert beams.shape == (2, 3, 6) and np.all(np.diff(scores, axis=1) <= 1e-6)


def test_unknown_settings_are_named():
  with pytest.raises(ValueError, match=r"Unknown model.attention 'luong'; expected one of "
                                       r"\('none', 'bahdanau', 'luong_dot'"):
    make('luong')
  with pytest.raises(ValueError, match="Unknown model.cell 'rnn'"):
    make('none', cell='rnn')
