"""The hybrid ViT's ResNet (BiT: GroupNorm, weight-standardised convolutions) against Hugging
Face's BitModel with ported random weights, and the hybrids' published sizes and names."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vit_jax import errors
from vit_jax import pretrained
from vit_jax.models import bit
from vit_jax.models import vit

# At 384x384 with 1,000 classes, as the published ImageNet fine-tuned hybrids (timm's
# vit_base_r50_s16_384, the same model, counts 98.95M).
HYBRID_COUNTS = {'R50+B/16': 98_950_952}


class Backbone(flax.linen.Module):
  num_layers: tuple
  width_factor: float
  eps: tuple

  @flax.linen.compact
  def __call__(self, x):
    return bit.stem_and_stages(x, self.num_layers, self.width_factor, eps=self.eps)


def port_bit(model):
  """Hugging Face BitModel ('bottleneck' layers) weights → our parameter tree."""
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  conv = lambda k: {'kernel': sd[f'{k}.weight'].transpose(2, 3, 1, 0)}
  norm = lambda k: {'scale': sd[f'{k}.weight'], 'bias': sd[f'{k}.bias']}
  params = {'conv_root': conv('embedder.convolution'), 'gn_root': norm('embedder.norm')}
  for i, stage in enumerate(model.config.depths):
    block = params[f'block{i + 1}'] = {}
    for j in range(stage):
      p = f'encoder.stages.{i}.layers.{j}'
      unit = block[f'unit{j + 1}'] = {f'conv{n}': conv(f'{p}.conv{n}') for n in (1, 2, 3)}
      unit.update({f'gn{n}': norm(f'{p}.norm{n}') for n in (1, 2, 3)})
      if f'{p}.downsample.conv.weight' in sd:
        unit.update(conv_proj=conv(f'{p}.downsample.conv'), gn_proj=norm(f'{p}.downsample.norm'))
  return params


def test_bit_resnet_matches_hugging_face(num_layers=(2, 2)):  # Strided, projected, plain units.
  import transformers
  torch.manual_seed(0)
  width = 32  # width_factor 0.5: every width a multiple of GroupNorm's 32 groups.
  config = transformers.BitConfig(
      layer_type='bottleneck', global_padding='SAME', embedding_dynamic_padding=True,
      embedding_size=width, depths=list(num_layers),
      hidden_sizes=[4 * width * 2 ** i for i in range(len(num_layers))], num_groups=32)
  model = transformers.BitModel(config).eval()
  with torch.no_grad():  # GroupNorm scales and biases away from their initial 1 and 0.
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith('weight') else 0.0))
  images = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    want = model(torch.from_numpy(images)).last_hidden_state.numpy().transpose(0, 2, 3, 1)
  # Hugging Face's epsilons: GroupNorm 1e-5; weights divided by sqrt(var + 1e-8), which at
  # these weights' variances equals std + 0 to float32 precision.
  ours = Backbone(num_layers, 0.5, eps=(0.0, 1e-5))
  shapes = jax.eval_shape(ours.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']
  params = pretrained.fit(shapes, pretrained.flatten(port_bit(model)))  # Every name, exactly.
  nhwc = jnp.asarray(images.transpose(0, 2, 3, 1))
  got = ours.apply({'params': params}, nhwc)
  side = 64 // bit.stride_of(num_layers)
  assert got.shape == want.shape == (2, side, side, 4 * width * 2 ** (len(num_layers) - 1))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  # The published models' epsilons move the features by less than 1e-3.
  published = Backbone(num_layers, 0.5, eps=(bit.WS_EPS, bit.GN_EPS))
  np.testing.assert_allclose(published.apply({'params': params}, nhwc), want, atol=1e-3)


@pytest.mark.parametrize('variant', sorted(HYBRID_COUNTS))
def test_hybrid_size_and_published_names(variant):
  model = vit.VisionTransformer(num_classes=1000, **vit.decode_variant(variant))
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 384, 384, 3)))['params']
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) == HYBRID_COUNTS[variant]
  flat = {k: v.shape for k, v in pretrained.flatten(params).items()}
  assert flat['conv_root/kernel'] == (7, 7, 3, 64) and flat['gn_root/scale'] == (64,)
  assert flat['block3/unit9/conv3/kernel'] == (1, 1, 256, 1024)
  assert flat['block1/unit1/gn_proj/bias'] == (256,) and 'block4/unit1/conv1/kernel' not in flat
  assert flat['embedding/kernel'] == (1, 1, 1024, 768)  # 1x1 patches of the 1/16 feature map.
  assert flat['Transformer/posembed_input/pos_embedding'] == (1, 24 * 24 + 1, 768)


def test_hybrid_variants_and_their_errors():
  assert vit.decode_variant('R26+S/32') == dict(vit.WIDTHS['S'], patch_size=1,
                                                resnet_layers=(2, 2, 2, 2))
  with pytest.raises(errors.UserError, match=r"Unknown ViT variant 'R50\+B/8'; .* a hybrid "
                                             r"RESNET\+WIDTH/STRIDE with RESNET/STRIDE one of "
                                             r"\['R50/16', 'R50/32', 'R26/32'\]"):
    vit.decode_variant('R50+B/8')
  model = vit.VisionTransformer(num_classes=3, **vit.decode_variant('R26+mu/32'),
                                resnet_width_factor=0.5)
  with pytest.raises(errors.UserError, match='Image size 48x48 is not divisible by the patch '
                                             'size 1x1 on a ResNet feature map 1/32 of the image'):
    model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))


def test_hybrid_finetunes_at_a_new_resolution(tmp_path):
  # A two-stage hybrid (stride 8) keeps it quick; the published ones differ only in depth.
  model = vit.VisionTransformer(num_classes=3, **vit.WIDTHS['mu'], patch_size=1,
                                resnet_layers=(1, 1), resnet_width_factor=0.5)
  init = jax.jit(model.init)  # Jitted: op by op compiles far more.
  source = jax.device_get(init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params'])
  path = pretrained.save_npz(source, str(tmp_path / 'hybrid.npz'))
  target = init(jax.random.key(1), jnp.zeros((1, 48, 48, 3)))['params']
  out = pretrained.load_vit(target, pretrained.load_npz(path), model.token_grid(48, 48),
                            reset_head=False)
  assert out['Transformer']['posembed_input']['pos_embedding'].shape == (1, 37, 32)  # 6x6 + 1.
  np.testing.assert_array_equal(out['block2']['unit1']['conv2']['kernel'],
                                source['block2']['unit1']['conv2']['kernel'])
  logits, _ = jax.jit(model.apply)({'params': out}, jnp.ones((2, 48, 48, 3)))
  assert logits.shape == (2, 3) and np.isfinite(logits).all()
