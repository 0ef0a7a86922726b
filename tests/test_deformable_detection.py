"""Deformable DETR through the one trainer: top-k post-processing, a short training run on the
embedded shapes, the configs. (The model and its focal set loss against Hugging Face's:
tests/models/test_deformable_detr.py.)"""
import jax
import numpy as np
import pytest

import helpers
from configs import deformable_detr as config_lib
from vit_jax import metrics
from vit_jax import tasks
from vit_jax import train
from vit_jax.tasks import deformable_detection


def test_topk_keeps_the_best_query_class_pairs():
  logits = np.full((1, 3, 2), -10.0, np.float32)
  logits[0, 2, 1], logits[0, 0, 0], logits[0, 2, 0] = 3.0, 2.0, 1.0
  boxes = np.array([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.3, 0.3, 0.2, 0.4]]],
                   np.float32)
  scores, labels, xyxy, queries = deformable_detection.topk_postprocess(logits, boxes, k=3)
  np.testing.assert_allclose(scores[0], 1 / (1 + np.exp(-np.array([3.0, 2.0, 1.0]))), rtol=1e-6)
  assert labels[0].tolist() == [1, 0, 0] and queries[0].tolist() == [2, 0, 2]
  np.testing.assert_allclose(xyxy[0, 0], [0.2, 0.1, 0.4, 0.5], atol=1e-6)  # Query 2 twice.
  np.testing.assert_allclose(xyxy[0, 2], xyxy[0, 0], atol=1e-6)


def test_deformable_detr_trains_on_shapes_and_draws_boxes(tmp_path):
  config = config_lib.get_config('tiny')
  config.update_from_flattened_dict({'total_steps': 30, 'eval_every': 30, 'log_every': 5,
                                     'checkpoint_every': 30, 'optim.learning_rate': 1e-3})
  _, result = train.train_and_evaluate(config, str(tmp_path))
  rows = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  loss = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert loss[-1] < 0.85 * loss[0]
  assert {'AP', 'AP50', 'loss', 'class_error'} <= set(result) and 0 <= result['AP'] <= 1
  assert (tmp_path / 'detections.png').exists() and (tmp_path / 'sampling_points.png').exists()


def test_two_stage_learns_its_proposals(tmp_path):
  """The proposals' set loss (every target as class 0) is part of the loss; their heads and
  the query embedding of the chosen boxes get gradients, and the loss falls on a batch."""
  config = config_lib.get_config('tiny,two_stage')
  task = tasks.get_task(config.task)(config, str(tmp_path))
  steps, grads = helpers.fit_one_batch(task, 15, 1e-3)
  for name in ('enc_output', 'pos_trans', 'class_embed_2', 'bbox_embed_2'):
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads[name])) > 0, name
  history = [(loss, terms['loss_proposals']) for loss, terms in steps]
  assert 0 < history[0][1] < history[0][0]
  assert history[-1][0] < 0.8 * history[0][0] and history[-1][1] < history[0][1]


@pytest.mark.parametrize('arg', ['refine', 'two_stage', 'r50'])
def test_configs_build(arg):
  config = config_lib.get_config(arg)
  assert config.model.box_refine == (arg != 'r50')
  assert config.model.two_stage == (arg == 'two_stage')
  if arg == 'r50':
    assert config.optim.schedule == 'step' and config.model.num_queries == 300
