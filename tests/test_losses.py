"""Losses and weighted metrics against float64 numpy, and the one eval convention."""
import numpy as np

from vit_jax import losses
from vit_jax import metrics


def numpy_cross_entropy(logits, labels, smoothing):
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  classes = logits.shape[-1]
  targets = np.eye(classes)[labels] * (1 - smoothing) + smoothing / classes
  return -(targets * logp).sum(-1)


def test_weighted_cross_entropy_and_accuracy_equal_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 7)).astype(np.float32)
  labels = rng.integers(0, 7, (3, 4))
  weights = (rng.random((3, 4)) > 0.3).astype(np.float32)
  for smoothing in (0.0, 0.1):
    total, weight = losses.weighted_cross_entropy(logits, labels, weights, smoothing)
    expected = numpy_cross_entropy(logits, labels, smoothing)
    np.testing.assert_allclose(total, (expected * weights).sum(), rtol=1e-5)
    assert weight == weights.sum()
  correct = logits.argmax(-1) == labels
  total, weight = losses.weighted_accuracy(logits, labels, weights)
  assert total == (correct * weights).sum() and weight == weights.sum()
  total, weight = losses.weighted_accuracy(logits, labels)  # No weights: every entry counts.
  assert total == correct.sum() and weight == 12


def test_per_example_weights_broadcast_over_tokens_and_ratio_never_divides_by_zero():
  logits = np.zeros((2, 3, 5), np.float32)
  labels = np.zeros((2, 3), int)
  total, weight = losses.weighted_cross_entropy(logits, labels, np.array([1.0, 0.0])[:, None])
  np.testing.assert_allclose(total, 3 * np.log(5), rtol=1e-6)
  assert weight == 3
  assert losses.ratio((0.0, 0.0)) == 0.0


def test_eval_pairs_added_over_batches_give_the_split_mean():
  """Batches of different size and padding: one division at the end is the mean over the
  real examples, whatever the batching."""
  values = np.arange(10, dtype=np.float32)
  batches = [(values[:4], np.ones(4)), (values[4:8], np.ones(4)),
             (np.concatenate([values[8:], [99, 99]]), np.array([1, 1, 0, 0]))]  # Padded.
  totals = {'value': (0.0, 0.0)}
  for x, w in batches:
    total, weight = losses.weighted_mean(x, w)
    totals['value'] = (totals['value'][0] + total, totals['value'][1] + weight)
  assert metrics.average(totals) == {'value': 4.5}
  assert np.isnan(metrics.average({'none': (0.0, 0.0)})['none'])
