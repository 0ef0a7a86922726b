import jax
import numpy as np
import pytest

from vit_jax.layers import kernels
from vit_jax.models import transformer
from vit_jax.ops import decoding

BOS, EOS = 1, 2


def setup(dtype='float32'):
  model = transformer.Transformer(vocab_size=19, num_layers=2, hidden_size=32, mlp_dim=64,
                                  num_heads=4, dropout_rate=0.0, max_length=32,
                                  compute=kernels.Compute(dtype=dtype))
  source = np.random.default_rng(0).integers(3, 19, (3, 6))
  source[2, 3:] = 0
  params = jax.jit(model.init)(jax.random.key(1), source, source)['params']
  return model, params, source


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])  # bfloat16: dots of one query row.
def test_cached_greedy_equals_uncached(dtype):
  model, params, source = setup(dtype)
  tokens, scores, attention = jax.jit(
      lambda p, s: decoding.greedy(model, p, s, max_length=10, bos_id=BOS, eos_id=EOS))(
          params, source)
  ref_tokens, ref_scores = decoding.greedy_without_cache(model, params, source, max_length=10,
                                                         bos_id=BOS, eos_id=EOS)
  np.testing.assert_array_equal(tokens, ref_tokens)
  if dtype == 'float32':
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
  else:  # Summed log-probabilities, rounded differently by the cache's shapes.
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-2)
  assert attention.shape == (3, 10, 2, 4, 6)
  np.testing.assert_allclose(np.asarray(attention)[2, 0, :, :, 3:], 0.0)  # Padded source.


def test_beam_size_one_equals_greedy():
  model, params, source = setup()
  tokens, scores, attention = jax.jit(lambda p, s: decoding.greedy(
      model, p, s, max_length=8, bos_id=BOS, eos_id=EOS))(params, source)
  beams, beam_scores, beam_attention = jax.jit(lambda p, s: decoding.beam_search(
      model, p, s, beam_size=1, max_length=8, bos_id=BOS, eos_id=EOS, alpha=0.0,
      return_attention=True))(params, source)
  np.testing.assert_array_equal(beams[:, 0], tokens)
  np.testing.assert_allclose(beam_scores[:, 0], scores, atol=1e-4)
  np.testing.assert_allclose(beam_attention[:, 0], attention, atol=1e-5)


def test_beam_attention_follows_its_beam():
  """Each returned beam's cross-attention is the one the decoder computes for that beam's
  tokens under teacher forcing."""
  model, params, source = setup()
  beams, _, attention = jax.jit(lambda p, s: decoding.beam_search(
      model, p, s, beam_size=3, max_length=6, bos_id=BOS, eos_id=EOS,
      return_attention=True))(params, source)
  forward = jax.jit(lambda p, s, t: model.apply({'params': p}, s, t, return_attention=True))
  assert attention.shape == (3, 3, 6, 2, 4, 6)
  for k in range(3):
    target_in = np.concatenate([np.full((3, 1), BOS), np.asarray(beams[:, k, :-1])], axis=1)
    _, aux = forward(params, source, target_in)
    forced = np.stack([layer['cross'] for layer in aux['decoder']['attention']], axis=2)
    for row in range(3):  # Compare up to and including EOS.
      length = next((i + 1 for i, t in enumerate(beams[row, k]) if t == EOS), 6)
      np.testing.assert_allclose(attention[row, k, :length],
                                 forced[row].transpose(2, 1, 0, 3)[:length], atol=1e-5)


def test_wide_beam_finds_the_exact_optimum():
  """With beam ≥ every prefix, beam search is exhaustive: compare with brute force."""
  vocab, max_length, alpha = 5, 3, 0.6
  model = transformer.Transformer(vocab_size=vocab, num_layers=1, hidden_size=16, mlp_dim=32,
                                  num_heads=2, dropout_rate=0.0, max_length=8)
  source = np.array([[3, 4, 3, 0], [4, 4, 3, 3]])
  params = jax.jit(model.init)(jax.random.key(3), source, source)['params']
  params['embedding']['embedding'] = params['embedding']['embedding'] * 8.0  # Peakier.
  beams, scores, _ = jax.jit(lambda p, s: decoding.beam_search(
      model, p, s, beam_size=vocab ** 2, max_length=max_length, bos_id=BOS, eos_id=EOS,
      alpha=alpha))(params, source)
  # Brute force over every sequence of non-pad tokens, cut at the first EOS.
  import itertools
  candidates = set()
  for seq in itertools.product(range(1, vocab), repeat=max_length):
    cut = seq.index(EOS) + 1 if EOS in seq else max_length
    candidates.add(seq[:cut])
  candidates = sorted(candidates)
  # Causal decoder: position i's logits see only the prefix, so filler after a short
  # sequence (token 3) changes nothing that is summed.
  target_in = np.array([[BOS, *seq[:-1]] + [3] * (max_length - len(seq)) for seq in candidates])
  for row in range(2):
    logits, _ = jax.jit(model.apply)({'params': params},
                                     np.repeat(source[row:row + 1], len(candidates), 0), target_in)
    logp = np.asarray(jax.nn.log_softmax(logits.at[:, :, 0].set(decoding.NEG_INF)))
    best = max(sum(logp[n, i, t] for i, t in enumerate(seq)) /
               decoding.length_penalty(len(seq), alpha) for n, seq in enumerate(candidates))
    np.testing.assert_allclose(scores[row, 0], best, atol=1e-4)
