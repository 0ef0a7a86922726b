"""SETR through the one trainer: a short run on the embedded shapes' semantic maps, mIoU on
the original label maps, overlays, and a ViT .npz initialising the encoder. (The decoders:
tests/models/test_setr.py; loaders: tests/data/test_segmentation_data.py.)"""
import jax
import numpy as np
import pytest

import helpers
from configs import setr as config_lib
from vit_jax import pretrained
from vit_jax import tasks
from vit_jax import train


def test_setr_fits_a_batch_of_shapes():
  """The loss (with an auxiliary head) falls and the pixels of one batch are learned."""
  config = config_lib.get_config('tiny,pup')
  config.model.aux_layers = (1,)
  task = tasks.get_task(config.task)(config, None)
  steps, _ = helpers.fit_one_batch(task, 150, 3e-3)
  history, terms = [loss for loss, _ in steps], steps[-1][1]
  assert history[-1] < 0.3 * history[0] and 'aux_loss_1' in terms
  assert terms['pixel_accuracy'] > 0.9  # All background would be about 0.7.


def test_setr_runs_in_the_trainer_and_draws_overlays(tmp_path):
  config = config_lib.get_config('tiny')
  _, result = train.train_and_evaluate(config, str(tmp_path))
  assert {'mIoU', 'pixel_accuracy', 'mean_accuracy', 'IoU/background', 'loss'} <= set(result)
  assert 0 <= result['mIoU'] <= 1 and result['count'] == config.data.shapes_eval_images
  assert (tmp_path / 'segmentation.png').exists()


def test_a_vit_npz_initialises_the_encoder_at_a_new_grid(tmp_path):
  """A classifier's .npz (4x4 patch grid, with head) → SETR's encoder (8x8 grid): the blocks
  copied, the position table resized, the head dropped, the decoder left fresh."""
  from vit_jax.models import vit
  classifier = vit.VisionTransformer(num_classes=3, **vit.decode_variant('mu/8'))
  params = classifier.init(jax.random.key(5), np.zeros((1, 32, 32, 3)))['params']
  path = str(tmp_path / 'vit.npz')
  np.savez(path, **pretrained.flatten(jax.device_get(params)))
  config = config_lib.get_config('tiny,naive')  # The classifier's two layers.
  config.data.canvas = 64
  task = tasks.get_task('segmentation')(config, str(tmp_path))
  fresh = jax.jit(task.init)(jax.random.key(0), task.dummy_batch(1))
  loaded = task.load_pretrained(fresh, path)
  enc, ref = pretrained.flatten(loaded['encoder']), pretrained.flatten(params)
  block = 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'
  np.testing.assert_array_equal(enc[block], ref[block])
  posemb = 'Transformer/posembed_input/pos_embedding'
  assert enc[posemb].shape == (1, 65, 32) and ref[posemb].shape == (1, 17, 32)
  np.testing.assert_array_equal(enc[posemb][:, 0], ref[posemb][:, 0])  # The class token's.
  assert not any(k.startswith('head') for k in enc)
  np.testing.assert_array_equal(loaded['decoder']['classifier']['kernel'],
                                fresh['decoder']['classifier']['kernel'])


def test_config_arguments():
  assert config_lib.get_config().model.decoder == 'mla'
  assert config_lib.get_config('naive').model.decoder == 'naive'
  assert config_lib.get_config('tiny').model.num_layers == 4  # MLA reads four layers.
  c = config_lib.get_config('ade20k,pup')
  assert (c.model.variant, c.model.decoder, c.data.num_classes) == ('L/16', 'pup', 150)
  with pytest.raises(ValueError, match="Unknown config argument 'upp'"):
    config_lib.get_config('upp')
