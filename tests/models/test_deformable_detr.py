"""Deformable DETR against Hugging Face's DeformableDetrForObjectDetection with ported random
weights (its pure PyTorch attention path), on padded images: outputs of every decoder layer,
and each term of the focal set loss."""
import functools

import jax
import numpy as np
import pytest

from helpers import perturbed
from test_detr import Ported
from test_detr import padded_targets
from vit_jax.models import deformable_detr
from vit_jax.tasks import detection


def images(seed=0, size=128):
  """Two images on a 128x128 canvas, the second 112x96 (padded). Large enough that the
  coarsest level is 2x2: GroupNorm over a 1x1 map is 0/0, which PyTorch rounds differently."""
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  mask = np.ones((2, size, size), bool)
  mask[1, 96:] = mask[1, :, 112:] = False
  image[~mask] = 0.0
  return image, mask


def hf_model(box_refine, two_stage=False, seed=0):
  import torch
  from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig
  torch.manual_seed(seed)
  backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                          layer_type='basic', out_features=['stage2', 'stage3', 'stage4'])
  config = DeformableDetrConfig(
      use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
      num_queries=5, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_labels=3,
      num_feature_levels=4, encoder_n_points=2, decoder_n_points=2, dropout=0.0,
      auxiliary_loss=True, with_box_refine=box_refine, two_stage=two_stage,
      two_stage_num_proposals=5)
  model = DeformableDetrForObjectDetection(config).eval()
  return perturbed(model)


def port(model, box_refine, two_stage=False):
  w = Ported(model)
  t, dense, norm, mlp = w.t, w.dense, w.norm, w.mlp
  deform = lambda p: {n: dense(f'{p}.{n}') for n in ('sampling_offsets', 'attention_weights',
                                                       'value_proj', 'output_proj')}
  backbone = w.resnet()
  params = {'backbone': backbone, 'level_embed': t['model.level_embed']}
  if two_stage:
    params.update(enc_output=dense('model.enc_output'), enc_output_norm=norm('model.enc_output_norm'),
                  pos_trans=dense('model.pos_trans'), pos_trans_norm=norm('model.pos_trans_norm'))
  else:
    params.update(query_position_embeddings=t['model.query_position_embeddings.weight'],
                  reference_points=dense('model.reference_points'))
  for i in range(4):
    params[f'input_proj_{i}'] = dict(w.conv(f'model.input_proj.{i}.0'),
                                     bias=t[f'model.input_proj.{i}.0.bias'])
    params[f'input_proj_{i}_norm'] = norm(f'model.input_proj.{i}.1')
  e = 'model.encoder.layers.0'
  params['encoder_layer_0'] = {'self_attn': deform(f'{e}.self_attn'),
                               'self_attn_layer_norm': norm(f'{e}.self_attn_layer_norm'),
                               'mlp': mlp(f'{e}.mlp'),
                               'final_layer_norm': norm(f'{e}.final_layer_norm')}
  for i in range(2):
    d = f'model.decoder.layers.{i}'
    params[f'decoder_layer_{i}'] = {
        'self_attn': w.attention(f'{d}.self_attn'),
        'self_attn_layer_norm': norm(f'{d}.self_attn_layer_norm'),
        'encoder_attn': deform(f'{d}.encoder_attn'),
        'encoder_attn_layer_norm': norm(f'{d}.encoder_attn_layer_norm'),
        'mlp': mlp(f'{d}.mlp'), 'final_layer_norm': norm(f'{d}.final_layer_norm')}
  box = lambda i: {f'Dense_{j}': dense(f'bbox_embed.{i}.layers.{j}') for j in range(3)}
  if box_refine:
    for i in range(2 + two_stage):
      params[f'class_embed_{i}'], params[f'bbox_embed_{i}'] = dense(f'class_embed.{i}'), box(i)
  else:
    params['class_embed'], params['bbox_embed'] = dense('class_embed.0'), box(0)
  return params


@pytest.mark.parametrize('box_refine,two_stage', [(False, False), (True, False), (True, True)])
def test_parity_with_hugging_face_deformable_detr(box_refine, two_stage):
  import torch
  hf = hf_model(box_refine, two_stage)
  image, mask = images()
  with torch.no_grad():
    out = hf(pixel_values=torch.tensor(image.transpose(0, 3, 1, 2)),
             pixel_mask=torch.tensor(mask).long())
  model = deformable_detr.DeformableDETR(
      num_classes=3, num_queries=5, backbone_name='resnet-tiny', hidden_size=32, num_heads=4,
      num_encoder_layers=1, num_decoder_layers=2, mlp_dim=64, dropout_rate=0.0,
      encoder_points=2, decoder_points=2, box_refine=box_refine, two_stage=two_stage)
  params = port(hf, box_refine, two_stage)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), image, mask)['params'])
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  jax.tree.map(lambda a, b: np.testing.assert_equal(np.shape(a), b.shape), params, expected)
  outputs, aux = jax.jit(model.apply)({'params': params}, image, mask)  # Op by op: slower.
  assert np.asarray(aux['shapes']).tolist() == [[16, 16], [8, 8], [4, 4], [2, 2]]  # C3-C5, +1.
  np.testing.assert_allclose(outputs['logits'][-1], out.logits.numpy(), atol=1e-4)
  np.testing.assert_allclose(outputs['boxes'][-1], out.pred_boxes.numpy(), atol=1e-4)
  if two_stage:  # Every encoder pixel's proposal.
    np.testing.assert_allclose(aux['proposals']['logits'][0], out.enc_outputs_class.numpy(),
                               atol=1e-4)
    np.testing.assert_allclose(aux['proposals']['boxes'][0],
                               out.enc_outputs_coord_logits.sigmoid().numpy(), atol=1e-4)
  # Every decoder layer (the auxiliary losses' inputs): its heads on its hidden state, from
  # its reference points (refined ones after the first layer with box refinement).
  references = [out.init_reference_points] + [out.intermediate_reference_points[:, i]
                                              for i in range(1)]
  for layer, reference in enumerate(references):
    np.testing.assert_allclose(aux['reference'][layer], reference.numpy(), atol=1e-5)
    with torch.no_grad():
      hidden = out.intermediate_hidden_states[:, layer]
      delta = hf.bbox_embed[layer](hidden)
      logit = torch.log(reference.clamp(1e-5, 1) / (1 - reference).clamp(1e-5, 1))
      delta[..., :reference.shape[-1]] += logit
      np.testing.assert_allclose(outputs['logits'][layer], hf.class_embed[layer](hidden).numpy(),
                                 atol=1e-4)
      np.testing.assert_allclose(outputs['boxes'][layer], delta.sigmoid().numpy(), atol=1e-4)


def test_focal_set_loss_matches_hugging_face():
  import torch
  hf = hf_model(box_refine=False)
  hf.config.class_cost = 2  # The paper's matching costs (A.3), as ours.
  image, mask = images()
  targets, labels = padded_targets()
  with torch.no_grad():
    out = hf(pixel_values=torch.tensor(image.transpose(0, 3, 1, 2)),
             pixel_mask=torch.tensor(mask).long(), labels=labels)
  model = deformable_detr.DeformableDETR(
      num_classes=3, num_queries=5, backbone_name='resnet-tiny', hidden_size=32, num_heads=4,
      num_encoder_layers=1, num_decoder_layers=2, mlp_dim=64, dropout_rate=0.0,
      encoder_points=2, decoder_points=2)
  outputs, _ = jax.jit(model.apply)({'params': port(hf, False)}, image, mask)  # Op by op: slower.
  criteria = {matcher: jax.jit(functools.partial(  # One compile per matcher, for both layers.
      detection.set_criterion, num_classes=3, class_weight=2.0, matcher=matcher,
      focal=(0.25, 2.0))) for matcher in ('scipy', 'device')}
  for layer, suffix in ((1, ''), (0, '_0')):  # The last layer, then the auxiliary one.
    for matcher, criterion in criteria.items():
      _, terms = criterion(jax.tree.map(lambda x: x[layer:layer + 1], outputs), targets)
      for ours, theirs in (('loss_ce', 'loss_ce'), ('loss_bbox', 'loss_bbox'),
                           ('loss_giou', 'loss_giou')):
        np.testing.assert_allclose(terms[ours], out.loss_dict[theirs + suffix].item(),
                                   rtol=1e-4, err_msg=f'{theirs}{suffix}, {matcher}')
