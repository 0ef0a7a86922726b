import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import pretrained
from vit_jax.models import vit


def init(image_size=8, num_classes=5, **kw):
  model = vit.VisionTransformer(num_classes=num_classes, **{**vit.decode_variant('mu/2'), **kw})
  return jax.device_get(model.init(jax.random.key(1), jnp.ones((1, image_size, image_size, 1))))[
      'params']


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
