"""IPT against a PyTorch reference written from the paper and the official code's layout
(torch primitives: conv2d, unfold/fold, MultiheadAttention, PixelShuffle), weights ported."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import ipt as ipt_config
from vit_jax import errors
from vit_jax.models import ipt


def test_patches_and_pixel_shuffle_follow_torch():
  x = np.random.default_rng(0).normal(size=(2, 6, 9, 4)).astype(np.float32)
  as_torch = torch.from_numpy(x).permute(0, 3, 1, 2)
  tokens = ipt.to_tokens(jnp.asarray(x), 3)
  np.testing.assert_array_equal(tokens, F.unfold(as_torch, 3, stride=3).transpose(1, 2))
  np.testing.assert_array_equal(ipt.from_tokens(tokens, 3, 6, 9), x)
  shuffled = torch.nn.PixelShuffle(2)(as_torch).permute(0, 2, 3, 1)
  np.testing.assert_array_equal(ipt.pixel_shuffle(jnp.asarray(x), 2), shuffled)


def conv(x, p):
  """Ours [k, k, in, out] → torch's conv2d with PyTorch padding."""
  w = torch.from_numpy(np.asarray(p['kernel'], np.float64)).permute(3, 2, 0, 1)
  return F.conv2d(x, w, torch.from_numpy(np.asarray(p['bias'], np.float64)),
                  padding=w.shape[-1] // 2)


def t(a):
  return torch.from_numpy(np.asarray(a, np.float64))


def mha(p, num_heads):
  """Our attention parameters ([D, H, Dh] kernels) in a torch.nn.MultiheadAttention."""
  d = p['query']['kernel'].shape[0]
  m = torch.nn.MultiheadAttention(d, num_heads, batch_first=True, dtype=torch.float64)
  with torch.no_grad():
    m.in_proj_weight.copy_(torch.cat([t(p[k]['kernel']).reshape(d, d).T
                                      for k in ('query', 'key', 'value')]))
    m.in_proj_bias.copy_(torch.cat([t(p[k]['bias']).reshape(d) for k in ('query', 'key', 'value')]))
    m.out_proj.weight.copy_(t(p['out']['kernel']).reshape(d, d).T)
    m.out_proj.bias.copy_(t(p['out']['bias']))
  return lambda q, k, v: m(q, k, v, need_weights=False)[0]


def linear(x, p):
  return x @ t(p['kernel']) + t(p['bias'])


def norm(x, p):
  return F.layer_norm(x, x.shape[-1:], t(p['scale']), t(p['bias']))


def mlp(x, p):
  return linear(F.relu(linear(x, p['Dense_0'])), p['Dense_1'])


def reference(params, image, task, scale, *, patch, heads, layers):
  """IPT's forward (Chen et al. 2021, Fig. 2; the official model/ipt.py's order of
  operations) in float64: image [B, H, W, 3] in [0, 1] → [B, H·s, W·s, 3]."""
  mean = torch.tensor(ipt.MEAN_RGB, dtype=torch.float64).view(1, 3, 1, 1)
  x = torch.from_numpy(np.asarray(image, np.float64)).permute(0, 3, 1, 2) - mean
  head = params[f'head_{task}']
  x = conv(x, head['conv'])
  for i in range(2):
    x = x + conv(F.relu(conv(x, head[f'res{i}_conv0'])), head[f'res{i}_conv1'])
  body = params['body']
  tokens = F.unfold(x, patch, stride=patch).transpose(1, 2)
  tokens = tokens + linear(tokens, body['embedding'])
  y = tokens + t(body['encoder']['posembed_input']['pos_embedding'])
  for i in range(layers):  # Pre-LN encoder layers.
    p = body['encoder'][f'encoderblock_{i}']
    z = norm(y, p['LayerNorm_0'])
    y = y + mha(p['MultiHeadDotProductAttention_1'], heads)(z, z, z)
    y = y + mlp(norm(y, p['LayerNorm_2']), p['MlpBlock_3'])
  memory, query = y, t(params[f'query_{task}'])
  for i in range(layers):  # Pre-LN decoder layers: the task query on queries and keys.
    p = body['decoder'][f'decoderblock_{i}']
    z = norm(y, p['LayerNorm_0'])
    y = y + mha(p['SelfAttention'], heads)(z + query, z + query, z)
    z = norm(y, p['LayerNorm_1'])
    y = y + mha(p['CrossAttention'], heads)(z + query, memory, memory)
    y = y + mlp(norm(y, p['LayerNorm_2']), p['MlpBlock'])
  y = y + mlp(y, body['mlp_head'])
  x = x + F.fold(y.transpose(1, 2), x.shape[2:], patch, stride=patch)
  tail = params[f'tail_{task}']
  for i, r in enumerate(ipt.shuffle_steps(scale)):
    x = F.pixel_shuffle(conv(x, tail[f'up{i}']), r)
  return (conv(x, tail["conv"]) + mean).permute(0, 2, 3, 1).detach().numpy()


def test_ipt_matches_the_pytorch_reference():
  tasks, scales = ('noise25', 'sr2', 'sr3', 'sr4'), (1, 2, 3, 4)
  model = ipt.IPT(tasks, scales, image_size=6, features=8, patch_size=3, num_layers=2,
                  num_heads=4, mlp_dim=32)
  rng = np.random.default_rng(0)
  images = [rng.uniform(size=(2, 6, 6, 3)).astype(np.float32) for _ in tasks]
  params = model.init(jax.random.key(0), images, method=ipt.IPT.init_all_tasks)['params']
  leaves, tree = jax.tree.flatten(params)  # Biases and norms away from their 0s and 1s.
  params = tree.unflatten([x + 0.1 * rng.normal(size=x.shape).astype(np.float32)
                           for x in leaves])
  for k, (task, scale) in enumerate(zip(tasks, scales)):
    ours, aux = model.apply({'params': params}, images[k], k)
    assert ours.shape == (2, 6 * scale, 6 * scale, 3)
    assert aux['tokens'].shape == (2, 4, 72)
    expected = reference(params, images[k], task, scale, patch=3, heads=4, layers=2)
    np.testing.assert_allclose(ours, expected, atol=2e-4, rtol=1e-4, err_msg=task)


def test_init_all_tasks_creates_what_running_every_task_creates():
  """The body runs once at init, not once per task: the same parameters, the same shapes."""
  tasks, scales = ('noise25', 'sr2', 'sr3'), (1, 2, 3)
  model = ipt.IPT(tasks, scales, image_size=6, features=8, num_layers=1, num_heads=4,
                  mlp_dim=8)
  images = [jnp.zeros((1, 6, 6, 3))] * len(tasks)
  ours = jax.eval_shape(lambda: model.init(jax.random.key(0), images,
                                           method=ipt.IPT.init_all_tasks))
  every = jax.eval_shape(lambda: model.init(jax.random.key(0), images, method=lambda m, xs: [
      m(x, t) for t, x in enumerate(xs)]))
  assert ours == every


def test_paper_model_shapes_and_parameter_count():
  """The 'paper' config: 48x48 inputs → 144x144 for sr3; its size pinned: 119.0M (the paper
  reports 115.5M; ours has one query table per task and biases in the attention
  projections, which the official code leaves out)."""
  config = ipt_config.get_config('paper')
  m = dict(config.model)
  tasks = m.pop('tasks')
  from vit_jax.data import restoration
  model = ipt.IPT(tasks, tuple(map(restoration.task_scale, tasks)), image_size=48, **m)
  images = [jnp.zeros((1, 48, 48, 3))] * len(tasks)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images,
                                             method=ipt.IPT.init_all_tasks))['params']
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert count == PAPER_PARAMETERS
  out = jax.eval_shape(lambda p: model.apply({'params': p}, images[0], tasks.index('sr3')),
                       shapes)
  assert out[0].shape == (1, 144, 144, 3)


PAPER_PARAMETERS = 118_975_314


@pytest.mark.parametrize('kwargs, message', [
    (dict(image_size=7), 'IPT image_size=7 is not a multiple of patch_size=3.'),
    (dict(num_heads=5), 'IPT token width features·patch_size² = 72 is not divisible by '
                        'num_heads=5.'),
    (dict(scales=(5,)), 'IPT upsamples by 1, 3 or a power of 2; got scale 5.'),
])
def test_bad_settings_are_named(kwargs, message):
  settings = dict(tasks=('x',), scales=(1,), image_size=6, features=8, num_layers=1,
                  num_heads=4, mlp_dim=8)
  settings.update(kwargs)
  model = ipt.IPT(**settings)
  size = settings['image_size']
  with pytest.raises(errors.UserError, match='^' + re.escape(message)):
    model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), 0)


def test_a_wrong_input_size_is_named():
  model = ipt.IPT(('noise25',), (1,), image_size=6, features=8, num_layers=1, num_heads=4,
                  mlp_dim=8)
  with pytest.raises(errors.UserError, match='IPT was built for 6x6 inputs; got 9x9.'):
    model.init(jax.random.key(0), jnp.zeros((1, 9, 9, 3)), 0)


def test_input_skip_adds_the_upsampled_input():
  settings = dict(tasks=('noise25', 'sr2'), scales=(1, 2), image_size=6, features=8,
                  num_layers=1, num_heads=4, mlp_dim=8)
  plain, skip = ipt.IPT(**settings), ipt.IPT(**settings, input_skip=True)
  images = [np.random.default_rng(k).uniform(size=(2, 6, 6, 3)).astype(np.float32)
            for k in range(2)]
  params = plain.init(jax.random.key(0), images, method=ipt.IPT.init_all_tasks)
  np.testing.assert_allclose(skip.apply(params, images[0], 0)[0] - images[0],
                             plain.apply(params, images[0], 0)[0] - np.array(ipt.MEAN_RGB),
                             atol=1e-6)
  upsampled = jax.image.resize(images[1], (2, 12, 12, 3), 'bicubic')
  np.testing.assert_allclose(skip.apply(params, images[1], 1)[0] - upsampled,
                             plain.apply(params, images[1], 1)[0] - np.array(ipt.MEAN_RGB),
                             atol=1e-6)
