import jax
import numpy as np
import pytest
import scipy.optimize

from vit_jax.ops import matching


@pytest.mark.parametrize('queries,targets', [(6, 6), (10, 4), (5, 0)])
@pytest.mark.parametrize('solver', ['scipy', 'device'])
def test_solvers_find_scipys_optimum(solver, queries, targets):
  rng = np.random.default_rng(queries + targets)
  cost = rng.normal(size=(2, 3, queries, targets)).astype(np.float32)  # [layers, batch, Q, T]
  valid = np.ones((2, 3, targets), bool)
  if targets:
    valid[:, 1, -1] = False  # A padded target: never matched, changes nothing.
  assign = np.asarray(jax.jit(lambda c, v: matching.hungarian(c, v, solver))(cost, valid))
  assert assign.shape == (2, 3, targets)
  for l in range(2):
    for b in range(3):
      columns = np.flatnonzero(valid[l, b])
      assert np.all(assign[l, b][~valid[l, b]] == -1)
      chosen = assign[l, b][columns]
      assert len(set(chosen.tolist())) == len(chosen)  # One query per target.
      rows, cols = scipy.optimize.linear_sum_assignment(cost[l, b][:, columns])
      np.testing.assert_allclose(cost[l, b][chosen, columns].sum(),
                                 cost[l, b][:, columns][rows, cols].sum(), atol=1e-5)


def test_more_targets_than_queries_is_a_clear_error():
  with pytest.raises(ValueError, match='3 queries cannot match up to 4 targets'):
    matching.hungarian(np.zeros((1, 3, 4)), np.ones((1, 4), bool))
  with pytest.raises(ValueError, match="Unknown matcher 'greedy'"):
    matching.hungarian(np.zeros((1, 3, 2)), np.ones((1, 2), bool), 'greedy')
