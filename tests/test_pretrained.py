import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import pretrained
from vit_jax.models import vit


def init(image_size=8, num_classes=5, **kw):
  model = vit.VisionTransformer(num_classes=num_classes, **{**vit.decode_variant('mu/2'), **kw})
  return jax.device_get(jax.jit(model.init)(jax.random.key(1),
                                            jnp.ones((1, image_size, image_size, 1))))['params']


def test_export_roundtrip_uses_published_keys(tmp_path):
  params = init()
  path = pretrained.save_npz(params, str(tmp_path / 'params.npz'))
  flat = pretrained.load_npz(path)
  assert 'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel' in flat
  restored = pretrained.load_vit(init(), flat, grid=(4, 4), reset_head=False)
  jax.tree.map(np.testing.assert_array_equal, restored, params)


def test_finetune_resizes_posemb_resets_head_and_drops_pre_logits(tmp_path):
  source = init(representation_size=16)
  path = pretrained.save_npz(source, str(tmp_path / 'p.npz'))
  target = init(image_size=16, num_classes=3)  # 8x8 grid, 3 classes, no pre_logits.
  out = pretrained.load_vit(target, pretrained.load_npz(path), grid=(8, 8), reset_head=True)
  assert 'pre_logits' not in out
  np.testing.assert_array_equal(out['head']['kernel'], target['head']['kernel'])
  posemb = out['Transformer']['posembed_input']['pos_embedding']
  assert posemb.shape == (1, 65, 32)
  src = source['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_array_equal(posemb[:, 0], src[:, 0])  # The class token is kept as is.
  np.testing.assert_allclose(posemb[0, 1], src[0, 1], atol=1e-6)  # Corners align (order=1).
  np.testing.assert_array_equal(out['Transformer']['encoderblock_0']['LayerNorm_0']['scale'],
                                source['Transformer']['encoderblock_0']['LayerNorm_0']['scale'])


def test_resize_to_non_square_grid_is_bilinear():
  tokens = np.arange(4, dtype=np.float32).reshape(1, 4, 1)  # 2x2 grid [[0, 1], [2, 3]].
  posemb = np.concatenate([np.full((1, 1, 1), -1.0, np.float32), tokens], axis=1)
  out = pretrained.resize_posemb(posemb, (2, 3), num_prefix_tokens=1)
  np.testing.assert_allclose(out[0, 1:, 0], [0, 0.5, 1, 2, 2.5, 3], atol=1e-6)
  assert out[0, 0, 0] == -1


def test_mismatched_checkpoint_names_every_problem(tmp_path):
  flat = {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(init()).items()}
  del flat['Transformer/encoder_norm/scale']
  flat['Transformer/encoderblock_9/LayerNorm_0/scale'] = np.ones(32, np.float32)
  flat['cls'] = np.zeros((1, 1, 64), np.float32)
  with pytest.raises(ValueError) as e:
    pretrained.load_vit(init(), flat, grid=(4, 4))
  message = str(e.value)
  assert "missing: ['Transformer/encoder_norm/scale']" in message
  assert "unexpected: ['Transformer/encoderblock_9/LayerNorm_0/scale']" in message
  assert "mis-shaped: ['cls: checkpoint (1, 1, 64) vs model (1, 1, 32)']" in message


def test_damaged_or_missing_file(tmp_path):
  bad = tmp_path / 'bad.npz'
  bad.write_bytes(b'not a zip file')
  with pytest.raises(ValueError, match=f"Checkpoint '{bad}' is not a readable .npz file"):
    pretrained.load_npz(str(bad))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    pretrained.load_npz(str(tmp_path / 'nope.npz'))


# Reference models in the two Linen layouts that publish ViT checkpoints today, written with
# Flax's own modules so their parameter names are Flax's automatic ones: the official code's
# models_vit.py (class token, then a learned table in Transformer/posembed_input) and
# big_vision's vit.py (the table at the top, added before a class token; 'gap'/'map' pooling;
# fixed sin-cos positions).
class MlpBlock(flax.linen.Module):
  mlp_dim: int

  @flax.linen.compact
  def __call__(self, x):
    y = flax.linen.gelu(flax.linen.Dense(self.mlp_dim)(x))
    return flax.linen.Dense(x.shape[-1])(y)


class Encoder1DBlock(flax.linen.Module):
  num_heads: int
  mlp_dim: int

  @flax.linen.compact
  def __call__(self, x):
    y = flax.linen.LayerNorm()(x)
    x = x + flax.linen.MultiHeadDotProductAttention(num_heads=self.num_heads)(y, y)
    return x + MlpBlock(self.mlp_dim)(flax.linen.LayerNorm()(x))


class MAPHead(flax.linen.Module):
  num_heads: int
  mlp_dim: int

  @flax.linen.compact
  def __call__(self, x):
    probe = self.param('probe', flax.linen.initializers.normal(1.0), (1, 1, x.shape[-1]))
    probe = jnp.tile(probe, (x.shape[0], 1, 1))
    x = flax.linen.MultiHeadDotProductAttention(num_heads=self.num_heads)(probe, x)
    return (x + MlpBlock(self.mlp_dim)(flax.linen.LayerNorm()(x)))[:, 0]


class PosEmbed(flax.linen.Module):
  @flax.linen.compact
  def __call__(self, x):
    return x + self.param('pos_embedding', flax.linen.initializers.normal(0.5),
                          (1,) + x.shape[1:])


class Transformer(flax.linen.Module):
  depth: int
  num_heads: int
  mlp_dim: int
  posemb_inside: bool

  @flax.linen.compact
  def __call__(self, x):
    if self.posemb_inside:
      x = PosEmbed(name='posembed_input')(x)
    for i in range(self.depth):
      x = Encoder1DBlock(self.num_heads, self.mlp_dim, name=f'encoderblock_{i}')(x)
    return flax.linen.LayerNorm(name='encoder_norm')(x)


def sincos2d_reference(h, w, dim):
  """Float64, from the definition: per (axis, sin|cos) dim/4 frequencies 10000^(-i/(dim/4-1))."""
  omega = 10_000.0 ** -(np.arange(dim // 4) / (dim // 4 - 1))
  y, x = np.mgrid[:h, :w]
  y, x = y.reshape(-1, 1) * omega, x.reshape(-1, 1) * omega
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], 1)[None]


class ReferenceViT(flax.linen.Module):
  layout: str  # 'official' or 'big_vision'
  pool: str  # 'tok', 'gap' or 'map'
  posemb: str = 'learn'
  width: int = 32
  patch: int = 2

  @flax.linen.compact
  def __call__(self, image):
    x = flax.linen.Conv(self.width, (self.patch,) * 2, strides=(self.patch,) * 2,
                        padding='VALID', name='embedding')(image)
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    if self.layout == 'big_vision':
      x = (x + sincos2d_reference(h, w, d) if self.posemb == 'sincos2d' else
           x + self.param('pos_embedding', flax.linen.initializers.normal(0.5), (1, h * w, d)))
    if self.pool == 'tok':
      cls = self.param('cls', flax.linen.initializers.normal(1.0), (1, 1, d))
      x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)), x], axis=1)
    x = Transformer(2, 2, 64, self.layout == 'official', name='Transformer')(x)
    x = {'tok': lambda: x[:, 0], 'gap': lambda: x.mean(1),
         'map': lambda: MAPHead(2, 64, name='MAPHead_0')(x)}[self.pool]()
    return flax.linen.Dense(5, name='head')(x)


@pytest.mark.parametrize('layout, pool, posemb', [
    ('official', 'tok', 'learn'), ('big_vision', 'tok', 'learn'), ('big_vision', 'gap', 'learn'),
    ('big_vision', 'map', 'sincos2d')])
def test_linen_and_big_vision_checkpoints_load_and_compute_the_same(tmp_path, layout, pool,
                                                                   posemb):
  reference = ReferenceViT(layout, pool, posemb)
  images = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  params = jax.jit(reference.init)(jax.random.key(1), images)['params']
  params = jax.tree.map(  # Non-zero biases and LayerNorm parameters: every one matters.
      lambda p: p + 0.1 * jax.random.normal(jax.random.key(p.size), p.shape), params)
  flat = pretrained.load_npz(pretrained.save_npz(params, str(tmp_path / 'ref.npz')))
  assert ('Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel' in flat and
          ('pos_embedding' in flat) == (layout == 'big_vision' and posemb == 'learn'))
  classifier = {'tok': 'token', 'gap': 'gap', 'map': 'map'}[pool]
  ours = vit.VisionTransformer(num_classes=5, patch_size=2, hidden_size=32, num_layers=2,
                               num_heads=2, mlp_dim=64, classifier=classifier, posemb=posemb,
                               activation='gelu_tanh')
  fresh = jax.jit(ours.init)(jax.random.key(2), images)['params']
  loaded = pretrained.load_vit(fresh, flat, grid=(4, 4), reset_head=False)
  np.testing.assert_allclose(jax.jit(ours.apply)({'params': loaded}, images)[0],
                             jax.jit(reference.apply)({'params': params}, images), atol=2e-5)
  # Export writes the published layout, which loads back unchanged.
  again = pretrained.load_npz(pretrained.save_npz(loaded, str(tmp_path / 'ours.npz')))
  assert not any('MlpBlock_0' in k for k in again if k.startswith('Transformer/'))
  jax.tree.map(np.testing.assert_array_equal,
               pretrained.load_vit(fresh, again, grid=(4, 4), reset_head=False), loaded)


def test_a_file_of_no_known_layout_names_what_does_not_fit():
  flat = pretrained.flatten(init())
  flat['Transformer/encoderblock_0/Attention_0/query/kernel'] = flat.pop(
      'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel')
  with pytest.raises(ValueError) as e:
    pretrained.load_vit(init(), flat, grid=(4, 4), reset_head=False, source='Checkpoint x.npz')
  assert str(e.value).startswith('Checkpoint x.npz does not fit the ViT.\n  missing: '
                                 "['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/"
                                 "query/kernel']\n  unexpected: ['Transformer/encoderblock_0/"
                                 "Attention_0/query/kernel']")


def test_deit_keeps_both_leading_tokens_when_resized(tmp_path):
  source = init(distillation=True)
  path = pretrained.save_npz(source, str(tmp_path / 'deit.npz'))
  target = init(image_size=16, distillation=True)
  out = pretrained.load_vit(target, pretrained.load_npz(path), grid=(8, 8), reset_head=False)
  posemb = out['Transformer']['posembed_input']['pos_embedding']
  src = source['Transformer']['posembed_input']['pos_embedding']
  assert posemb.shape == (1, 66, 32)
  np.testing.assert_array_equal(posemb[:, :2], src[:, :2])  # Class and distillation tokens.
  np.testing.assert_allclose(posemb[0, 2], src[0, 2], atol=1e-6)  # The first patch's corner.
