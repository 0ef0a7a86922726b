"""ImageNet backbones for both detectors from a torchvision ResNet state dict (.safetensors or
.npz), through config.pretrained.path: the features equal PyTorch's, with the file's
BatchNorm statistics frozen in; a file that does not fit says what is missing."""
import re

import jax
import numpy as np
import pytest
import torch

from configs import deformable_detr as deformable_config
from configs import detr as detr_config
from helpers import perturbed
from helpers import training_batch
from vit_jax import compiling
from vit_jax import errors
from vit_jax import pretrained
from vit_jax import tasks
from vit_jax import train
from vit_jax.models import resnet


def hugging_face_resnet():
  """A random ResNet (basic blocks, widths 16-128: our 'resnet-tiny') with BatchNorm
  statistics away from 0 and 1. Hugging Face's ResNet computes what torchvision's does."""
  from transformers import ResNetConfig, ResNetModel
  torch.manual_seed(0)
  model = ResNetModel(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                   depths=[1, 1, 1, 1], layer_type='basic')).eval()
  return perturbed(model)


def torchvision_names(model):
  """Its state dict under torchvision's names (conv1, bn1, layer1.0.conv1, ..., downsample),
  with the ImageNet classifier torchvision files carry."""
  out = {}
  for key, value in model.state_dict().items():
    key = (key.replace('embedder.embedder.convolution', 'conv1')
           .replace('embedder.embedder.normalization', 'bn1')
           .replace('.shortcut.convolution', '.downsample.0')
           .replace('.shortcut.normalization', '.downsample.1'))
    if key.startswith('encoder.stages.'):
      _, _, stage, _, block, *rest = key.split('.')
      if rest[0] == 'layer':  # layer.{i}.convolution → conv{i+1}; normalization → bn{i+1}.
        kind = 'conv' if rest[2] == 'convolution' else 'bn'
        rest = [f'{kind}{int(rest[1]) + 1}'] + rest[3:]
      key = '.'.join([f'layer{int(stage) + 1}', block] + rest)
    out[key] = value.numpy()
  out['fc.weight'], out['fc.bias'] = np.zeros((1000, 128), np.float32), np.zeros(1000, np.float32)
  return out


@pytest.mark.parametrize('family,suffix', [('detr', '.safetensors'), ('deformable', '.npz')])
def test_torchvision_weights_give_pytorchs_features(tmp_path, family, suffix):
  from safetensors.numpy import save_file
  model = hugging_face_resnet()
  state = torchvision_names(model)
  path = str(tmp_path / f'resnet{suffix}')
  save_file(state, path) if suffix == '.safetensors' else np.savez(path, **state)
  config = (detr_config if family == 'detr' else deformable_config).get_config('tiny')
  config.update_from_flattened_dict({'pretrained.path': path, 'model.backbone_norm': 'frozen_bn',
                                     'model.frozen_stages': 1})
  params = jax.device_get(train.Trainer(config).initial_state()['params'])
  np.testing.assert_array_equal(params['backbone']['stage2_block0']['shortcut_bn']['var'],
                                state['layer2.0.downsample.1.running_var'])
  image = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  ours = resnet.ResNet(**resnet.decode_variant('resnet-tiny'), norm='frozen_bn').apply(
      {'params': params['backbone']}, image)
  with torch.no_grad():
    theirs = model(torch.tensor(image.transpose(0, 3, 1, 2)), output_hidden_states=True)
  for stage in range(1, 5):
    np.testing.assert_allclose(ours[f'stage{stage}'],
                               theirs.hidden_states[stage].numpy().transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-4, err_msg=f'stage{stage}')


def test_a_backbone_that_does_not_fit_names_what_is_missing(tmp_path):
  state = torchvision_names(hugging_face_resnet())
  path = str(tmp_path / 'resnet.npz')
  np.savez(path, **state)
  assert pretrained.is_torchvision_resnet(state)
  config = detr_config.get_config('tiny')
  for backbone, norm in (('resnet18', 'frozen_bn'), ('resnet-tiny', 'group_norm')):
    config.model.update(backbone_name=backbone, backbone_norm=norm)
    task = tasks.get_task(config.task)(config, str(tmp_path))
    params = jax.eval_shape(task.init, jax.random.key(0), task.dummy_batch(1))
    with pytest.raises(ValueError) as e:
      task.load_pretrained(params, path)
    message = str(e.value)
    if backbone == 'resnet18':
      assert f"torchvision ResNet '{path}' does not fit the resnet18 backbone." in message
      assert "'stage1_block1/conv0/kernel'" in message.split('unexpected')[0]  # Missing.
      assert ("mis-shaped: ['stage1_block0/bn0/bias: checkpoint (16,) vs model (64,)'"
              in message)
    else:
      assert message == (f"{path!r} is a torchvision ResNet, whose BatchNorm statistics need "
                         "model.backbone_norm='frozen_bn', not 'group_norm'.")


def test_an_attention_module_in_the_backbone_trains_and_starts_fresh_on_imagenet_weights(
    tmp_path):
  state = torchvision_names(hugging_face_resnet())
  path = str(tmp_path / 'resnet.npz')
  np.savez(path, **state)
  config = detr_config.get_config('tiny')
  config.update_from_flattened_dict({'model.backbone_attention': 'se',
                                     'model.backbone_attention_args.reduction': 4})
  task = tasks.get_task(config.task)(config, str(tmp_path))
  batch = training_batch(task, 2)
  params = compiling.run_once(task.init, jax.random.key(0), batch)
  grads = compiling.run_once(jax.grad(lambda p: task.loss_fn(p, batch, jax.random.key(1))[0]),
                             params)
  for block in ('stage1_block0', 'stage4_block0'):  # In every block, and trained.
    assert float(np.abs(grads['backbone'][block]['attention']['reduce']['kernel']).sum()) > 0
  # ImageNet weights load around it (frozen BatchNorm); the module keeps its initial values.
  config.model.update(backbone_name='resnet-tiny', backbone_norm='frozen_bn', frozen_stages=1)
  task = tasks.get_task(config.task)(config, str(tmp_path))
  fresh = compiling.run_once(task.init, jax.random.key(0), task.dummy_batch(1))
  loaded = task.load_pretrained(fresh, path)['backbone']
  np.testing.assert_array_equal(loaded['stage2_block0']['shortcut_bn']['var'],
                                state['layer2.0.downsample.1.running_var'])
  np.testing.assert_array_equal(loaded['stage2_block0']['attention']['reduce']['kernel'],
                                fresh['backbone']['stage2_block0']['attention']['reduce']['kernel'])

  # Deformable DETR's backbone takes the same option; modules with BatchNorm inside do not fit
  # a backbone without batch statistics.
  config = deformable_config.get_config('tiny')
  config.model.backbone_attention = 'danet'
  task = tasks.get_task(config.task)(config, str(tmp_path))
  shapes = jax.eval_shape(task.init, jax.random.key(0), task.dummy_batch(1))
  assert set(shapes['backbone']['stage4_attention']) >= {'alpha', 'beta', 'position_query'}
  config.model.backbone_attention = 'sk'
  with pytest.raises(errors.UserError, match=re.escape(
      "model.backbone_attention 'sk' has BatchNorm inside, whose statistics a backbone with "
      "norm 'group_norm' does not train; expected one of ['cbam', 'danet', 'eca', 'gc', 'se'].")):
    tasks.get_task(config.task)(config, str(tmp_path)).model


def test_a_config_saved_before_the_backbone_attention_keys_still_builds(tmp_path):
  import ml_collections
  saved = detr_config.get_config('tiny').to_dict()
  for key in ('backbone_attention', 'backbone_attention_args', 'backbone_attention_stages'):
    del saved['model'][key]
  task = tasks.get_task('detection')(ml_collections.ConfigDict(saved), str(tmp_path))
  assert task.model.backbone_attention is None and not task.model.backbone_attention_args
