"""DETR's panoptic head against Hugging Face's DetrForSegmentation (ported random weights):
the same mask logits and the same loss; and the post-processing against hand-made cases."""
import jax
import numpy as np
import pytest

import test_detr
from vit_jax.models import detr_panoptic
from vit_jax.tasks import detection
from vit_jax.tasks import panoptic


def hf_detr_panoptic(seed=0):
  import torch
  from transformers import DetrConfig, DetrForSegmentation, ResNetConfig
  torch.manual_seed(seed)
  backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                          layer_type='basic',
                          out_features=['stage1', 'stage2', 'stage3', 'stage4'])
  config = DetrConfig(use_timm_backbone=False, backbone_config=backbone,
                      use_pretrained_backbone=False, num_queries=5, d_model=32,
                      encoder_layers=1, decoder_layers=2, encoder_attention_heads=8,
                      decoder_attention_heads=8, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      num_labels=3, auxiliary_loss=False, dropout=0.0)
  model = DetrForSegmentation(config).eval()
  with torch.no_grad():  # Norm scales and biases away from 1 and 0, frozen BN statistics too.
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
      if name.startswith(('mask_head', 'bbox_attention')) or 'running' in name:
        tensor.copy_(tensor + torch.randn_like(tensor) * 0.1)
  return model


def port_hf_detr_panoptic(model):
  """Hugging Face DetrForSegmentation state → our PanopticDETR parameter tree."""
  params = test_detr.port_hf_detr(model.detr, heads=8)
  w = test_detr.Ported(model, heads=8)
  t = w.t
  block = lambda p: {'conv': {'kernel': t[f'{p}.conv.weight'].transpose(2, 3, 1, 0),
                              'bias': t[f'{p}.conv.bias']}, 'norm': w.norm(f'{p}.norm')}
  conv = lambda p: {'kernel': t[f'{p}.weight'].transpose(2, 3, 1, 0), 'bias': t[f'{p}.bias']}
  m = 'mask_head'
  head = {'conv1_kernel': t[f'{m}.conv1.conv.weight'].transpose(2, 3, 1, 0),
          'conv1_bias': t[f'{m}.conv1.conv.bias'], 'conv1_norm': w.norm(f'{m}.conv1.norm'),
          'conv2': block(f'{m}.conv2'), 'out': conv(f'{m}.output_conv')}
  for i in range(3):
    head[f'adapter{i}'] = conv(f'{m}.fpn_stages.{i}.fpn_adapter')
    head[f'fpn{i}'] = block(f'{m}.fpn_stages.{i}.refine')
  split = lambda n: {'kernel': t[f'bbox_attention.{n}_proj.weight'].T.reshape(32, 8, 4),
                     'bias': t[f'bbox_attention.{n}_proj.bias'].reshape(8, 4)}
  return dict(params, mask_head=head, bbox_attention={'query': split('q'), 'key': split('k')})


def ours(**kw):
  return detr_panoptic.PanopticDETR(num_classes=3, num_queries=5, backbone_name='resnet-tiny',
                                    hidden_size=32, num_heads=8, num_encoder_layers=1,
                                    num_decoder_layers=2, mlp_dim=64, dropout_rate=0.0, **kw)


def target_masks():
  """Masks of padded_targets' boxes (rectangles, one circle) on the 64x64 canvas."""
  masks = np.zeros((2, 3, 64, 64), bool)
  masks[0, 0, 20:40, 10:25] = True
  masks[1, 0, 26:38, 20:46] = True
  y, x = np.mgrid[:64, :64]
  masks[1, 1] = (y - 45) ** 2 + (x - 13) ** 2 < 16
  return masks


def test_parity_with_hugging_face_detr_for_segmentation():
  """Mask logits (padded second image included) and the whole loss: set loss + focal +
  DICE on the matched masks, upsampled bilinearly to the targets' size."""
  import torch
  hf = hf_detr_panoptic()
  image, mask = test_detr.images()
  targets, labels = test_detr.padded_targets()
  targets['masks'] = target_masks()
  for i, label in enumerate(labels):
    label['masks'] = torch.tensor(targets['masks'][i][targets['valid'][i]]).float()
  out, outputs = test_detr.both_forward(hf, ours(), port_hf_detr_panoptic(hf), image, mask,
                                        labels)
  assert outputs['masks'].shape == (2, 5, 16, 16)
  assert np.abs(out.pred_masks.numpy()).std() > 0.1
  np.testing.assert_allclose(outputs['masks'], out.pred_masks.numpy(), atol=1e-4)
  np.testing.assert_allclose(outputs['logits'][-1], out.logits.numpy(), atol=1e-4)

  @jax.jit  # Op by op, these losses compile about 170 small programs.
  def losses(outputs, targets):
    t = detection.matched_terms(jax.tree.map(lambda x: x[-1:], {
        k: outputs[k] for k in ('logits', 'boxes')}), targets, num_classes=3)
    return (detection.set_loss(t)[0],
            *panoptic.mask_losses(panoptic.matched(outputs['masks'], t['assign']),
                                  targets['masks'], targets['valid']))

  loss, focal, dice = losses(outputs, targets)
  num_boxes = targets['valid'].sum()
  np.testing.assert_allclose(focal / num_boxes, out.loss_dict['loss_mask'].item(), rtol=1e-4)
  np.testing.assert_allclose(dice / num_boxes, out.loss_dict['loss_dice'].item(), rtol=1e-4)
  np.testing.assert_allclose(loss + (focal + dice) / num_boxes, out.loss.item(), rtol=1e-4)


def test_mask_head_needs_channels_divisible_by_eight():
  model = ours().clone(num_heads=4)
  image, mask = test_detr.images()
  with pytest.raises(Exception, match=r'hidden_size \+ num_heads = 32 \+ 4 = 36 divisible by 8'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), image, mask))
