"""Scaled dot-product and multi-head attention ("Attention Is All You Need" §3.2), shared by
ViT, the Transformer and DETR.

This file is the textbook; how the arithmetic runs (fused projections, bfloat16 matmuls, a
fused attention kernel) is chosen by `implementation` and lives in kernels.py. Parameters
follow Flax's `MultiHeadDotProductAttention` layout (query/key/value kernels [D, H, Dh], out
kernel [H, Dh, D]) so published ViT checkpoints load unchanged.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import errors
from vit_jax.layers import kernels


def masked_softmax(scores, mask=None):
  """Attention weights from scores [..., Lk] (float32 softmax for stability); keys where `mask`
  (broadcastable, True = attend) is False get exactly 0, and a query with every key masked
  attends to nothing, not uniformly."""
  scores = scores.astype(jnp.float32)
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1)  # Masked scores underflow to exactly 0.
  if mask is not None:
    weights = jnp.where(mask.any(axis=-1, keepdims=True), weights, 0.0)
  return weights


def additive_scores(query, key, v):
  """Additive (concat) attention scores vᵀ tanh(q + k) (Bahdanau et al. 2015, §3.1 and
  appendix A.1.2; Luong et al. 2015's 'concat'), the projections W s and U h already applied.

  query [B, Lq, A], key [B, Lk, A], v [A] → scores [B, Lq, Lk].
  """
  return jnp.tanh(query[:, :, None, :] + key[:, None, :, :]) @ v


def dot_product_attention(query, key, value, mask=None, *, scale=None, dropout_rate=0.0,
                          dropout_rng=None, dtype=jnp.float32):
  """softmax(scale · q kᵀ) v, scale = 1/√Dh unless given (§3.2.1; Luong et al. 2015's 'dot'
  and 'general' scores are unscaled: scale=1.0).

  query [B, Lq, H, Dh], key/value [B, Lk, H, Dh], mask broadcastable to [B, H, Lq, Lk]
  (True = attend). Returns (output [B, Lq, H, Dh], weights [B, H, Lq, Lk]).
  """
  if scale is None:
    query = query / jnp.sqrt(query.shape[-1]).astype(query.dtype)
  else:
    query = query * scale
  logits = kernels.einsum('bqhd,bkhd->bhqk', query, key, dtype)  # float32
  weights = masked_softmax(logits, mask)
  probs = weights
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return kernels.einsum('bhqk,bkhd->bqhd', probs, value, dtype).astype(dtype), weights


MEMORY_CACHE = ('memory_key', 'memory_value')  # Cross-attention's cached keys and values.


def heads_first(x):
  """[B, L, H, Dh] ↔ [B, H, L, Dh]. Decoding caches are kept heads first: the attention's
  batched matmuls read that layout as it is, where [B, L, H, Dh] costs a transpose of the
  whole cache at every step."""
  return jnp.swapaxes(x, 1, 2)


def _flat_init(init, shape, split):
  """Initialises as the 2-D matrix [prod(shape[:split]), prod(shape[split:])] that the kernel
  is used as (fan-in/fan-out of Flax's DenseGeneral), then reshapes."""
  def wrapped(key, _, dtype=jnp.float32):
    flat = (int(np.prod(shape[:split])), int(np.prod(shape[split:])))
    return init(key, flat, dtype).reshape(shape)
  return wrapped


class HeadWeights(nn.Module):
  """One projection's parameters: kernel [D_in, H, Dh] and bias [H, Dh] (split into heads),
  or with `merge` the output projection's kernel [H, Dh, D_out] and bias [D_out]."""
  shape: tuple
  merge: bool = False
  kernel_init: Any = nn.initializers.xavier_uniform()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self):
    split = 2 if self.merge else 1
    kernel = self.param('kernel', _flat_init(self.kernel_init, self.shape, split), self.shape)
    bias = self.param('bias', self.bias_init, self.shape[split:])
    return kernel, bias


class MultiHeadAttention(nn.Module):
  """MultiHead(Q, K, V) = Concat(head_1, …, head_h) W_O, head_i = Attention(Q W_Qi, K W_Ki,
  V W_Vi) (§3.2.2).

  Queries, keys and values come from separate inputs, so DETR can add positions to queries
  and keys but not to values. With `decode=True` keys and values are appended to a cache one
  step at a time (autoregressive decoding); call once with the full-length input to size it.
  With `cache_memory=True` (cross-attention while decoding) the keys and values of the fixed
  memory are projected on that sizing call and read from the cache at every step after.
  """
  num_heads: int
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  dropout_rate: float = 0.0
  decode: bool = False
  cache_memory: bool = False
  dtype: Any = jnp.float32
  implementation: str = 'fused'  # kernels.ATTENTION_IMPLS
  kernel_init: Any = nn.initializers.xavier_uniform()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, mask=None,
               deterministic=True, return_weights=False):
    """inputs_q [B, Lq, Dq]; keys from inputs_k [B, Lk, Dk] (None: from inputs_q), values
    from inputs_v (None: from the keys' input). mask broadcastable to [B, H, Lq, Lk].

    Returns (output [B, Lq, out_features], weights [B, H, Lq, Lk] if `return_weights` else
    None).
    """
    if self.implementation not in kernels.ATTENTION_IMPLS:
      raise errors.UserError(f'Unknown attention implementation {self.implementation!r}; expected '
                             f'one of {kernels.ATTENTION_IMPLS}.')
    features = self.qkv_features or inputs_q.shape[-1]
    if features % self.num_heads:
      raise errors.UserError(
          f'qkv_features={features} is not divisible by num_heads={self.num_heads}.')
    head_dim = features // self.num_heads
    # Which input each projection reads; inputs left out share the previous one.
    groups = [(inputs_q, ['query'])]
    for name, given in (('key', inputs_k), ('value', inputs_v)):
      if given is None:
        groups[-1][1].append(name)
      else:
        groups.append((given, [name]))
    weights = {name: HeadWeights((x.shape[-1], self.num_heads, head_dim), False,
                                 self.kernel_init, self.bias_init, name=name)()
               for x, names in groups for name in names}

    memory_cached = self.cache_memory and self.has_variable('cache', MEMORY_CACHE[0])
    if memory_cached:  # Only the queries are new.
      groups = groups[:1]
    if self.implementation == 'plain':
      project = lambda x, w: (kernels.einsum('bld,dhk->blhk', x, w[0], self.dtype) +
                              w[1]).astype(self.dtype)
      qkv = {name: project(x, weights[name]) for x, names in groups for name in names}
    else:
      qkv = kernels.fused_projections(groups, weights, self.dtype)
    if memory_cached:
      qkv['key'], qkv['value'] = (heads_first(self.get_variable('cache', name))
                                  for name in MEMORY_CACHE)
    elif self.cache_memory:
      self._store_memory(qkv['key'], qkv['value'])
    query, key, value = qkv['query'], qkv['key'], qkv['value']  # [B, L, H, Dh]

    if self.decode:
      key, value, mask = self._update_cache(key, value, mask)

    dropout = not deterministic and self.dropout_rate > 0.0
    if self.implementation == 'xla' and not return_weights and not dropout:
      out, attention_weights = kernels.xla_attention(query, key, value, mask, self.dtype), None
    else:
      out, attention_weights = dot_product_attention(
          query, key, value, mask, dropout_rate=self.dropout_rate,
          dropout_rng=self.make_rng('dropout') if dropout else None, dtype=self.dtype)

    out_dim = self.out_features or inputs_q.shape[-1]
    kernel, bias = HeadWeights((self.num_heads, head_dim, out_dim), True, self.kernel_init,
                               self.bias_init, name='out')()
    if self.implementation == 'plain':
      out = (kernels.einsum('blhk,hkd->bld', out, kernel, self.dtype) + bias).astype(self.dtype)
    else:
      out = kernels.merge_heads(out, kernel, bias, self.dtype)
    return out, attention_weights if return_weights else None

  def _store_memory(self, key, value):
    """The sizing call's memory keys and values, stored heads first for every step after."""
    # The barrier keeps XLA from folding the stored layout back into the memory's, which it
    # would then transpose at every step.
    stored = jax.lax.optimization_barrier((heads_first(key), heads_first(value)))
    for name, x in zip(MEMORY_CACHE, stored):
      self.put_variable('cache', name, x)

  def _update_cache(self, key, value, mask):
    """Writes this step's keys/values at the cache index; masks the slots not yet written."""
    initialized = self.has_variable('cache', 'cached_key')
    shape = heads_first(key).shape
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, shape, value.dtype)
    index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if not initialized:  # The init call only sizes the cache.
      return key, value, mask
    batch, _, max_length = cached_key.value.shape[:3]
    step = key.shape[1]
    i = index.value
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, heads_first(key),
                                                    (0, 0, i, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, heads_first(value),
                                                      (0, 0, i, 0))
    index.value = i + step
    # Query j of this step sits at position i + j and may see keys at positions ≤ i + j.
    positions = jnp.arange(max_length)[None, :] <= (i + jnp.arange(step))[:, None]
    cache_mask = jnp.broadcast_to(positions[None, None], (batch, 1, step, max_length))
    if mask is not None:  # A caller's mask covers the full cache length (e.g. key padding).
      cache_mask = jnp.logical_and(cache_mask, mask)
    return heads_first(cached_key.value), heads_first(cached_value.value), cache_mask


class AttentionMap(nn.Module):
  """DETR's panoptic attention maps (Carion et al. 2020, §4.4): each query's multi-head
  attention weights over a feature map, without the values. As in the official code, one
  softmax runs over heads and positions together, so a query's maps sum to 1 over all heads.

  queries [B, Q, D], keys [B, h, w, D], mask [B, h, w] (True = real position) →
  weights [B, Q, H, h, w] (float32).
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries, keys, mask=None):
    d = queries.shape[-1]
    if d % self.num_heads:
      raise errors.UserError(f'hidden size {d} is not divisible by num_heads={self.num_heads}.')
    head_dim = d // self.num_heads
    projections = {name: HeadWeights((d, self.num_heads, head_dim), name=name)()
                   for name in ('query', 'key')}
    project = lambda x, name: kernels.einsum('...d,dhk->...hk', x, projections[name][0],
                                             self.dtype) + projections[name][1]
    q = project(queries, 'query') / np.sqrt(head_dim)  # [B, Q, H, Dh]
    k = project(keys, 'key')  # [B, h, w, H, Dh]
    b, h, w = keys.shape[:3]
    scores = kernels.einsum('bqhd,byxhd->bqhyx', q, k, self.dtype)
    flat = (b, scores.shape[1], self.num_heads * h * w)
    if mask is not None:
      mask = jnp.broadcast_to(mask[:, None, None], scores.shape).reshape(flat)
    return masked_softmax(scores.reshape(flat), mask).reshape(scores.shape)
