"""ResNets with attention modules through the one trainer: BatchNorm statistics as state."""
import os
import re

import jax
import numpy as np
import pytest

from configs import resnet as resnet_config
from helpers import assert_trees_close
from helpers import params_of
from vit_jax import metrics
from vit_jax import errors
from vit_jax import pretrained
from vit_jax import tasks
from vit_jax import train


def tiny(arg='', **overrides):
  config = resnet_config.get_config(','.join(a for a in ('tiny', arg) if a))
  config.update_from_flattened_dict(overrides)
  return config


# Compiled without XLA's optimisations (as most tests are), jnp.max's gradient turned CBAM's
# gradients NaN at step 3; layers/conv.py's max_over keeps them finite.
# XLA's optimisations on: unoptimised (LLVM at level 0) the ResNet's step takes 12x as long
# (207 against 16 ms at batch 64), which over 60 steps outweighs the slower compiles (this
# test took 21.3 and 21.6 s against 24.1 and 22.9, alternating, Intel Xeon family 6 model 167).
@pytest.mark.long
def test_resnet_with_cbam_learns_digits_and_keeps_batch_statistics(tmp_path, optimized_xla):
  config = tiny('cbam', total_steps=60, eval_every=60, log_every=10,
                **{'optim.learning_rate': 3e-3, 'data.augment': 'none',
                   'model.attention_args.reduction': 4})
  initial = train.Trainer(config).initial_state()['params']['batch_stats']
  state, result = train.train_and_evaluate(config, str(tmp_path))
  rows = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert losses[-1] < 0.5 * losses[0]
  assert result['accuracy'] > 0.5  # Chance is 0.1.
  for picture in ('spatial_attention.png', 'channel_weights.png', 'training_curves.png'):
    assert (tmp_path / picture).exists(), picture
  stats = jax.device_get(state['params']['batch_stats'])
  mean = stats['resnet']['stem_bn']['mean']
  assert not np.allclose(mean, jax.device_get(initial['resnet']['stem_bn']['mean']))
  # Exported with the parameters, the statistics come back when fine-tuning from the .npz.
  path = train.export(config, str(tmp_path))
  assert 'batch_stats/resnet/stem_bn/mean' in pretrained.load_npz(path)
  config.pretrained.update(path=path, reset_head=False)
  loaded = train.Trainer(config).initial_state()['params']
  np.testing.assert_array_equal(jax.device_get(loaded['batch_stats']['resnet']['stem_bn']['mean']),
                                mean)


@pytest.mark.parametrize('arg, pictures', [('nonlocal', ['spatial_attention.png']),
                                           ('', []), ('sk', [])])
def test_pictures_show_what_the_module_computes(tmp_path, arg, pictures):
  config = tiny(arg, **{'model.attention_stages': (1,)} if arg == 'nonlocal' else {})
  trainer = train.Trainer(config, str(tmp_path))
  params = trainer.initial_state()['params']
  paths = trainer.task.write_plots(params, str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == pictures
  assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.png')) == pictures


@pytest.mark.long
@pytest.mark.multi_device
def test_sharded_batch_norm_uses_the_global_batch(tmp_path):
  config = tiny('se', total_steps=3, eval_every=100, **{'model.attention_args.reduction': 4})
  one, _ = train.train_and_evaluate(config, str(tmp_path / 'one'), devices=jax.devices()[:1])
  eight, _ = train.train_and_evaluate(config, str(tmp_path / 'eight'))
  assert_trees_close(params_of(one), params_of(eight), atol=1e-5)


def test_one_module_at_a_time():
  with pytest.raises(ValueError, match=r"Config arguments \['se', 'cbam'\]: one attention "
                                       r'module at a time.'):
    resnet_config.get_config('se,cbam')


def test_module_hyperparameters_are_checked_against_the_module():
  build = lambda arg, **args: tasks.get_task('cnn_classification')(
      tiny(arg, **{f'model.attention_args.{k}': v for k, v in args.items()}), None).model
  assert build('anl', sizes=[1, 2]).backbone['attention_args'] == {'sizes': (1, 2)}
  assert build('sk').backbone['attention_args'] == {}  # None: the paper's values.
  with pytest.raises(errors.UserError, match=re.escape(
      "model.attention_args.gamma does not apply to 'se'; it takes ['reduction'].")):
    build('se', gamma=3)
  with pytest.raises(errors.UserError, match=re.escape(
      "model.attention_args sets ['reduction'], but no attention module is chosen.")):
    build('', reduction=8)
  with pytest.raises(errors.UserError, match=r"Unknown model.block_attention 'senet'"):
    tasks.get_task('cnn_classification')(tiny(**{'model.block_attention': 'senet'}),
                                         None).model
