"""The contract between the trainer and a family (vit_jax/tasks/base.py), held for every family,
and followed by a new family written here from the contract alone."""
import logging
import os
import shutil

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from configs import common
from helpers import FAMILIES
from helpers import params_of
from helpers import tiny
from vit_jax import checkpoint
from vit_jax import losses
from vit_jax import metrics
from vit_jax import pretrained
from vit_jax import tasks
from vit_jax import train
from vit_jax.data import classification as digits_data
from vit_jax.data import pipeline
from vit_jax.data import tokenizers
from vit_jax.tasks import base


def test_every_family_implements_the_whole_contract():
  for name in tasks.TASKS:
    task = tasks.get_task(name)
    assert issubclass(task, base.Task) and not task.__abstractmethods__, name


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_constructing_a_task_reads_and_writes_nothing(family, tmp_path):
  config = tiny(family, **{'data.data_dir': str(tmp_path / 'data')})
  tasks.get_task(config.task)(config, str(tmp_path / 'work'))
  assert not os.listdir(tmp_path)  # No generated shapes, no tokenizer, no folders.


class LinearDigits(nn.Module):
  """Softmax regression on the pixels."""
  num_classes: int

  @nn.compact
  def __call__(self, images):
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)(
        images.reshape(images.shape[0], -1))


class LinearTask(base.Task):
  """A new family written from the contract alone: a model, this task, the config below."""

  def build_model(self):
    return LinearDigits(**self.config.model)

  def datasets(self):
    c = self.config.data
    return base.Datasets(digits_data.Digits('train'), digits_data.Digits('test'),
                         digits_data.Preprocess(c.image_size, 'none', False, 1))

  def dummy_batch(self, batch_size):
    size = self.config.data.image_size
    return {'image': np.zeros((batch_size, size, size, 1), np.float32),
            'label': np.zeros(batch_size, np.int32)}

  def init(self, rng, batch):
    return self.model.init(rng, batch['image'])['params']

  def loss_fn(self, params, batch, rng, frozen=None):
    logits = self.model.apply({'params': params}, batch['image'])
    return losses.ratio(losses.weighted_cross_entropy(logits, batch['label'])), {}

  def eval_step(self, params, batch):
    logits = self.model.apply({'params': params}, batch['image'])
    weight = batch[pipeline.WEIGHT]
    return {'accuracy': losses.weighted_accuracy(logits, batch['label'], weight)}, {}


def linear_config():
  c = common.trainer_config()
  c.task = 'linear'
  c.model = ml_collections.ConfigDict({'num_classes': 10})
  c.data = ml_collections.ConfigDict({'image_size': 8, 'num_threads': 1})
  c.update_from_flattened_dict({'total_steps': 40, 'batch_size': 64, 'eval_batch_size': 64,
                                'log_every': 10, 'eval_every': 40, 'optim.warmup_steps': 0,
                                'optim.learning_rate': 0.05})
  return c


def test_a_new_family_trains_exports_and_fine_tunes_through_the_contract_alone(tmp_path,
                                                                              monkeypatch):
  monkeypatch.setitem(tasks.TASKS, 'linear', f'{__name__}:LinearTask')
  config = linear_config()
  state, result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  rows = metrics.read_jsonl(str(tmp_path / 'run' / 'metrics.jsonl'))
  losses_seen = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert losses_seen[-1] < 0.5 * losses_seen[0] and 'train/grad_norm' in rows[0]
  assert result['count'] == 360 and result['accuracy'] > 0.8  # Chance is 0.1.
  path = train.export(config, str(tmp_path / 'run'))
  config.pretrained.path = path
  start = params_of(train.Trainer(config).initial_state())
  jax.tree.map(np.testing.assert_array_equal, start, params_of(state))
  with pytest.raises(ValueError, match=r"Unknown --mode='translate' for task 'linear'; expected "
                                       r"one of \['train', 'export', 'config'\]"):
    train.run_command(config, str(tmp_path / 'run'), 'translate')


def test_evaluation_does_not_depend_on_how_the_split_is_batched(tmp_path):
  """DETR's eval set loss, errors and AP on 8 images: one padded batch of 24 or one of 8."""
  config = tiny('detr', **{'data.data_dir': str(tmp_path / 'shapes')})
  trainer = train.Trainer(config, str(tmp_path / 'work'))
  params = trainer.initial_state()['params']
  _, source, preprocess = trainer.task.datasets()
  results = []
  for eval_batch_size in (8, 24):
    config.eval_batch_size = eval_batch_size
    trainer.local_eval_batch = eval_batch_size
    results.append(trainer.evaluate(params, source, preprocess.eval))
  assert results[0].keys() == results[1].keys() and results[0]['count'] == 8
  for key in results[0]:
    np.testing.assert_allclose(results[1][key], results[0][key], rtol=1e-5, err_msg=key)


def save_fresh_state(config, workdir):
  """A step-0 checkpoint of freshly initialised parameters (as a run would save)."""
  state = train.Trainer(config, str(workdir)).initial_state()
  checkpoints = checkpoint.Checkpointer(str(workdir), keep=1)
  checkpoints.save(0, state)
  checkpoints.wait()
  checkpoints.close()
  return params_of(state)


def test_fine_tuning_from_an_export_works_for_every_family_or_says_why_not(tmp_path):
  """Translation and detection (ViT: tests/test_train.py): export, then start a new run from
  the .npz. Export reads no data; the vocabulary travels with the parameters."""
  save_fresh_state(tiny('transformer'), tmp_path / 'words')
  words = train.export(tiny('transformer'), str(tmp_path / 'words'),
                       str(tmp_path / 'npz' / 'words.npz'))
  assert (tmp_path / 'npz' / 'tokenizer.json').exists()
  finetune = tiny('transformer', seed=1, **{'pretrained.path': words})
  trainer = train.Trainer(finetune, str(tmp_path / 'words_finetune'))
  assert trainer.task.tokenizer.to_json() == tokenizers.load(
      str(tmp_path / 'words' / 'tokenizer.json')).to_json()
  start = pretrained.flatten(params_of(trainer.initial_state()))
  assert start.keys() == pretrained.load_npz(words).keys()
  for key, value in pretrained.load_npz(words).items():
    np.testing.assert_array_equal(start[key], value, err_msg=key)

  shapes = tmp_path / 'shapes'
  detection = tiny('detr', **{'data.data_dir': str(shapes)})
  exported = save_fresh_state(detection, tmp_path / 'boxes')
  shutil.rmtree(shapes)
  boxes = train.export(detection, str(tmp_path / 'boxes'))
  assert not shapes.exists()  # Export read no data (and so generated none).
  finetune = tiny('detr', seed=1, **{'pretrained.path': boxes, 'data.data_dir': str(shapes)})
  start = params_of(train.Trainer(finetune).initial_state())
  np.testing.assert_array_equal(start['query_embed'], exported['query_embed'])
  # pretrained.reset_head: a fresh class head (initialised from seed 1, not seed 0's).
  assert np.all(start['class_head']['kernel'] != exported['class_head']['kernel'])

  with pytest.raises(ValueError, match=rf"Checkpoint '{boxes}' does not fit the ViT\.\n"
                                       r"  missing: \['Transformer/encoder_norm/bias'"):
    train.Trainer(tiny('vit', **{'pretrained.path': boxes})).initial_state()
  finetune.pretrained.path = words
  with pytest.raises(ValueError, match=r"does not fit the detection model\.\n  missing: "
                                       r"\['backbone/"):
    train.Trainer(finetune).initial_state()


def test_a_size_given_beside_a_variant_wins_and_is_logged(caplog):
  config = tiny(**{'model.num_layers': 3})
  with caplog.at_level(logging.WARNING):
    model = tasks.get_task(config.task)(config).model
  assert (model.num_layers, model.hidden_size) == (3, 32)  # 'mu/2' has 2 layers of width 32.
  assert "model.num_layers=3 overrides the 'mu/2' variant's 2." in caplog.messages
