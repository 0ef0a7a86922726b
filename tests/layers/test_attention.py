import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.layers import attention
from vit_jax.layers import kernels
from vit_jax.layers import masks


def numpy_attention(q, k, v, mask):
  """The textbook formula, in float64 numpy: softmax(q kᵀ / √d) v per head."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask, logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', w, v), w


def test_dot_product_attention_equals_numpy():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=s).astype(np.float32) for s in [(2, 5, 3, 4), (2, 7, 3, 4),
                                                               (2, 7, 3, 4)])
  valid = np.array([[1] * 7, [1] * 4 + [0] * 3], bool)
  mask = masks.key_padding_mask(valid)
  out, weights = attention.dot_product_attention(q, k, v, mask)
  ref_out, ref_w = numpy_attention(q, k, v, np.asarray(mask))
  np.testing.assert_allclose(out, ref_out, atol=1e-5)
  np.testing.assert_allclose(weights, ref_w, atol=1e-6)
  assert np.all(np.asarray(weights)[1, :, :, 4:] == 0)


def test_fully_masked_query_attends_to_nothing():
  q = k = v = jnp.ones((1, 2, 1, 4))
  mask = jnp.array([[[[True, True], [False, False]]]])
  out, weights = attention.dot_product_attention(q, k, v, mask)
  assert np.all(np.asarray(weights)[0, 0, 1] == 0) and np.all(np.asarray(out)[0, 1] == 0)
  assert np.all(np.isfinite(np.asarray(out)))


def _mha(**kw):
  module = attention.MultiHeadAttention(num_heads=2, **kw)
  x = jnp.ones((1, 3, 8))
  return module, module.init(jax.random.key(0), x)


def test_masked_key_changes_nothing():
  module, params = _mha()
  rng = np.random.default_rng(1)
  q = rng.normal(size=(2, 4, 8)).astype(np.float32)
  kv = rng.normal(size=(2, 6, 8)).astype(np.float32)
  valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
  changed = kv.copy()
  changed[0, 4:] = 100.0
  changed[1, 5] = -50.0
  mask = masks.key_padding_mask(valid)
  out1, _ = module.apply(params, q, kv, kv, mask=mask)
  out2, _ = module.apply(params, q, changed, changed, mask=mask)
  np.testing.assert_allclose(out1, out2, atol=1e-6)
  out3, _ = module.apply(params, q, changed, changed)  # Without the mask it does change.
  assert np.abs(np.asarray(out3) - np.asarray(out1)).max() > 1e-2


def test_causal_mask_keeps_earlier_outputs_independent_of_later_inputs():
  module, params = _mha()
  x = np.random.default_rng(2).normal(size=(1, 6, 8)).astype(np.float32)
  later = x.copy()
  later[:, 3:] += 5.0
  out1, _ = module.apply(params, x, mask=masks.causal_mask(6))
  out2, _ = module.apply(params, later, mask=masks.causal_mask(6))
  np.testing.assert_allclose(np.asarray(out1)[:, :3], np.asarray(out2)[:, :3], atol=1e-6)
  assert np.abs(np.asarray(out1)[:, 3:] - np.asarray(out2)[:, 3:]).max() > 1e-2


def test_fused_projection_equals_separate_inputs():
  """q = k = v as one array (one fused matmul) equals three equal copies (three matmuls)."""
  module, params = _mha()
  x = np.random.default_rng(3).normal(size=(2, 5, 8)).astype(np.float32)
  fused, _ = module.apply(params, x)
  separate, _ = module.apply(params, x.copy(), x.copy(), x.copy())
  np.testing.assert_allclose(fused, separate, atol=1e-6)


@pytest.mark.parametrize('implementation', kernels.ATTENTION_IMPLS)
def test_decode_cache_equals_full_causal_pass(implementation):
  x = np.random.default_rng(4).normal(size=(2, 5, 8)).astype(np.float32)
  full_module, params = _mha(implementation='plain')
  full, _ = full_module.apply(params, x, mask=masks.causal_mask(5))
  decoder = attention.MultiHeadAttention(num_heads=2, decode=True, implementation=implementation)
  cache = decoder.init(jax.random.key(0), x)['cache']  # Sized by the full-length call.
  steps = []
  for t in range(5):
    (out, _), updated = decoder.apply({'params': params['params'], 'cache': cache},
                                      x[:, t:t + 1], mutable=['cache'])
    cache = updated['cache']
    steps.append(out)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


@pytest.mark.parametrize('implementation', kernels.ATTENTION_IMPLS)
def test_cached_memory_is_projected_once_and_read_after(implementation):
  """Cross-attention while decoding: the sizing call projects the memory's keys and values
  with the parameters it is given; later steps read them, whatever memory they are passed."""
  rng = np.random.default_rng(5)
  x, memory = (rng.normal(size=(2, n, 8)).astype(np.float32) for n in (4, 6))
  mask = masks.key_padding_mask(np.array([[1] * 6, [1] * 4 + [0] * 2], bool))
  full_module = attention.MultiHeadAttention(num_heads=2, implementation='plain')
  params = full_module.init(jax.random.key(0), x, memory)
  full, _ = full_module.apply(params, x, memory, mask=mask)
  decoder = attention.MultiHeadAttention(num_heads=2, cache_memory=True,
                                         implementation=implementation)
  _, variables = decoder.apply(params, x, memory, mask=mask, mutable=['cache'])
  cache = variables['cache']
  assert cache['memory_key'].shape == (2, 2, 6, 4)  # Heads first: [B, H, S, Dh].
  steps = [decoder.apply({**params, 'cache': cache}, x[:, t:t + 1], np.zeros_like(memory),
                         mask=mask)[0] for t in range(4)]
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_segment_mask_blocks_other_segments_and_padding():
  seg = jnp.array([[1, 1, 2, 0]])
  m = np.asarray(masks.segment_mask(seg, seg))[0, 0]
  np.testing.assert_array_equal(m, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])


def test_heads_must_divide_features():
  module = attention.MultiHeadAttention(num_heads=3)
  with pytest.raises(ValueError, match='qkv_features=8 is not divisible by num_heads=3'):
    module.init(jax.random.key(0), jnp.ones((1, 2, 8)))


def test_bfloat16_matmul_gradients_run_in_bfloat16_and_match_float32():
  x = jax.random.normal(jax.random.key(0), (16, 32))
  w = jax.random.normal(jax.random.key(1), (32, 8))
  loss = lambda dtype: lambda x, w: (kernels.matmul(x, w, dtype).astype(jnp.float32) ** 2).sum()
  want = jax.grad(loss(jnp.float32), argnums=(0, 1))(x, w)
  grad_fn = jax.grad(loss(jnp.bfloat16), argnums=(0, 1))
  got = grad_fn(x, w)
  for g, h in zip(got, want):
    assert g.dtype == jnp.float32  # The operands' own dtype.
    np.testing.assert_allclose(g, h, rtol=0.05, atol=0.05 * np.abs(h).max())
  # bfloat16 operands accumulated into float32, the form XLA:CPU runs on AMX.
  dots = [line for line in jax.jit(grad_fn).lower(x, w).as_text().splitlines()
          if 'dot_general' in line]
  assert len(dots) == 3, dots
  for line in dots:
    assert re.search(r'\(tensor<[0-9x]+xbf16>, tensor<[0-9x]+xbf16>\) -> tensor<[0-9x]+xf32>',
                     line), line


@pytest.mark.parametrize('spec, a_shape, b_shape', [
    ('bqhd,bkhd->bhqk', (2, 3, 2, 4), (2, 5, 2, 4)),      # attention logits
    ('bhqk,bkhd->bqhd', (2, 2, 3, 5), (2, 5, 2, 4)),      # attention-weighted values
    ('...d,dhk->...hk', (2, 3, 6, 8), (8, 2, 4)),         # a projection, batch dims summed
    ('bqhd,byxhd->bqhyx', (2, 3, 2, 4), (2, 5, 6, 2, 4)),  # a 2-D key grid
])
def test_bfloat16_einsum_gradients_match_float32(spec, a_shape, b_shape):
  a = jax.random.normal(jax.random.key(0), a_shape)
  b = jax.random.normal(jax.random.key(1), b_shape)
  loss = lambda dtype: lambda a, b: (kernels.einsum(spec, a, b, dtype) ** 2).sum()
  want = jax.grad(loss(jnp.float32), argnums=(0, 1))(a, b)
  got = jax.grad(loss(jnp.bfloat16), argnums=(0, 1))(a, b)
  for g, h in zip(got, want):
    assert g.shape == h.shape and g.dtype == jnp.float32
    np.testing.assert_allclose(g, h, rtol=0.05, atol=0.03 * np.abs(h).max())


def test_bfloat16_einsum_names_a_spec_it_cannot_differentiate():
  grad = jax.grad(lambda a: kernels.einsum('ij,jk->k', a, jnp.ones((3, 2)), jnp.bfloat16).sum())
  with pytest.raises(ValueError, match=r"einsum 'ij,jk->k': index \['i'\] is summed within one "
                                       'operand'):
    grad(jnp.ones((4, 3)))
