"""The attention modules inside the ResNet: each where its paper puts it; none changes nothing."""
import jax
import numpy as np
import pytest

from vit_jax.models import resnet

TINY = resnet.decode_variant('resnet-tiny')


def params_of(block_attention, **kw):
  model = resnet.ResNet(**TINY, stem='small', norm='batch_norm', frozen_stages=-1,
                        block_attention=block_attention, **kw)
  image = np.zeros((2, 16, 16, 1), np.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), image)  # Where, not what: the
  features = jax.eval_shape(model.apply, variables, image)  # numerics are test_cnn_attention's.
  return variables['params'], {k: v.shape for k, v in features.items()}


def test_without_attention_the_resnet_is_unchanged():
  params, shapes = params_of(None)
  assert sorted(params) == ['stage1_block0', 'stage2_block0', 'stage3_block0', 'stage4_block0',
                            'stem_bn', 'stem_conv']
  assert shapes == {'stage1': (2, 16, 16, 16), 'stage2': (2, 8, 8, 32), 'stage3': (2, 4, 4, 64),
                    'stage4': (2, 2, 2, 128)}


@pytest.mark.parametrize('name', sorted(resnet.IN_BLOCK))
def test_block_modules_sit_in_every_residual_block(name):
  params, shapes = params_of(name, attention_args={'reduction': 4} if name not in
                             ('eca', 'gsop') else {})
  for s in range(1, 5):
    assert 'attention' in params[f'stage{s}_block0']
  assert shapes['stage4'] == (2, 2, 2, 128)


def test_selective_kernel_replaces_the_3x3_convolution():
  params, shapes = params_of('sk', attention_args={'reduction': 4, 'min_dim': 8})
  block = params['stage2_block0']
  assert 'sk' in block and 'conv0' not in block and 'conv1' in block  # Basic: the first 3x3.
  assert shapes['stage2'] == (2, 8, 8, 32)


@pytest.mark.parametrize('name, stages', [('nonlocal', [3]), ('danet', [4]), ('bam', [1, 2, 3])])
def test_stage_modules_follow_their_stages(name, stages):
  params, _ = params_of(name)
  assert sorted(k for k in params if k.endswith('_attention')) == [
      f'stage{s}_attention' for s in stages]
  params, _ = params_of(name, attention_stages=(2,))
  assert [k for k in params if k.endswith('_attention')] == ['stage2_attention']


def test_anl_fuses_the_last_two_stages():
  params, shapes = params_of('anl', attention_args={'sizes': (1, 2)})
  assert 'afnb' in params and 'apnb' in params
  assert shapes['stage4'] == (2, 2, 2, 128)


def test_unknown_module_is_named():
  with pytest.raises(ValueError, match=r"Unknown model.block_attention 'senet'; expected None "
                                       r"or one of \['anl', 'bam', 'cbam', 'danet', 'eca', "):
    params_of('senet')
