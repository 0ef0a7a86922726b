"""Every implementation choice in kernels.py computes what the plain (textbook) path does."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import loss_and_grads
from helpers import tiny
from vit_jax import train
from vit_jax.layers import attention
from vit_jax.layers import masks

FAST = ('fused', 'xla')


def _inputs(seed=0):
  normal = np.random.default_rng(seed).normal
  x, pos = normal(size=(2, 5, 8)).astype(np.float32), normal(size=(2, 5, 8)).astype(np.float32)
  memory = normal(size=(2, 6, 8)).astype(np.float32)
  memory_pos = normal(size=(2, 6, 8)).astype(np.float32)
  valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  # Self-attention masks in which query 4 of the first example sees no key at all.
  self_mask = np.ones((2, 1, 5, 5), bool)
  self_mask[0, :, 4] = False
  return {  # (inputs_q, inputs_k, inputs_v, mask)
      'self': (x, None, None, self_mask),
      'self, positions on queries and keys (DETR)': (x + pos, None, x, self_mask),
      'cross': (x, memory, None, masks.key_padding_mask(valid)),
      'cross, positions on queries and keys (DETR)': (x + pos, memory + memory_pos, memory,
                                                      masks.key_padding_mask(valid)),
  }


@pytest.mark.parametrize('implementation', FAST)
def test_attention_implementations_equal_the_plain_path(implementation):
  plain = attention.MultiHeadAttention(num_heads=2, implementation='plain')
  fast = attention.MultiHeadAttention(num_heads=2, implementation=implementation)
  for form, (q, k, v, mask) in _inputs().items():
    params = plain.init(jax.random.key(0), q, k, v, mask=mask)
    expected, expected_weights = plain.apply(params, q, k, v, mask=mask, return_weights=True)
    got, no_weights = fast.apply(params, q, k, v, mask=mask)
    np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=form)
    assert no_weights is None  # Weights only when asked for.
    _, weights = fast.apply(params, q, k, v, mask=mask, return_weights=True)
    np.testing.assert_allclose(weights, expected_weights, atol=1e-6, err_msg=form)


def test_xla_attention_runs_jax_fused_attention_unless_weights_are_asked_for(monkeypatch):
  calls = []
  original = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, 'dot_product_attention',
                      lambda *a, **k: calls.append(1) or original(*a, **k))
  q, _, _, mask = _inputs()['self']
  module = attention.MultiHeadAttention(num_heads=2, implementation='xla')
  params = module.init(jax.random.key(0), q)
  calls.clear()
  module.apply(params, q, mask=mask)
  assert len(calls) == 1
  module.apply(params, q, mask=mask, return_weights=True)  # Plots: the plain formula.
  module.clone(dropout_rate=0.1).apply(params, q, mask=mask, deterministic=False,
                                       rngs={'dropout': jax.random.key(1)})  # Its dropout.
  assert len(calls) == 1


@pytest.mark.parametrize('family', ['vit', 'transformer', 'detr'])
def test_every_family_trains_the_same_under_every_implementation(family, tmp_path):
  """Loss and gradients of a training batch (dropout included) from the same parameters."""
  config = tiny(family, attention_impl='plain')
  params, loss, grads = loss_and_grads(config, tmp_path)
  for implementation in FAST:
    config.attention_impl = implementation
    _, fast_loss, fast_grads = loss_and_grads(config, tmp_path, params)
    np.testing.assert_allclose(fast_loss, loss, rtol=1e-5, err_msg=implementation)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6,
                                                         err_msg=implementation),
                 fast_grads, grads)


def test_unknown_implementation_is_named():
  with pytest.raises(ValueError, match=r"Unknown attention_impl 'flash'; expected one of "
                                       r"\('plain', 'fused', 'xla'\)"):
    train.Trainer(tiny(attention_impl='flash'))
  with pytest.raises(ValueError, match=r"Unknown attention implementation 'flash'"):
    attention.MultiHeadAttention(num_heads=2, implementation='flash').init(
        jax.random.key(0), jnp.ones((1, 2, 4)))
