import math

import jax
import numpy as np

from configs import detr as detr_config
from vit_jax import metrics
from vit_jax import tasks
from vit_jax import train
from vit_jax.tasks import detection

# Jitted: op by op, one set loss compiles about 250 small programs.
set_criterion = jax.jit(detection.set_criterion, static_argnames=('num_classes', 'matcher'))


def test_set_loss_equals_a_hand_computed_value():
  # One image, two queries, one real class; a second, padded target must change nothing.
  logits = np.array([[[[2.0, 0.0], [0.0, 2.0]]]], np.float32)        # [L=1, B=1, Q=2, C+1]
  pred = np.array([[[[0.55, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]]], np.float32)
  targets = {'labels': np.array([[0, 0]]), 'boxes': np.array([[[0.5, 0.5, 0.2, 0.2],
                                                              [0.9, 0.9, 0.1, 0.1]]], np.float32),
             'valid': np.array([[True, False]])}
  # Query 0 matches. CE: both queries have nll log(1 + e^-2), weights 1 and 0.1 → mean = nll.
  # L1 = 0.05. Boxes [.4,.4,.6,.6] vs [.45,.4,.65,.6]: IoU .03/.05, hull = union → GIoU 0.6.
  nll = math.log(1 + math.exp(-2))
  expected = nll + 5 * 0.05 + 2 * (1 - 0.6)
  for matcher in ('scipy', 'device'):
    loss, m = set_criterion({'logits': logits, 'boxes': pred}, targets,
                                      num_classes=1, matcher=matcher)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose([m['loss_ce'], m['loss_bbox'], m['loss_giou']],
                               [nll, 0.05, 0.4], rtol=1e-5)
    assert m['class_error'] == 0 and m['cardinality_error'] == 0
  # Auxiliary losses: every decoder layer adds its own matched loss.
  two_layers = {'logits': np.concatenate([logits] * 2), 'boxes': np.concatenate([pred] * 2)}
  loss, _ = set_criterion(two_layers, targets, num_classes=1)
  np.testing.assert_allclose(loss, 2 * expected, rtol=1e-5)
  # No targets at all: only the no-object term, normalised by max(1, 0) boxes, finite.
  empty = dict(targets, valid=np.zeros((1, 2), bool))
  loss, _ = set_criterion({'logits': logits, 'boxes': pred}, empty, num_classes=1)
  np.testing.assert_allclose(loss, -np.mean(jax.nn.log_softmax(logits[0, 0])[:, 1]), rtol=1e-5)


def test_group_detr_loss_is_the_mean_of_each_groups_own_set_loss():
  """G groups of Q queries, each matched to the image's targets on its own (Group DETR)."""
  rng = np.random.default_rng(0)
  groups, q = 3, 4
  outputs = {'logits': rng.normal(size=(2, 2, groups * q, 3)).astype(np.float32),  # [L, B, GQ, C+1]
             'boxes': rng.uniform(0.1, 0.9, (2, 2, groups * q, 4)).astype(np.float32)}
  targets = {'labels': np.array([[0, 1, 0], [1, 0, 0]], np.int32),
             'boxes': rng.uniform(0.2, 0.6, (2, 3, 4)).astype(np.float32),
             'valid': np.array([[True, True, False], [True, False, False]]),
             'image': np.zeros((2, 8, 8, 3))}  # Other batch keys are left alone.
  loss, _ = set_criterion(*detection.split_query_groups(outputs, targets, q),
                                    num_classes=2, matcher='device')
  each = [set_criterion({k: v[:, :, g * q:(g + 1) * q] for k, v in outputs.items()},
                                  targets, num_classes=2, matcher='device')[0]
          for g in range(groups)]
  np.testing.assert_allclose(loss, np.mean(each), rtol=1e-5)
  assert detection.split_query_groups(outputs, targets, groups * q) == (outputs, targets)


def test_focal_loss_gives_detr_sigmoid_classes_scored_per_query():
  """loss.focal_alpha set: DETR's class head has no no-object logit, the set loss is the
  sigmoid focal loss, and each query's score is its best class's sigmoid."""
  config = detr_config.get_config('tiny')
  config.loss.update(focal_alpha=0.25, class_weight=2.0)
  task = tasks.get_task(config.task)(config, None)
  assert task.model.sigmoid_classes and task._loss_settings()['focal'] == (0.25, 2.0)
  params = jax.jit(task.init)(jax.random.key(0), task.dummy_batch(2))
  assert params['class_head']['kernel'].shape[-1] == task.model.num_classes == 3
  logits = np.array([[[-9.0, 2.0, 0.0], [1.0, -9.0, -9.0]]], np.float32)
  scores, labels, _ = task.postprocess(logits, np.full((1, 2, 4), 0.5, np.float32))
  np.testing.assert_allclose(scores, jax.nn.sigmoid(np.array([[2.0, 1.0]])), rtol=1e-6)
  np.testing.assert_array_equal(labels, [[1, 0]])
  plain = tasks.get_task(config.task)(detr_config.get_config('tiny'), None)
  assert not plain.model.sigmoid_classes and 'focal' not in plain._loss_settings()


def test_tiny_detr_run_learns_and_is_evaluated_with_coco_ap(tmp_path):
  config = detr_config.get_config('tiny')
  config.update_from_flattened_dict({'total_steps': 40, 'log_every': 10, 'eval_every': 40,
                                     'checkpoint_every': 40, 'optim.learning_rate': 1e-3,
                                     'data.data_dir': str(tmp_path / 'shapes')})
  _, result = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert result['count'] == 8 and 0.0 <= result['AP'] <= 1.0 and 'AP50' in result
  losses = [r['train/loss'] for r in metrics.read_jsonl(str(tmp_path / 'work/metrics.jsonl'))
            if 'train/loss' in r]
  assert losses[-1] < 0.8 * losses[0]
  assert (tmp_path / 'work' / 'detections.png').exists()
  assert (tmp_path / 'shapes' / 'annotations' / 'instances_train.json').exists()


def test_encoder_attention_is_read_from_the_cell_under_each_pixel():
  # A 4x6 feature grid whose unpadded part (the image) is the top-left 2x3 cells.
  mask = np.zeros((1, 4, 6), bool)
  mask[0, :2, :3] = True
  weights = np.zeros((1, 2, 24, 24))
  weights[0, :, 1 * 6 + 2, 0 * 6 + 1] = 1.0  # Cell (1, 2) attends to cell (0, 1).
  aux = {'encoder_attention': [weights], 'feature_mask': mask}
  [from_cell] = detection.DetectionTask.encoder_attention_at(aux, 0, [(25, 15)], image_size=(20, 30))
  assert from_cell.shape == (2, 3)
  np.testing.assert_array_equal(from_cell, [[0, 1, 0], [0, 0, 0]])
