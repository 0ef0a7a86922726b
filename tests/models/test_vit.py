import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import vit

# Parameter counts at 224x224 with 1,000 classes (no representation layer); they equal the
# published counts (e.g. ViT-B/16: 86.6M, timm's vit_base_patch16_224: 86,567,656).
PARAM_COUNTS = {
    'Ti/16': 5_717_416,
    'S/16': 22_050_664,
    'B/16': 86_567_656,
    'B/32': 88_224_232,
    'L/16': 304_326_632,
    'H/14': 632_045_800,
}

PUBLISHED_BLOCK_NAMES = {
    'LayerNorm_0/bias', 'LayerNorm_0/scale', 'LayerNorm_2/bias', 'LayerNorm_2/scale',
    'MlpBlock_3/Dense_0/bias', 'MlpBlock_3/Dense_0/kernel', 'MlpBlock_3/Dense_1/bias',
    'MlpBlock_3/Dense_1/kernel', 'MultiHeadDotProductAttention_1/key/bias',
    'MultiHeadDotProductAttention_1/key/kernel', 'MultiHeadDotProductAttention_1/out/bias',
    'MultiHeadDotProductAttention_1/out/kernel', 'MultiHeadDotProductAttention_1/query/bias',
    'MultiHeadDotProductAttention_1/query/kernel', 'MultiHeadDotProductAttention_1/value/bias',
    'MultiHeadDotProductAttention_1/value/kernel'}


def abstract_params(variant, image_size=224, **kw):
  model = vit.VisionTransformer(num_classes=1000, **vit.decode_variant(variant), **kw)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)['params']


@pytest.mark.parametrize('variant', sorted(PARAM_COUNTS))
def test_parameter_counts(variant):
  params = abstract_params(variant)
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) == PARAM_COUNTS[variant]


def test_parameter_names_and_shapes_match_published_checkpoints():
  flat = {'/'.join(k): v.shape for k, v in
          flax.traverse_util.flatten_dict(abstract_params('B/16', representation_size=768)).items()}
  assert flat['embedding/kernel'] == (16, 16, 3, 768)
  assert flat['cls'] == (1, 1, 768)
  assert flat['Transformer/posembed_input/pos_embedding'] == (1, 197, 768)
  assert flat['Transformer/encoderblock_11/MultiHeadDotProductAttention_1/query/kernel'] == (
      768, 12, 64)
  assert flat['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel'] == (
      12, 64, 768)
  assert flat['pre_logits/kernel'] == (768, 768) and flat['head/kernel'] == (768, 1000)
  block = {k.split('/', 2)[2] for k in flat if k.startswith('Transformer/encoderblock_0/')}
  assert block == PUBLISHED_BLOCK_NAMES
  assert {k for k in flat if not k.startswith('Transformer/encoderblock_')} == {
      'embedding/kernel', 'embedding/bias', 'cls', 'Transformer/posembed_input/pos_embedding',
      'Transformer/encoder_norm/scale', 'Transformer/encoder_norm/bias', 'pre_logits/kernel',
      'pre_logits/bias', 'head/kernel', 'head/bias'}


def test_gap_classifier_has_no_class_token_and_non_square_images_work():
  model = vit.VisionTransformer(num_classes=3, **vit.decode_variant('mu/4'), classifier='gap')
  x = jnp.ones((2, 8, 12, 3))
  params = model.init(jax.random.key(0), x)
  logits, aux = model.apply(params, x)
  assert 'cls' not in params['params'] and logits.shape == (2, 3)
  assert aux['grid'] == (2, 3) and aux['tokens'].shape == (2, 6, 32)


def test_clear_errors():
  with pytest.raises(ValueError, match=r"Unknown ViT variant 'X/16'.*'Ti', 'S', 'B'"):
    vit.decode_variant('X/16')
  model = vit.VisionTransformer(num_classes=3, **vit.decode_variant('mu/4'))
  with pytest.raises(ValueError, match='Image size 10x8 is not divisible by the patch size 4x4'):
    model.init(jax.random.key(0), jnp.ones((1, 10, 8, 3)))


def port_hf_vit(hf_state, num_layers, heads, prefix='vit'):
  """Hugging Face ViTForImageClassification (or, prefix='deit',
  DeiTForImageClassificationWithTeacher) weights → our (published-layout) params."""
  t = {k.replace(f'{prefix}.', 'vit.', 1): v.detach().numpy() for k, v in hf_state.items()}
  d = t['vit.embeddings.cls_token'].shape[-1]
  dense = lambda p: {'kernel': t[f'{p}.weight'].T, 'bias': t[f'{p}.bias']}
  norm = lambda p: {'scale': t[f'{p}.weight'], 'bias': t[f'{p}.bias']}
  heads_in = lambda p: {'kernel': t[f'{p}.weight'].T.reshape(d, heads, -1),
                        'bias': t[f'{p}.bias'].reshape(heads, -1)}
  params = {
      'embedding': {'kernel': t['vit.embeddings.patch_embeddings.projection.weight'].transpose(
          2, 3, 1, 0), 'bias': t['vit.embeddings.patch_embeddings.projection.bias']},
      'cls': t['vit.embeddings.cls_token'],
      'Transformer': {'posembed_input': {'pos_embedding': t['vit.embeddings.position_embeddings']},
                      'encoder_norm': norm('vit.layernorm')},
  }
  if prefix == 'deit':
    params.update(dist=t['vit.embeddings.distillation_token'], head=dense('cls_classifier'),
                  head_dist=dense('distillation_classifier'))
  else:
    params['head'] = dense('classifier')
  for i in range(num_layers):  # transformers 5 naming.
    p = f'vit.layers.{i}'
    out = t[f'{p}.attention.o_proj.weight'].T.reshape(heads, -1, d)
    params['Transformer'][f'encoderblock_{i}'] = {
        'LayerNorm_0': norm(f'{p}.layernorm_before'),
        'LayerNorm_2': norm(f'{p}.layernorm_after'),
        'MultiHeadDotProductAttention_1': {
            'query': heads_in(f'{p}.attention.q_proj'),
            'key': heads_in(f'{p}.attention.k_proj'),
            'value': heads_in(f'{p}.attention.v_proj'),
            'out': {'kernel': out, 'bias': t[f'{p}.attention.o_proj.bias']}},
        'MlpBlock_3': {'Dense_0': dense(f'{p}.mlp.fc1'), 'Dense_1': dense(f'{p}.mlp.fc2')}}
  return params


def hf_reference(config_name, model_name, num_layers):
  """(a Hugging Face ViT-like model with random weights everywhere, not the zero/one
  initialisations; our ported params and model; images; the reference's output)."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  cfg = getattr(transformers, config_name)(
      hidden_size=48, num_hidden_layers=num_layers, num_attention_heads=3, intermediate_size=96,
      image_size=32, patch_size=8, num_channels=3, num_labels=7, layer_norm_eps=1e-6,
      hidden_act='gelu', qkv_bias=True)
  reference = getattr(transformers, model_name)(cfg).eval()
  with torch.no_grad():
    for p in reference.parameters():
      p.normal_(0.0, 0.2)
  images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    out = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  return reference.state_dict(), images, out


def ported(model, params, images):
  reference_tree = jax.tree.map(np.shape, model.init(jax.random.key(0), images)['params'])
  assert jax.tree.map(np.shape, params) == reference_tree
  return model.apply({'params': params}, images)


def test_parity_with_hugging_face_vit():
  state, images, out = hf_reference('ViTConfig', 'ViTForImageClassification', 3)
  model = vit.VisionTransformer(num_classes=7, patch_size=8, hidden_size=48, num_layers=3,
                                num_heads=3, mlp_dim=96, activation='gelu')
  logits, _ = ported(model, port_hf_vit(state, 3, 3), images)
  assert np.abs(np.asarray(logits) - out.logits.numpy()).max() < 1e-4


def test_deit_equals_hugging_face_with_teacher_heads():
  import torch
  state, images, out = hf_reference('DeiTConfig', 'DeiTForImageClassificationWithTeacher', 2)
  model = vit.VisionTransformer(num_classes=7, patch_size=8, hidden_size=48, num_layers=2,
                                num_heads=3, mlp_dim=96, distillation=True)
  logits, aux = ported(model, port_hf_vit(state, 2, 3, prefix='deit'), images)
  assert aux['tokens'].shape == (4, 16 + 2, 48)
  for ours, theirs in ((aux['cls_logits'], out.cls_logits),
                       (aux['distillation_logits'], out.distillation_logits)):
    assert np.abs(np.asarray(ours) - theirs.numpy()).max() < 1e-4
  # The prediction averages the two heads' probabilities (DeiT §5.1).
  probs = (torch.softmax(out.cls_logits, -1) + torch.softmax(out.distillation_logits, -1)) / 2
  np.testing.assert_allclose(np.exp(np.asarray(logits)), probs.numpy(), atol=1e-5)
