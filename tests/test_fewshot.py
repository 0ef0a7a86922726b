"""Few-shot linear evaluation of frozen features: the ridge regression against its closed form,
the choice of shots and validation images, and the trainer running it on a schedule."""
import numpy as np
import pytest

from configs import resnet as resnet_config
from configs import vit as vit_config
from vit_jax import errors
from vit_jax import metrics
from vit_jax import train
from vit_jax.evaluators import fewshot


def primal_ridge(x, y, num_classes, l2, test_x):
  """Float64 textbook ridge: standardise, append the bias feature, W = (XᵀX + λI)⁻¹XᵀY."""
  mean, std = x.mean(0), x.std(0) + 1e-5
  prep = lambda f: np.hstack([(f - mean) / std, np.full((len(f), 1), fewshot.BIAS)])
  a = prep(x)
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  w = np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ targets)
  return (prep(test_x) @ w).argmax(-1)


@pytest.mark.parametrize('num_train, dim', [(12, 40), (60, 8)])  # Dual (N < D) and primal.
def test_ridge_matches_the_closed_form(num_train, dim):
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, dim))
  y, ty = rng.integers(0, 3, num_train), rng.integers(0, 3, 200)
  x, tx = centres[y] + rng.normal(size=(num_train, dim)), centres[ty] + rng.normal(size=(200, dim))
  regs = (1e-3, 1.0, 1e3)
  got, = fewshot.ridge_accuracies(x, y, 3, regs, (tx, ty))
  want = [np.mean(primal_ridge(x, y, 3, l2, tx) == ty) for l2 in regs]
  np.testing.assert_allclose(got, want)
  assert got.max() > 0.8  # Three well-separated clusters.


def test_shots_are_nested_per_class_and_validation_is_apart():
  labels = np.repeat(np.arange(3), 20)
  chosen, validation = fewshot.pick(lambda i: labels[i], 60, (1, 5), 4, 3, seed=1)
  for k, indices in chosen.items():
    assert np.bincount(labels[indices], minlength=3).tolist() == [k] * 3
  assert set(chosen[1]) <= set(chosen[5])
  assert np.bincount(labels[validation]).tolist() == [4] * 3
  assert not set(validation) & set(chosen[5])
  with pytest.raises(errors.UserError, match=r'Few-shot evaluation needs 25 training images of '
                                             r'class 0 \(5 shots \+ 20 for validation\), the '
                                             r'split has 20; lower fewshot.shots'):
    fewshot.pick(lambda i: labels[i], 60, (1, 5), 20, 3)


def test_trainer_logs_fewshot_accuracies_on_schedule(tmp_path):
  config = vit_config.get_config('tiny')
  config.update_from_flattened_dict({'fewshot.every': 10, 'fewshot.shots': (1, 10),
                                     'total_steps': 20})
  train.train_and_evaluate(config, str(tmp_path))
  rows = [r for r in metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
          if 'fewshot/1shot_accuracy' in r]
  assert [r['step'] for r in rows] == [10, 20]
  # Features of even a briefly trained model separate the digits well above chance (0.1), and
  # ten images per class do better than one.
  assert rows[-1]['fewshot/10shot_accuracy'] > max(0.3, rows[-1]['fewshot/1shot_accuracy'])
  assert rows[-1]['fewshot/10shot_l2'] in fewshot.L2_REGS


def test_a_resnet_gives_its_pooled_features():
  config = resnet_config.get_config('tiny')
  trainer = train.Trainer(config)
  params = trainer.initial_state()['params']
  batch = trainer.task.dummy_batch(3)
  features, labels = trainer.task.representation(params, batch)
  assert features.shape == (3, 128) and labels.shape == (3,)  # The last stage's width.
