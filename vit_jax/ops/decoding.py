"""Autoregressive decoding with a key/value cache: greedy and batched beam search.

Both are pure functions of (params, source) built on `Transformer.encode` and
`Transformer.decode_logits` with `decode=True`, so they jit as one program (lax.while_loop).
Written here because no package of the stack (jax, flax, optax) ships beam search for a Linen
model's cache; flax's WMT example has one as example code, not as a library.
"""
import jax
import jax.numpy as jnp

from vit_jax.layers.attention import MEMORY_CACHE

NEG_INF = -1e9


def init_cache(model, params, memory, source, max_length):
  """A cache sized for `max_length` target tokens: nothing generated yet, the memory's
  cross-attention keys and values already projected with `params`."""
  decoder = model.clone(decode=True)
  dummy = jnp.zeros((source.shape[0], max_length), jnp.int32)
  _, variables = decoder.apply({'params': params}, memory, source, dummy,
                               method=decoder.decode_logits, mutable=['cache'])
  return decoder, variables['cache']


def step_logits(decoder, params, cache, memory, source, token, position, return_attention):
  """Log-probabilities of the next token [B, V] given the last token [B] at `position`, the
  updated cache, and (if asked for) the cross-attention [L, B, H, S]. Padding is never
  generated."""
  (logits, aux), updated = decoder.apply(
      {'params': params, 'cache': cache}, memory, source, token[:, None],
      positions=jnp.full((token.shape[0], 1), position), method=decoder.decode_logits,
      mutable=['cache'], return_attention=return_attention)
  cross = None
  if return_attention:
    cross = jnp.stack([layer['cross'][:, :, 0] for layer in aux['attention']])
  logits = logits[:, 0].at[:, decoder.pad_id].set(NEG_INF)
  return jax.nn.log_softmax(logits), updated['cache'], cross


def greedy(model, params, source, *, max_length, bos_id, eos_id, pad_id=0,
           return_attention=True):
  """Returns (tokens [B, max_length] without BOS, padded after EOS; log-prob scores [B];
  cross-attention [B, max_length, L, H, S] of each emitted token, or None)."""
  memory, _ = model.apply({'params': params}, source, method=model.encode)
  decoder, cache = init_cache(model, params, memory, source, max_length)
  batch = source.shape[0]

  def body(state):
    t, token, cache, out, scores, done, attention = state
    logp, cache, cross = step_logits(decoder, params, cache, memory, source, token, t,
                                     attention is not None)
    next_token = jnp.where(done, pad_id, logp.argmax(-1))
    scores = scores + jnp.where(done, 0.0, logp.max(-1))
    out = out.at[:, t].set(next_token)
    if attention is not None:
      attention = attention.at[:, t].set(jnp.moveaxis(cross, 0, 1))
    return t + 1, next_token, cache, out, scores, done | (next_token == eos_id), attention

  state = (0, jnp.full((batch,), bos_id), cache, jnp.full((batch, max_length), pad_id),
           jnp.zeros(batch), jnp.zeros(batch, bool),
           _empty_attention(model, batch, max_length, source) if return_attention
           else None)
  state = jax.lax.while_loop(lambda s: (s[0] < max_length) & ~s[5].all(), body, state)
  return state[3], state[4], state[6]


def _empty_attention(model, rows, max_length, source):
  return jnp.zeros((rows, max_length, model.num_layers, model.num_heads, source.shape[1]))


def greedy_without_cache(model, params, source, *, max_length, bos_id, eos_id, pad_id=0):
  """Reference for tests and benchmarks: re-runs the decoder on the whole prefix at every
  step. Returns (tokens [B, max_length], scores [B]) like `greedy`."""
  memory, _ = model.apply({'params': params}, source, method=model.encode)
  batch = source.shape[0]

  def body(t, state):
    prefix, scores, done = state
    logits, _ = model.apply({'params': params}, memory, source, prefix[:, :-1],
                            method=model.decode_logits)
    logp = jax.nn.log_softmax(logits[:, t].at[:, pad_id].set(NEG_INF))
    token = jnp.where(done, pad_id, logp.argmax(-1))
    scores = scores + jnp.where(done, 0.0, logp.max(-1))
    return prefix.at[:, t + 1].set(token), scores, done | (token == eos_id)

  prefix = jnp.full((batch, max_length + 1), pad_id).at[:, 0].set(bos_id)
  state = (prefix, jnp.zeros(batch), jnp.zeros(batch, bool))
  prefix, scores, _ = jax.lax.fori_loop(0, max_length, body, state)
  return prefix[:, 1:], scores


def length_penalty(length, alpha):
  """GNMT's ((5 + |Y|) / 6)^α (Wu et al. 2016, §7)."""
  return ((5.0 + length) / 6.0) ** alpha


def beam_search(model, params, source, *, beam_size, max_length, bos_id, eos_id, alpha=0.6,
                pad_id=0, return_attention=False):
  """Batched beam search. Returns (tokens [B, K, max_length] best first, padded after EOS;
  scores [B, K] = log-prob / length_penalty; cross-attention [B, K, max_length, L, H, S] of
  each beam's tokens, or None)."""
  batch, k = source.shape[0], beam_size
  memory, _ = model.apply({'params': params}, source, method=model.encode)
  tile = lambda x: jnp.repeat(x, k, axis=0)  # [B, ...] → [B*K, ...]
  memory, source = tile(memory), tile(source)
  decoder, cache = init_cache(model, params, memory, source, max_length)
  split = lambda x: x.reshape((batch, k) + x.shape[1:])  # [B*K, ...] → [B, K, ...]

  def gather_beams(tree, origin, stacked=False):
    """Leaves [B*K, ...] (or [L, B*K, ...] when `stacked`) re-ordered by origin [B, K]. The
    memory's cached keys and values are the same for every beam of a sentence: left as
    they are."""
    def gather(x):
      if x.ndim == 0:
        return x
      x = split(x)
      return x[jnp.arange(batch)[:, None], origin].reshape((batch * k,) + x.shape[2:])
    gather = jax.vmap(gather) if stacked else gather
    shared = lambda path: path and getattr(path[-1], 'key', None) in MEMORY_CACHE
    return jax.tree_util.tree_map_with_path(lambda p, x: x if shared(p) else gather(x), tree)

  def keep_best(scores, best, *trees):  # Each leaf [B, N, ...] → its `best` [B, K] entries.
    pick = lambda x: jnp.take_along_axis(x, best.reshape(best.shape + (1,) * (x.ndim - 2)), 1)
    return [jax.tree.map(pick, tree) for tree in trees]

  def body(state):
    t, seqs, logp, cache, attention, finished = state
    token = jnp.where(t == 0, bos_id, seqs[:, :, jnp.maximum(t - 1, 0)]).reshape(-1)
    step, cache, cross = step_logits(decoder, params, cache, memory, source, token, t,
                                     attention is not None)
    vocab = step.shape[-1]
    candidates = (logp[:, :, None] + step.reshape(batch, k, vocab)).reshape(batch, k * vocab)
    # The best K continuations; those ending in EOS leave the live set (which may then hold
    # fewer than K real beams), so beam size 1 is exactly greedy decoding.
    top_logp, top_index = jax.lax.top_k(candidates, k)
    origin, new_token = top_index // vocab, top_index % vocab
    seqs = jnp.take_along_axis(seqs, origin[:, :, None], axis=1).at[:, :, t].set(new_token)
    ended = new_token == eos_id
    live_logp = jnp.where(ended, NEG_INF, top_logp)
    if attention is not None:
      attention = gather_beams(attention.at[:, t].set(jnp.moveaxis(cross, 0, 1)), origin)
    # A scanned decoder's cache is stacked [L, B*K, ...].
    cache = gather_beams(cache, origin, stacked=model.compute.scan_layers)
    # Finished: merge those that ended now with the earlier ones, keep the best K.
    ended_scores = jnp.where(ended, top_logp / length_penalty(t + 1, alpha), NEG_INF)
    fin_scores, fin_seqs, fin_attention = finished
    all_scores = jnp.concatenate([fin_scores, ended_scores], axis=1)
    fin_scores, best = jax.lax.top_k(all_scores, k)
    fin_seqs, fin_attention = keep_best(
        fin_scores, best, jnp.concatenate([fin_seqs, seqs], axis=1),
        None if attention is None else jnp.concatenate([fin_attention, split(attention)], 1))
    return t + 1, seqs, live_logp, cache, attention, (fin_scores, fin_seqs, fin_attention)

  def not_done(state):
    t, _, logp, _, _, (fin_scores, _, _) = state
    # A live beam can at best keep its log-prob and get the largest length penalty.
    best_live = logp[:, 0] / length_penalty(max_length, alpha)
    worst_finished = fin_scores[:, -1]
    return (t < max_length) & ~jnp.all(worst_finished >= best_live)

  attention = (_empty_attention(model, batch * k, max_length, source)
               if return_attention else None)
  first = jnp.concatenate([jnp.zeros((batch, 1)), jnp.full((batch, k - 1), NEG_INF)], axis=1)
  finished = (jnp.full((batch, k), NEG_INF), jnp.full((batch, k, max_length), pad_id),
              None if attention is None else split(attention))
  state = (0, jnp.full((batch, k, max_length), pad_id), first, cache, attention, finished)
  _, seqs, logp, _, attention, (fin_scores, fin_seqs, fin_attention) = jax.lax.while_loop(
      not_done, body, state)
  # Rows with fewer than K finished beams are completed by live ones (scored at max length).
  scores = jnp.concatenate([fin_scores, logp / length_penalty(max_length, alpha)], axis=1)
  scores, best = jax.lax.top_k(scores, k)
  seqs, attention = keep_best(
      scores, best, jnp.concatenate([fin_seqs, seqs], axis=1),
      None if attention is None else jnp.concatenate([fin_attention, split(attention)], 1))
  return seqs, scores, attention
