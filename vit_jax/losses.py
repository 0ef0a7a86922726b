"""Losses and weighted metrics for every family, in one place.

The weighted functions return a pair (sum of weighted values, sum of weights), as flax's WMT
example does: a training step divides the two at once; an evaluation adds the pairs over
the whole split and divides once at the end (vit_jax/metrics.py: `average`), so padding
(weight 0) never counts and the last partial batch counts exactly.
"""
import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
  """logits [..., C], integer labels [...] → cross-entropy [...] against (optionally
  smoothed: 1 − ε on the label, ε / C everywhere) one-hot targets, in float32."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
  """Per-element focal loss (Lin et al. 2017, Eq. 5) of independent sigmoid classes:
  −α_t (1 − p_t)^γ log p_t, with α on the positives and 1 − α on the negatives (α < 0: no
  weighting); in float32."""
  return optax.sigmoid_focal_loss(logits.astype(jnp.float32), targets.astype(jnp.float32),
                                  alpha=None if alpha < 0 else alpha, gamma=gamma)


def _weighted(values, weights):
  if weights is None:
    return values.sum(), jnp.asarray(values.size, jnp.float32)
  weights = jnp.broadcast_to(weights, values.shape).astype(jnp.float32)
  return (values * weights).sum(), weights.sum()


def weighted_cross_entropy(logits, labels, weights=None, label_smoothing=0.0):
  """(Σ w · cross-entropy, Σ w); weights [...] like labels (None: all 1)."""
  return _weighted(softmax_cross_entropy(logits, labels, label_smoothing), weights)


def weighted_accuracy(logits, labels, weights=None):
  """(Σ w · [argmax = label], Σ w)."""
  return _weighted((logits.argmax(-1) == labels).astype(jnp.float32), weights)


def weighted_mean(values, weights=None):
  """(Σ w · value, Σ w) of any per-example quantity."""
  return _weighted(jnp.asarray(values, jnp.float32), weights)


def ratio(pair):
  """Σ w · value / Σ w of one batch (at least one weight in the denominator, so a batch
  with no weight gives 0, not NaN)."""
  total, weight = pair
  return total / jnp.maximum(weight, 1.0)


def soft_distillation(student_logits, teacher_logits, temperature):
  """τ² · KL(softmax(teacher / τ) ‖ softmax(student / τ)) per example [...] (Hinton et al.
  2015; DeiT §5.2): the τ² keeps the gradient's scale independent of τ."""
  teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  return temperature ** 2 * (jnp.exp(teacher) * (teacher - student)).sum(-1)


def dice_loss(logits, targets):
  """1 − (2 Σ p t + 1) / (Σ p + Σ t + 1) over the last axis, p = sigmoid(logits): DETR's
  DICE loss of a mask (Milletari et al. 2016, with +1 smoothing), a soft 1 − F1 that does
  not care how large the mask is; in float32."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  targets = targets.astype(jnp.float32)
  return 1 - (2 * (p * targets).sum(-1) + 1) / (p.sum(-1) + targets.sum(-1) + 1)


def hinge_discriminator_loss(logits_real, logits_fake):
  """½ (E[relu(1 − D(x))] + E[relu(1 + D(x̂))]): the discriminator's hinge loss, as VQGAN's
  released code (its generator's adversarial term is −E[D(x̂)])."""
  return 0.5 * (jnp.mean(jax.nn.relu(1 - logits_real)) + jnp.mean(jax.nn.relu(1 + logits_fake)))


def adaptive_weight(grad_reconstruction, grad_adversarial, delta=1e-4, max_weight=1e4):
  """VQGAN's λ (Esser et al. 2021, Eq. 7): ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ), the
  gradients taken w.r.t. the decoder's last layer; clipped to [0, 1e4] and held constant (no
  gradient through it), as in the released code, so that neither term swamps the other."""
  norm = lambda g: jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(g)))
  weight = norm(grad_reconstruction) / (norm(grad_adversarial) + delta)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))
