import jax
import numpy as np
import pytest

from vit_jax.layers import posemb
from vit_jax.models import detr
from vit_jax.models import resnet
from vit_jax.tasks import detection


def hf_detr(num_queries=5, num_labels=3, seed=0):
  import torch
  from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
  torch.manual_seed(seed)
  backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                          layer_type='basic', out_features=['stage4'])
  config = DetrConfig(use_timm_backbone=False, backbone_config=backbone,
                      use_pretrained_backbone=False, num_queries=num_queries, d_model=32,
                      encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      num_labels=num_labels, auxiliary_loss=False, dropout=0.0)
  model = DetrForObjectDetection(config).eval()
  with torch.no_grad():  # Non-trivial frozen statistics, so the BatchNorm port is tested.
    for name, buffer in model.named_buffers():
      if 'running_mean' in name or name.endswith('bias'):
        buffer.copy_(torch.randn_like(buffer) * 0.1)
      elif 'running_var' in name or name.endswith('weight'):
        buffer.copy_(torch.rand_like(buffer) + 0.5)
  return model


class Ported:
  """A Hugging Face model's state as pieces of our parameter tree (PyTorch layouts turned
  into Flax's)."""

  def __init__(self, model, heads=4):
    self.t, self.heads = {k: v.detach().numpy() for k, v in model.state_dict().items()}, heads

  def conv(self, p):
    return {'kernel': self.t[f'{p}.weight'].transpose(2, 3, 1, 0)}

  def bn(self, p):
    t = self.t
    return {'scale': t[f'{p}.weight'], 'bias': t[f'{p}.bias'], 'mean': t[f'{p}.running_mean'],
            'var': t[f'{p}.running_var']}

  def dense(self, p):
    return {'kernel': self.t[f'{p}.weight'].T, 'bias': self.t[f'{p}.bias']}

  def norm(self, p):
    return {'scale': self.t[f'{p}.weight'], 'bias': self.t[f'{p}.bias']}

  def mlp(self, p):
    return {'Dense_0': self.dense(f'{p}.fc1'), 'Dense_1': self.dense(f'{p}.fc2')}

  def attention(self, p):
    t, heads = self.t, self.heads
    d = t[f'{p}.q_proj.weight'].shape[0]
    split = lambda n: {'kernel': t[f'{p}.{n}_proj.weight'].T.reshape(d, heads, -1),
                       'bias': t[f'{p}.{n}_proj.bias'].reshape(heads, -1)}
    return {'query': split('q'), 'key': split('k'), 'value': split('v'),
            'out': {'kernel': t[f'{p}.o_proj.weight'].T.reshape(heads, -1, d),
                    'bias': t[f'{p}.o_proj.bias']}}

  def resnet(self, b='model.backbone.model'):
    """Hugging Face's ResNet backbone (one basic block per stage) → our ResNet."""
    backbone = {'stem_conv': self.conv(f'{b}.embedder.embedder.convolution'),
                'stem_bn': self.bn(f'{b}.embedder.embedder.normalization')}
    for s in range(4):
      p = f'{b}.encoder.stages.{s}.layers.0'
      block = {f'conv{i}': self.conv(f'{p}.layer.{i}.convolution') for i in range(2)}
      block.update({f'bn{i}': self.bn(f'{p}.layer.{i}.normalization') for i in range(2)})
      if f'{p}.shortcut.convolution.weight' in self.t:
        block.update(shortcut_conv=self.conv(f'{p}.shortcut.convolution'),
                     shortcut_bn=self.bn(f'{p}.shortcut.normalization'))
      backbone[f'stage{s + 1}_block0'] = block
    return backbone


def port_hf_detr(model, heads=4):
  """Hugging Face DetrForObjectDetection state → our parameter tree."""
  w = Ported(model, heads)
  t, dense, norm, mlp, attention = w.t, w.dense, w.norm, w.mlp, w.attention
  backbone = w.resnet()
  e = 'model.encoder.layers.0'
  encoder = {'encoderblock_0': {'MultiHeadDotProductAttention_1': attention(f'{e}.self_attn'),
                                'LayerNorm_0': norm(f'{e}.self_attn_layer_norm'),
                                'MlpBlock_3': mlp(f'{e}.mlp'),
                                'LayerNorm_2': norm(f'{e}.final_layer_norm')}}
  decoder = {'decoder_norm': norm('model.decoder.layernorm')}
  for i in range(2):
    d = f'model.decoder.layers.{i}'
    decoder[f'decoderblock_{i}'] = {
        'SelfAttention': attention(f'{d}.self_attn'), 'LayerNorm_0': norm(f'{d}.self_attn_layer_norm'),
        'CrossAttention': attention(f'{d}.encoder_attn'),
        'LayerNorm_1': norm(f'{d}.encoder_attn_layer_norm'), 'MlpBlock': mlp(f'{d}.mlp'),
        'LayerNorm_2': norm(f'{d}.final_layer_norm')}
  return {'backbone': backbone,
          'input_proj': {'kernel': t['model.input_projection.weight'].transpose(2, 3, 1, 0),
                         'bias': t['model.input_projection.bias']},
          'query_embed': t['model.query_position_embeddings.weight'],
          'encoder': encoder, 'decoder': decoder,
          'class_head': dense('class_labels_classifier'),
          'box_head': {f'Dense_{i}': dense(f'bbox_predictor.layers.{i}') for i in range(3)}}


def images(seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
  mask = np.ones((2, 64, 64), bool)
  mask[1, 48:] = mask[1, :, 56:] = False  # Image 2 is 56x48 on the 64x64 canvas.
  image[~mask] = 0.0
  return image, mask


def ours():
  return detr.DETR(num_classes=3, num_queries=5, backbone_name='resnet-tiny', hidden_size=32,
                   num_heads=4, num_encoder_layers=1, num_decoder_layers=2, mlp_dim=64,
                   dropout_rate=0.0)


def padded_targets():
  """(Two images' targets padded to 3 boxes, as our batches hold them; the same as Hugging
  Face's per-image label dicts)."""
  import torch
  targets = {'labels': np.array([[2, 0, 0], [1, 2, 0]], np.int32),
             'boxes': np.array([[[0.3, 0.4, 0.2, 0.3], [0, 0, 0, 0], [0, 0, 0, 0]],
                                [[0.5, 0.5, 0.4, 0.2], [0.2, 0.7, 0.1, 0.1], [0, 0, 0, 0]]],
                               np.float32),
             'valid': np.array([[True, False, False], [True, True, False]])}
  labels = [{'class_labels': torch.tensor(targets['labels'][i][targets['valid'][i]]).long(),
             'boxes': torch.tensor(targets['boxes'][i][targets['valid'][i]])} for i in range(2)]
  return targets, labels


def both_forward(hf, model, params, image, mask, labels):
  """Hugging Face's outputs (with its loss) and ours on the same images, after checking that
  the ported parameters have our tree's structure and shapes."""
  import torch
  with torch.no_grad():
    out = hf(pixel_values=torch.tensor(image.transpose(0, 3, 1, 2)),
             pixel_mask=torch.tensor(mask).long(), labels=labels)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), image, mask)['params'])
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), params, expected)
  return out, jax.jit(model.apply)({'params': params}, image, mask)[0]  # Op by op: slower.


def test_parity_with_hugging_face_detr_outputs_and_loss():
  hf = hf_detr()
  image, mask = images()
  targets, labels = padded_targets()
  out, outputs = both_forward(hf, ours(), port_hf_detr(hf), image, mask, labels)
  np.testing.assert_allclose(outputs['logits'][-1], out.logits.numpy(), atol=1e-4)
  np.testing.assert_allclose(outputs['boxes'][-1], out.pred_boxes.numpy(), atol=1e-4)
  for matcher in ('scipy', 'device'):
    criterion = jax.jit(lambda o, t: detection.set_criterion(o, t, num_classes=3,
                                                             matcher=matcher)[0])
    loss = criterion(jax.tree.map(lambda x: x[-1:], outputs), targets)
    np.testing.assert_allclose(loss, out.loss.item(), rtol=1e-4)


def test_more_padding_gives_the_same_predictions():
  """Positions are normalised to the unpadded extent and padded keys are masked, so padding
  the feature map (with any values) changes no prediction. (The backbone's convolutions near
  the image border do see the padding, in the reference DETR as here.)"""
  model = ours()
  image, mask = images(1)
  params = jax.jit(model.init)(jax.random.key(0), image, mask)['params']
  detect = jax.jit(lambda *args: model.apply({'params': params}, *args, method=model.detect))
  features = np.random.default_rng(2).normal(size=(2, 3, 4, 128)).astype(np.float32)
  feature_mask = np.ones((2, 3, 4), bool)
  feature_mask[1, 2:] = feature_mask[1, :, 3:] = False
  small, _ = detect(features, feature_mask)
  big = np.random.default_rng(3).normal(size=(2, 5, 7, 128)).astype(np.float32) * 10
  big[:, :3, :4] = features
  big_mask = np.zeros((2, 5, 7), bool)
  big_mask[:, :3, :4] = feature_mask
  large, _ = detect(big, big_mask)
  np.testing.assert_allclose(small['logits'], large['logits'], atol=1e-4)
  np.testing.assert_allclose(small['boxes'], large['boxes'], atol=1e-5)


def layer_norm(p, x):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * p['scale'] + p['bias']


def attend(p, q, k, v, key_valid):
  """Multi-head attention of one example, float64, keys where key_valid."""
  proj = lambda x, n: np.einsum('ld,dhk->hlk', x, p[n]['kernel']) + p[n]['bias'][:, None]
  q, k, v = proj(q, 'query'), proj(k, 'key'), proj(v, 'value')
  scores = np.einsum('hqk,hsk->hqs', q, k) / np.sqrt(q.shape[-1])
  scores = np.where(key_valid, scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('hqs,hsk,hkd->qd', weights, v, p['out']['kernel']) + p['out']['bias']


def mlp(p, x):
  dense = lambda q, x: x @ q['kernel'] + q['bias']
  return dense(p['Dense_1'], np.maximum(dense(p['Dense_0'], x), 0))


def test_pre_norm_detr_is_the_official_forward_pre():
  """norm_first=True against the official code's `normalize_before` path, written out in
  float64: every sublayer x + f(norm(x)), positions added to the normalised queries and
  keys, a final encoder norm, and the decoder's norm on every layer's output."""
  model = detr.DETR(num_classes=3, num_queries=5, backbone_name='resnet-tiny', hidden_size=32,
                    num_heads=4, num_encoder_layers=2, num_decoder_layers=2, mlp_dim=64,
                    dropout_rate=0.0, norm_first=True)
  image, mask = images(1)
  params = jax.device_get(jax.jit(model.init)(jax.random.key(0), image, mask)['params'])
  params = jax.tree.map(lambda a: np.asarray(a, np.float64) + np.random.default_rng(a.size).normal(
      size=a.shape) * 0.1, params)  # LayerNorms and biases away from 1 and 0.
  features = np.random.default_rng(2).normal(size=(2, 3, 4, 128)).astype(np.float32)
  feature_mask = np.ones((2, 3, 4), bool)
  feature_mask[1, 2:] = feature_mask[1, :, 3:] = False
  outputs, _ = jax.jit(lambda *args: model.apply(*args, method=model.detect))(
      {'params': params}, features, feature_mask)
  pos = np.asarray(posemb.sine_2d(feature_mask, 16), np.float64).reshape(2, 12, 32)
  enc, dec = params['encoder'], params['decoder']
  for b in range(2):
    valid = feature_mask[b].reshape(-1)
    x = features[b].reshape(12, 128) @ params['input_proj']['kernel'][0, 0] + params[
        'input_proj']['bias']
    for i in range(2):
      p = enc[f'encoderblock_{i}']
      y = layer_norm(p['LayerNorm_0'], x)
      x = x + attend(p['MultiHeadDotProductAttention_1'], y + pos[b], y + pos[b], y, valid)
      x = x + mlp(p['MlpBlock_3'], layer_norm(p['LayerNorm_2'], x))
    memory = layer_norm(enc['encoder_norm'], x)
    query_pos, t = params['query_embed'], np.zeros((5, 32))
    for i in range(2):
      p = dec[f'decoderblock_{i}']
      y = layer_norm(p['LayerNorm_0'], t)
      t = t + attend(p['SelfAttention'], y + query_pos, y + query_pos, y, np.ones(5, bool))
      y = layer_norm(p['LayerNorm_1'], t)
      t = t + attend(p['CrossAttention'], y + query_pos, memory + pos[b], memory, valid)
      t = t + mlp(p['MlpBlock'], layer_norm(p['LayerNorm_2'], t))
      hidden = layer_norm(dec['decoder_norm'], t)
      logits = hidden @ params['class_head']['kernel'] + params['class_head']['bias']
      np.testing.assert_allclose(outputs['logits'][i, b], logits, atol=1e-4)


def test_backbone_variants_and_dilation():
  x = np.zeros((1, 64, 64, 3), np.float32)
  for name, channels in (('resnet18', 512), ('resnet50', 2048)):
    net = resnet.ResNet(**resnet.decode_variant(name))
    shapes = jax.eval_shape(lambda: net.apply(net.init(jax.random.key(0), x), x))
    assert shapes['stage1'].shape == (1, 16, 16, channels // (8 if name == 'resnet18' else 8))
    assert shapes['stage4'].shape == (1, 2, 2, channels)
  net = resnet.ResNet(**resnet.decode_variant('resnet50'), dilation=True)
  shapes = jax.eval_shape(lambda: net.apply(net.init(jax.random.key(0), x), x))
  assert shapes['stage4'].shape == (1, 4, 4, 2048)  # DC5: stride 16.
  net = resnet.ResNet(**resnet.decode_variant('resnet50'), dilation=2)
  variables = jax.eval_shape(net.init, jax.random.key(0), x)
  shapes = jax.eval_shape(net.apply, variables, x)
  assert shapes['stage3'].shape == (1, 8, 8, 1024) and shapes['stage4'].shape == (1, 8, 8, 2048)
  # torchvision's replace_stride_with_dilation=[False, True, True]: the 3x3 convolutions of
  # stage 3 at rate 2 (its first block at 1), of stage 4 at 4 (its first block at 2).
  rates = [e.params['rhs_dilation'][0] for e in jax.make_jaxpr(net.apply)(variables, x).eqns
           if e.primitive.name == 'conv_general_dilated' and e.invars[1].aval.shape[:2] == (3, 3)]
  assert rates == [1] * (3 + 4) + [1] + [2] * 5 + [2] + [4] * 2
  count = lambda tree: sum(np.prod(p.shape) for p in jax.tree.leaves(tree))
  params = jax.eval_shape(lambda: resnet.ResNet(**resnet.decode_variant('resnet50')).init(
      jax.random.key(0), x))['params']
  # torchvision's ResNet-50 without its fc layer: 23,508,032 weights + BatchNorm statistics.
  bn_stats = sum(np.prod(p.shape) for path, p in jax.tree_util.tree_leaves_with_path(params)
                 if str(path[-1].key) in ('mean', 'var'))
  assert count(params) - bn_stats == 23_508_032
  with pytest.raises(ValueError, match="Unknown backbone 'resnet5'; expected one of"):
    resnet.decode_variant('resnet5')


def test_detr_r50_has_hugging_face_parameter_count():
  """configs/detr.py:r50 builds the paper's DETR-R50 (91 COCO classes): same number of
  trainable weights as Hugging Face's (ours also holds the frozen BatchNorm statistics)."""
  from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
  from configs import detr as detr_config
  m = dict(detr_config.get_config('r50').model)
  del m['num_classes']
  model = detr.DETR(num_classes=91, **m)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 3))))
  leaves = jax.tree_util.tree_leaves_with_path(params['params'])
  ours_count = sum(np.prod(p.shape) for path, p in leaves
                   if str(path[-1].key) not in ('mean', 'var'))
  hf = DetrForObjectDetection(DetrConfig(
      use_timm_backbone=False, use_pretrained_backbone=False, num_labels=91,
      backbone_config=ResNetConfig(layer_type='bottleneck', depths=[3, 4, 6, 3],
                                   out_features=['stage4'])))
  hf_count = sum(p.numel() for p in hf.parameters()) + sum(
      b.numel() for n, b in hf.named_buffers() if n.endswith(('.weight', '.bias')))
  assert ours_count == hf_count == 41_577_888  # The paper: "41M".


def test_group_detr_groups_do_not_see_each_other_and_inference_is_plain_detr():
  """Group DETR: in training each group of queries is a plain DETR query set on its own (the
  self-attention mask keeps groups apart); inference reads the first group only."""
  grouped = ours().clone(query_groups=3)
  image, mask = images(1)
  params = jax.jit(grouped.init)(jax.random.key(0), image, mask)['params']
  assert params['group_queries'].shape == (2, 5, 32)
  plain_params = {k: v for k, v in params.items() if k != 'group_queries'}
  plain = ours()
  runner = lambda model, train: jax.jit(  # Op by op, a DETR compiles ~250 small programs.
      lambda p: model.apply({'params': p}, image, mask, train=train)[0])
  training = runner(grouped, True)(params)
  assert training['logits'].shape == (2, 2, 15, 4)  # [L, B, G·Q, C+1]
  plain_training = runner(plain, True)
  for g, queries in enumerate([params['query_embed'], *params['group_queries']]):
    alone = plain_training(dict(plain_params, query_embed=queries))
    for k in ('logits', 'boxes'):
      np.testing.assert_allclose(training[k][:, :, 5 * g:5 * (g + 1)], alone[k], atol=1e-5)
  inference, reference = runner(grouped, False)(params), runner(plain, False)(plain_params)
  for k in ('logits', 'boxes'):
    np.testing.assert_allclose(inference[k], reference[k], atol=1e-6)
  with pytest.raises(Exception, match=r'model.query_groups=0; expected 1 \(plain DETR\)'):
    ours().clone(query_groups=0).init(
        jax.random.key(0), image, mask)
