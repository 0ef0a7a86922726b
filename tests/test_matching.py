import jax
import numpy as np
import pytest
import scipy.optimize

from vit_jax import sharding
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


@pytest.mark.multi_device
def test_each_device_matches_its_own_images(monkeypatch):
  """Under the trainer's mesh the host solver sees one device's share of the images at a
  time, not the whole batch gathered, and finds the same matches."""
  seen = []
  solve = matching._scipy_assign
  monkeypatch.setattr(matching, '_scipy_assign', lambda c, v: seen.append(c.shape) or solve(c, v))
  rng = np.random.default_rng(0)
  cost = rng.normal(size=(2, 8, 5, 3)).astype(np.float32)  # [layers, batch, Q, T]
  valid = rng.random((2, 8, 3)) < 0.8
  mesh = sharding.make_mesh()
  images = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES))
  with sharding.logical_rules(mesh):
    split = jax.jit(matching.hungarian)(*jax.device_put((cost, valid), images))
  split = np.asarray(split)  # Waits for every device's callback.
  assert seen == [(2, 5, 3)] * 8  # 2 layers x 1 image per call, on each of 8 devices.
  np.testing.assert_array_equal(split, matching._scipy_assign(
      cost.reshape(16, 5, 3), valid.reshape(16, 3)).reshape(2, 8, 3))
