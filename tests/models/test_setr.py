import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import setr
from vit_jax.models import vit


def make(decoder, variant='mu/4', num_layers=None, **kw):
  args = vit.decode_variant(variant)
  if num_layers:
    args['num_layers'] = num_layers
  encoder = vit.VisionTransformer(num_classes=0, **args)
  return setr.SETR(num_classes=5, encoder=encoder, decoder=decoder, decoder_dim=8, **kw)


@pytest.mark.parametrize('factor', [2, 4])
def test_upsampling_is_torch_bilinear(factor):
  import torch
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 4))
  ours = setr.upsample(jnp.asarray(x, jnp.float32), factor)
  ref = torch.nn.functional.interpolate(torch.tensor(x).permute(0, 3, 1, 2),
                                        scale_factor=factor, mode='bilinear',
                                        align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_naive_decoder_equals_a_float64_reference():
  """1x1 conv → BatchNorm (running statistics) → ReLU → 1x1 conv on the final tokens, then
  bilinear upsampling to the image (§3.3), computed here in numpy/PyTorch float64."""
  import torch
  model = make('naive')
  images = jax.random.normal(jax.random.key(0), (2, 16, 12, 3))
  variables = model.init(jax.random.key(1), images)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda p: p + rng.normal(size=p.shape).astype(np.float32) * 0.3,
                           variables)
  stats = variables['batch_stats']['decoder']['project']['bn']
  stats['var'] = jnp.abs(stats['var']) + 0.5
  logits, _ = model.apply(variables, images)
  _, enc = model.encoder.apply({'params': variables['params']['encoder']}, images)
  tokens = np.asarray(enc['tokens'][:, 1:], np.float64).reshape(2, 4, 3, -1)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params']['decoder'])
  x = tokens @ p['project']['conv']['kernel'][0, 0]
  bn = p['project']['bn']
  x = (x - stats['mean']) / np.sqrt(np.asarray(stats['var'], np.float64) + 1e-5) * bn['scale'] + bn['bias']
  x = np.maximum(x, 0) @ p['classifier']['kernel'][0, 0] + p['classifier']['bias']
  ref = torch.nn.functional.interpolate(torch.tensor(x).permute(0, 3, 1, 2), size=(16, 12),
                                        mode='bilinear', align_corners=False)
  np.testing.assert_allclose(logits, ref.permute(0, 2, 3, 1).numpy(), atol=2e-4)


@pytest.mark.parametrize('decoder', ['naive', 'pup', 'mla'])
def test_every_decoder_gives_full_resolution_logits(decoder):
  model = make(decoder, num_layers=4, aux_layers=(2,))
  images = jnp.zeros((2, 16, 8, 3))
  variables = model.init(jax.random.key(0), images)
  (logits, aux), state = model.apply(variables, images, train=True, mutable=['batch_stats'])
  assert logits.shape == (2, 16, 8, 5) and aux['aux_logits'][0].shape == (2, 16, 8, 5)
  assert set(state['batch_stats']) >= {'aux_head2'}
  names = set(variables['params'])
  expected = {'naive': {'decoder'}, 'pup': {'decoder_up0', 'decoder_up1', 'decoder_classifier'},
              'mla': {f'mla_norm{i}' for i in range(4)} | {'mla_classifier'}}[decoder]
  assert expected <= names and 'head' not in variables['params']['encoder']


def test_mla_reads_four_evenly_spaced_layers():
  assert make('mla', 'B/16').mla_layers() == [3, 6, 9, 12]
  assert make('mla', 'L/16').mla_layers() == [6, 12, 18, 24]  # The official 5, 11, 17, 23.


@pytest.mark.parametrize('decoder, kw, message', [
    ('pup', dict(variant='mu/6'), "PUP decoder upsamples 2x per step; the patch size 6 is not"),
    ('mla', dict(num_layers=2), "MLA decoder reads four encoder layers; the encoder has 2"),
    ('naive', dict(aux_layers=(3,)), r'model.aux_layers has 3; the encoder has layers 1..2'),
    ('fpn', {}, r"Unknown SETR decoder 'fpn'; expected one of \['naive', 'pup', 'mla'\]"),
])
def test_bad_settings_are_named(decoder, kw, message):
  with pytest.raises(ValueError, match=message):
    make(decoder, **kw).init(jax.random.key(0), jnp.zeros((1, 24, 24, 3)))
