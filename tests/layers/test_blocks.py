import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.layers import masks
from vit_jax.layers import transformer


def _x(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_positions_go_to_queries_and_keys_not_values():
  """Post-LN block with pos equals attention(q=k=x+pos, v=x) computed by hand."""
  config = transformer.BlockConfig(num_heads=2, mlp_dim=16, activation='gelu',
                                   layer_norm_eps=1e-6)
  block = transformer.EncoderBlock(config)
  x, pos = _x(2, 5, 8), _x(2, 5, 8, seed=1)
  params = block.init(jax.random.key(0), x, pos=pos)
  out, _ = block.apply(params, x, pos=pos)
  p = params['params']
  mha = transformer.attention.MultiHeadAttention(num_heads=2)
  y, _ = mha.apply({'params': p['MultiHeadDotProductAttention_1']}, x + pos, x + pos, x)
  ln = lambda v, s: (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6) \
      * s['scale'] + s['bias']
  h = ln(x + np.asarray(y), p['LayerNorm_0'])
  mlp = transformer.MlpBlock(config)
  expected = ln(h + np.asarray(mlp.apply({'params': p['MlpBlock_3']}, h)), p['LayerNorm_2'])
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # Adding pos to the values as well would give something else.
  y_wrong, _ = mha.apply({'params': p['MultiHeadDotProductAttention_1']}, x + pos)
  assert np.abs(np.asarray(y_wrong) - np.asarray(y)).max() > 1e-3


def test_encoder_returns_every_layer():
  enc = transformer.Encoder(num_layers=3, config=transformer.BlockConfig(num_heads=2, mlp_dim=16),
                            posemb='learn')
  x = _x(2, 4, 8)
  params = enc.init(jax.random.key(0), x)
  out, aux = enc.apply(params, x, return_attention=True)
  assert len(aux['layers']) == 3 and len(aux['attention']) == 3
  assert aux['attention'][0].shape == (2, 2, 4, 4)
  assert out.shape == (2, 4, 8)
  assert set(params['params']) == {'posembed_input', 'encoderblock_0', 'encoderblock_1',
                                   'encoderblock_2', 'encoder_norm'}


def test_decoder_is_causal_and_respects_memory_padding():
  dec = transformer.Decoder(num_layers=2, config=transformer.BlockConfig(num_heads=2, mlp_dim=16),
                            final_norm=True, norm_every_output=True)
  x, memory = _x(1, 5, 8), _x(1, 6, 8, seed=1)
  valid = np.array([[1, 1, 1, 1, 0, 0]], bool)
  kw = dict(self_mask=masks.causal_mask(5), cross_mask=masks.key_padding_mask(valid))
  params = dec.init(jax.random.key(0), x, memory, **kw)
  out, aux = dec.apply(params, x, memory, **kw, return_attention=True)
  x2, memory2 = x.copy(), memory.copy()
  x2[:, 3:] += 3.0
  memory2[:, 4:] = 99.0
  out2, _ = dec.apply(params, x2, memory2, **kw)
  np.testing.assert_allclose(np.asarray(out)[:, :3], np.asarray(out2)[:, :3], atol=1e-5)
  np.testing.assert_allclose(aux['layers'][-1], out, atol=1e-6)  # Normed like the output.
  assert aux['attention'][0]['cross'].shape == (1, 2, 5, 6)


def test_droppath_drops_whole_examples_and_rescales():
  drop = transformer.DropPath(0.5)
  x = jnp.ones((64, 3, 4))
  y = np.asarray(drop.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(0)}))
  per_example = y.reshape(64, -1)
  assert set(np.unique(per_example)) <= {0.0, 2.0}
  assert np.all(per_example.min(1) == per_example.max(1))
  assert 10 < (per_example[:, 0] == 0).sum() < 54


def test_gelu_is_pytorchs_exact_gelu():
  """Values and gradients of the 'gelu' activation against torch's exact GELU in float64,
  across the range where its tails matter (erf saturates beyond |x| ≈ 4)."""
  import torch
  x = np.linspace(-12, 12, 4801).astype(np.float32)
  t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
  y = torch.nn.functional.gelu(t)
  dy, = torch.autograd.grad(y.sum(), t)
  ours, vjp = jax.vjp(transformer.ACTIVATIONS['gelu'], jnp.asarray(x))
  np.testing.assert_allclose(ours, y.detach().numpy(), rtol=0, atol=2e-6)
  np.testing.assert_allclose(vjp(jnp.ones_like(ours))[0], dy.numpy(), rtol=0, atol=2e-6)
  _, forward_mode = jax.jvp(transformer.gelu, (jnp.asarray(x),), (jnp.ones_like(ours),))
  np.testing.assert_allclose(forward_mode, dy.numpy(), rtol=0, atol=2e-6)


def test_gelus_gradient_keeps_no_activation_sized_erf(monkeypatch):
  """The backward pass recomputes Φ(x) from x (the custom JVP) where GELU differentiated as
  written keeps erf(x/√2) from the forward pass: one [tokens, mlp_dim] buffer less."""
  monkeypatch.setitem(transformer.ACTIVATIONS, 'as_written',
                      lambda x: 0.5 * x * (1 + jax.lax.erf(x * np.sqrt(0.5))))
  x = jnp.ones((4, 64, 32))

  def temporaries(activation):
    mlp = transformer.MlpBlock(transformer.BlockConfig(num_heads=2, mlp_dim=128,
                                                       activation=activation))
    params = mlp.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(mlp.apply(p, x) ** 2)))
    return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

  assert temporaries('gelu') <= temporaries('as_written') - 4 * 64 * 128 * 4
