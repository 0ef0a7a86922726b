"""Losses and weighted metrics against float64 numpy, and the one eval convention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_hinge_discriminator_loss_on_a_hand_case():
  # Real logits 2 and 0: relu(1 − ·) = 0 and 1 → 0.5; fake −2 and 1: relu(1 + ·) = 0, 2 → 1.
  loss = losses.hinge_discriminator_loss(jnp.array([2.0, 0.0]), jnp.array([-2.0, 1.0]))
  assert float(loss) == pytest.approx(0.5 * (0.5 + 1.0))


def test_adaptive_weight_is_the_ratio_of_the_last_layers_gradient_norms():
  # A last layer W (2 x 2) on features h: L_rec = Σ (hW − y)², L_GAN = −Σ hW v. By hand,
  # ∇_W L_rec = 2 hᵀ(hW − y) and ∇_W L_GAN = −hᵀ v.
  h = jnp.array([[1.0, 2.0]])
  w = jnp.array([[0.5, -1.0], [0.0, 1.0]])
  y = jnp.array([[1.0, 1.0]])
  v = jnp.array([[3.0, 4.0]])
  g_rec = jax.grad(lambda w: jnp.sum((h @ w - y) ** 2))(w)
  g_gan = jax.grad(lambda w: -jnp.sum((h @ w) * v))(w)
  hand_rec = 2 * h.T @ (h @ w - y)  # hW − y = [−0.5, 0] → [[−1, 0], [−2, 0]], norm √5.
  hand_gan = -h.T @ v  # [[−3, −4], [−6, −8]], norm 5√5.
  np.testing.assert_allclose(g_rec, hand_rec)
  np.testing.assert_allclose(g_gan, hand_gan)
  weight = losses.adaptive_weight({'kernel': g_rec}, {'kernel': g_gan})
  assert float(weight) == pytest.approx(np.sqrt(5) / (5 * np.sqrt(5) + 1e-4), rel=1e-6)
  # Held constant, and clipped when the adversarial gradient vanishes.
  assert float(jax.grad(lambda s: losses.adaptive_weight(s * g_rec, g_gan))(1.0)) == 0
  assert float(losses.adaptive_weight(g_rec, 0 * g_gan)) == 1e4
