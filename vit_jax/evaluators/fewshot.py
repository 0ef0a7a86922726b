"""Few-shot linear evaluation of frozen features, as big_vision runs it during pre-training:
k labelled training images per class, a closed-form ridge regression from their features
(the model's `pre_logits`) to ±1 one-hot targets, scored on the whole eval split.

The ridge penalty is chosen per k on a validation set carved from the training split (other
images than the shots), never on the eval split whose accuracy is reported.
"""
import numpy as np

from vit_jax import errors
from vit_jax.data import pipeline

BIAS = 100.0  # A constant feature for the bias, large so that its weight is barely penalised.
L2_REGS = tuple(2.0 ** np.arange(-10, 20))  # The ridge penalties tried (big_vision's range).


def pick(label_of, size, shots, validation_per_class, num_classes, seed=0):
  """Training examples in a fixed random order (`seed`), read until every class has enough:
  per class the first k are the k shots (so the 1-shot image is among the 5 shots), the next
  `validation_per_class` validate the penalty. label_of(i): example i's label; size: the
  split's length. → ({k: indices, class-major}, validation indices)."""
  need = max(shots) + validation_per_class
  found = [[] for _ in range(num_classes)]
  short = num_classes
  for i in np.random.default_rng(seed).permutation(size):
    members = found[label_of(int(i))]
    if len(members) < need:
      members.append(int(i))
      short -= len(members) == need
      if not short:
        break
  for c, members in enumerate(found):
    if len(members) < need:
      raise errors.UserError(
          f'Few-shot evaluation needs {need} training images of class {c} ({max(shots)} '
          f'shots + {validation_per_class} for validation), the split has {len(members)}; '
          'lower fewshot.shots or fewshot.validation_per_class, or set fewshot.every=0.')
  chosen = {k: np.array([i for members in found for i in members[:k]]) for k in shots}
  validation = np.array([i for members in found for i in members[max(shots):]])
  return chosen, validation


def ridge_accuracies(train_x, train_y, num_classes, l2_regs, *tests):
  """Fits ridge regressions (one per penalty in `l2_regs`) from train_x [N, D] to ±1 one-hot
  targets of train_y [N]; → for each (x, y) in `tests`, the accuracies [len(l2_regs)].

  Features are standardised with the shots' statistics. With N < D the dual form
  Xᵀ(XXᵀ + λI)⁻¹Y is used: one eigendecomposition of the smaller Gram matrix serves every λ.
  """
  x = np.asarray(train_x, np.float64)
  mean, std = x.mean(0), x.std(0) + 1e-5
  prep = lambda f: np.pad((np.asarray(f, np.float64) - mean) / std, ((0, 0), (0, 1)),
                          constant_values=BIAS)
  x = prep(x)
  y = 2.0 * np.eye(num_classes)[np.asarray(train_y)] - 1.0  # [N, C] in {-1, 1}
  dual = x.shape[0] < x.shape[1]
  eigs, q = np.linalg.eigh(x @ x.T if dual else x.T @ x)
  results = [[] for _ in tests]
  for l2 in l2_regs:
    inverse = (q / (eigs + l2)) @ q.T  # (G + λI)⁻¹ of the Gram matrix G.
    w = x.T @ (inverse @ y) if dual else inverse @ (x.T @ y)  # [D + 1, C]
    for out, (tx, ty) in zip(results, tests):
      out.append(float(np.mean((prep(tx) @ w).argmax(-1) == np.asarray(ty))))
  return [np.array(r) for r in results]


class FewShot:
  """Few-shot accuracies of a model's features: `evaluate(features)` with features(source) →
  (numpy features [N, D], labels [N]) for every example of a source, in order."""

  def __init__(self, train_source, eval_source, num_classes, *, shots=(1, 5, 10, 25),
               validation_per_class=10, l2_regs=L2_REGS, seed=0):
    self.num_classes, self.l2_regs = num_classes, tuple(l2_regs)
    chosen, validation = pick(lambda i: train_source[i]['label'], len(train_source),
                              tuple(shots), validation_per_class, num_classes, seed)
    self.train = pipeline.Subset(train_source, chosen[max(shots)])
    # Row positions of each k's shots inside self.train (class-major blocks of max(shots)).
    per = max(shots)
    self.rows = {k: np.concatenate([c * per + np.arange(k) for c in range(num_classes)])
                 for k in shots}
    self.validation, self.eval = pipeline.Subset(train_source, validation), eval_source

  def evaluate(self, features):
    """→ {'{k}shot_accuracy': eval-split accuracy at the penalty that did best on the
    validation images, '{k}shot_l2': that penalty}."""
    (train_x, train_y), val, test = (features(s) for s in (self.train, self.validation,
                                                           self.eval))
    metrics = {}
    for k, rows in self.rows.items():
      on_val, on_test = ridge_accuracies(train_x[rows], train_y[rows], self.num_classes,
                                         self.l2_regs, val, test)
      best = int(np.argmax(on_val))  # The first of equals: the smallest penalty.
      metrics[f'{k}shot_accuracy'] = on_test[best]
      metrics[f'{k}shot_l2'] = self.l2_regs[best]
    return metrics
