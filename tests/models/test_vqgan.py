"""VQGAN's first stage: shapes through the autoencoder and the discriminator, the decoder of
the indices equals the reconstruction, the gradient reaches the encoder through the codes,
one residual block and one attention block against float64 numpy, and named errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import vqgan

TINY = dict(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
            z_channels=8, num_codes=32, code_dim=8)


def images(b=2, size=32, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (b, size, size, 3)).astype(np.float32)


def test_autoencoder_shapes_and_decoding_the_indices_gives_the_reconstruction():
  model = vqgan.VQAutoencoder(**TINY)
  x = images()
  variables = jax.jit(model.init)(jax.random.key(0), x)  # Jitted: op by op compiles far more.
  recon, features, aux = jax.jit(model.apply)(variables, x)
  assert recon.shape == x.shape and features.shape == (2, 32, 32, 16)
  assert aux['indices'].shape == (2, 8, 8)  # Two halvings: f = 4.
  assert int(aux['counts'].sum()) == 2 * 8 * 8
  decoded = jax.jit(lambda v, i: model.apply(v, i, method='decode_indices'))(
      variables, aux['indices'])
  np.testing.assert_allclose(decoded, recon, atol=1e-4)  # z + sg(e − z) rounds.
  names = set(variables['params'])
  assert names == {'encoder', 'quant_conv', 'quantizer', 'post_quant_conv', 'decoder',
                   'to_pixels'}
  assert 'down1_attention0' not in variables['params']['encoder']  # 16x16: no attention.
  assert 'down2_attention0' in variables['params']['encoder']  # 8x8.


def test_the_reconstruction_loss_reaches_the_encoder_through_the_codes():
  model = vqgan.VQAutoencoder(**TINY)
  x = images()
  variables = jax.jit(model.init)(jax.random.key(0), x)

  @jax.jit
  def l1(params):
    recon, _, _ = model.apply({'params': params}, x)
    return jnp.abs(recon - x).mean()

  grads = jax.grad(l1)(variables['params'])
  for name in ('encoder', 'quant_conv', 'decoder', 'to_pixels'):
    norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads[name]))
    assert norm > 0, name
  # The codebook learns from the codebook term only, not from the reconstruction.
  assert float(jnp.abs(grads['quantizer']['codebook']).max()) == 0


def conv_ref(p, x, stride=1, pad=((1, 1), (1, 1))):
  k = p['kernel']
  xp = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  kh, kw = k.shape[:2]
  ho = (xp.shape[1] - kh) // stride + 1
  wo = (xp.shape[2] - kw) // stride + 1
  return sum(xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] @ k[i, j]
             for i in range(kh) for j in range(kw)) + p['bias']


def group_norm_ref(p, x, groups):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  g = (g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(g.var((1, 2, 4), keepdims=True) + 1e-6)
  return g.reshape(x.shape) * p['scale'] + p['bias']


def swish(x):
  return x / (1 + np.exp(-x))


def as64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def randomized(tree, seed=1):
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [rng.normal(size=l.shape).astype(np.float32) * 0.3
                                      for l in leaves])


def test_residual_block_equals_its_equations():
  x = images(size=6)[..., :3].repeat(4, -1)  # 12 channels → 16: the 1x1 shortcut too.
  block = vqgan.ResBlock(16)
  params = randomized(block.init(jax.random.key(0), x)['params'])
  out = block.apply({'params': params}, x)
  p, x64 = as64(params), x.astype(np.float64)
  h = conv_ref(p['conv1'], swish(group_norm_ref(p['norm1'], x64, 12)))
  h = conv_ref(p['conv2'], swish(group_norm_ref(p['norm2'], h, 16)))
  ref = x64 @ p['shortcut']['kernel'][0, 0] + p['shortcut']['bias'] + h
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_grid_attention_equals_single_head_attention_over_positions():
  x = images(size=4)[..., :3].repeat(4, -1)
  block = vqgan.GridAttention()
  params = randomized(block.init(jax.random.key(0), x)['params'])
  out = block.apply({'params': params}, x)
  p, x64 = as64(params), x.astype(np.float64)
  t = group_norm_ref(p['norm'], x64, 12).reshape(2, 16, 12)
  a = p['attention']
  proj = lambda name, v: (np.einsum('btc,chd->bthd', v, a[name]['kernel'])
                          + a[name]['bias'])[:, :, 0]
  q, k, v = proj('query', t), proj('key', t), proj('value', t)
  s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
  w = np.exp(s - s.max(-1, keepdims=True))
  y = (w / w.sum(-1, keepdims=True)) @ v
  o = y @ a['out']['kernel'][0] + a['out']['bias']
  ref = x64 + o.reshape(x.shape)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('num_layers, size, grid', [(3, 32, 2), (2, 32, 6), (2, 28, 5)])
def test_patch_discriminator_gives_a_grid_of_logits(num_layers, size, grid):
  d = vqgan.PatchDiscriminator(channels=8, num_layers=num_layers)
  x = images(size=size)
  variables = d.init(jax.random.key(0), x)
  out, state = d.apply(variables, x, train=True, mutable=['batch_stats'])
  assert out.shape == (2, grid, grid, 1)
  assert set(state['batch_stats']) == {f'bn{n}' for n in range(1, num_layers + 1)}


def test_an_image_size_the_levels_cannot_halve_is_named():
  with pytest.raises(ValueError, match=r'VQGAN image size 30: the 3 levels halve it 2 times, '
                                       r'so it must be a multiple of 4\.'):
    vqgan.VQAutoencoder(**TINY).init(jax.random.key(0), images(size=30))


def tiny_prior(num_classes=3):
  prior = vqgan.Prior(num_codes=11, length=6, num_classes=num_classes, hidden_size=16,
                      num_layers=2, num_heads=2, mlp_dim=32)
  codes = np.random.default_rng(0).integers(0, 11, (2, 6))
  labels = np.array([0, 2])
  return prior, jax.jit(prior.init)(jax.random.key(0), codes, labels)['params'], codes, labels


def test_cached_steps_give_the_teacher_forced_logits():
  prior, params, codes, labels = tiny_prior()
  forward = jax.jit(prior.apply)  # Jitted: op by op compiles far more.
  full = forward({'params': params}, codes, labels)
  assert full.shape == (2, 6, 11)
  decoder = prior.clone(decode=True)
  cache = jax.jit(decoder.init)(jax.random.key(0), codes, labels)['cache']
  next_logits = jax.jit(lambda v, previous, t: decoder.apply(
      v, previous, labels, t, method=decoder.next_logits, mutable=['cache']))
  previous = np.zeros(2, np.int64)
  for t in range(6):
    step, updated = next_logits({'params': params, 'cache': cache}, previous, t)
    np.testing.assert_allclose(step, full[:, t], atol=1e-5)
    cache, previous = updated['cache'], codes[:, t]
  # Causal: changing a later code leaves the earlier positions' logits alone.
  changed = codes.copy()
  changed[:, 4] = (changed[:, 4] + 1) % 11
  again = forward({'params': params}, changed, labels)
  np.testing.assert_allclose(again[:, :5], full[:, :5], atol=1e-6)
  assert not np.allclose(again[:, 5], full[:, 5])


def test_top_1_sampling_is_the_greedy_sequence_of_the_uncached_pass():
  prior, params, _, labels = tiny_prior()
  codes = np.asarray(jax.jit(lambda p, l, r: vqgan.sample(prior, p, l, r, top_k=1))(
      params, labels, jax.random.key(3)))
  assert codes.shape == (2, 6)
  full = prior.apply({'params': params}, codes, labels)
  np.testing.assert_array_equal(codes, np.asarray(full.argmax(-1)))
  # The class prefix matters; unconditional, it is ignored.
  other = prior.apply({'params': params}, codes, labels[::-1])
  assert not np.allclose(other, full)
  plain, plain_params, _, _ = tiny_prior(num_classes=0)
  np.testing.assert_allclose(plain.apply({'params': plain_params}, codes, labels),
                             plain.apply({'params': plain_params}, codes, labels[::-1]))


def test_sampling_follows_temperature_and_top_k():
  prior, params, _, labels = tiny_prior()
  labels = np.zeros(256, np.int64)
  draw = jax.jit(lambda t, k, r: vqgan.sample(prior, params, labels, r, temperature=t,
                                              top_k=k), static_argnums=1)
  first = lambda codes: np.asarray(codes)[:, 0]
  logits = np.asarray(prior.apply({'params': params}, np.zeros((1, 6), np.int64),
                                  labels[:1]))[0, 0]
  top3 = set(np.argsort(logits)[-3:])
  assert set(first(draw(1.0, 3, jax.random.key(0)))) <= top3
  # A low temperature concentrates on the likeliest first code, a high one spreads out.
  cold = first(draw(0.05, None, jax.random.key(1)))
  hot = first(draw(5.0, None, jax.random.key(1)))
  assert (cold == logits.argmax()).mean() > 0.95
  assert len(set(hot)) > len(set(cold))


def test_a_prior_given_the_wrong_number_of_codes_says_so():
  prior, params, codes, labels = tiny_prior()
  with pytest.raises(ValueError, match=r'VQGAN prior: 5 codes per image, expected 6\.'):
    prior.apply({'params': params}, codes[:, :5], labels)
