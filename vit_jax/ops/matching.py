"""Hungarian matching of DETR's predictions to padded targets (Carion et al. 2020, §3.1).

Two exact solvers behind one interface, chosen by name: 'scipy' (`linear_sum_assignment`
through a host callback: the fast path on CPU) and 'device' (`optax`'s jittable Hungarian
algorithm: no host round trip, for accelerators). Both take the costs of every decoder layer
and image in one batched call, one per device under the trainer's mesh.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
from jax.sharding import PartitionSpec as P

from vit_jax import errors
from vit_jax import sharding
from vit_jax.ops import boxes as box_ops


def match_cost(logits, pred_boxes, labels, target_boxes, valid, *, class_weight=1.0,
               l1_weight=5.0, giou_weight=2.0, focal=None):
  """[..., Q, T] cost: class cost · w_class + L1 · w_l1 − GIoU · w_giou. The class cost is
  −p(class) of the softmax (DETR), or with focal=(α, γ), sigmoid scores, the focal loss of
  calling the query the target's class minus that of not (Deformable DETR). Padded target
  columns get a constant cost, which changes no optimum while Q ≥ T."""
  if focal is None:
    prob = jax.nn.softmax(logits.astype(jnp.float32), -1)  # [..., Q, C+1]
    class_cost = -jnp.take_along_axis(prob, labels[..., None, :], axis=-1)  # [..., Q, T]
  else:
    alpha, gamma = focal
    prob = jax.nn.sigmoid(logits.astype(jnp.float32))  # [..., Q, C]
    positive = alpha * (1 - prob) ** gamma * -jnp.log(prob + 1e-8)
    negative = (1 - alpha) * prob ** gamma * -jnp.log(1 - prob + 1e-8)
    class_cost = jnp.take_along_axis(positive - negative, labels[..., None, :], axis=-1)
  l1 = jnp.abs(pred_boxes[..., :, None, :] - target_boxes[..., None, :, :]).sum(-1)
  giou = box_ops.pairwise_generalized_iou(box_ops.cxcywh_to_xyxy(pred_boxes),
                                          box_ops.cxcywh_to_xyxy(target_boxes))
  cost = class_weight * class_cost + l1_weight * l1 - giou_weight * giou
  cost = jnp.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=1e6)
  return jnp.where(valid[..., None, :], cost, 0.0)  # Padded target columns: constant.


def _scipy_assign(cost, valid):
  """Host side: per matrix, solve only the valid columns (as DETR does)."""
  cost, valid = np.asarray(cost), np.asarray(valid)
  out = np.full(valid.shape, -1, np.int32)
  for n in range(cost.shape[0]):
    columns = np.flatnonzero(valid[n])
    if columns.size:
      rows, cols = scipy.optimize.linear_sum_assignment(cost[n][:, columns])
      out[n, columns[cols]] = rows
  return out


def assign_scipy(cost, valid):
  """cost [N, Q, T], valid [N, T] → query index of each target [N, T] (−1 when padded)."""
  shape = jax.ShapeDtypeStruct(valid.shape, jnp.int32)
  return jax.pure_callback(_scipy_assign, shape, jax.lax.stop_gradient(cost), valid,
                           vmap_method='sequential')


def assign_device(cost, valid):
  """The same optimum, on device: optax's Hungarian algorithm, vmapped over matrices."""

  def one(c, v):
    c = jnp.where(v[None], c, 0.0)  # Padded targets: a constant column changes no optimum.
    rows, cols = optax.assignment.hungarian_algorithm(c.T)  # [T, Q]: every target assigned.
    query = jnp.zeros(c.shape[1], jnp.int32).at[rows].set(cols.astype(jnp.int32))
    return jnp.where(v, query, -1)

  return jax.vmap(one)(jax.lax.stop_gradient(cost), valid)


SOLVERS = {'scipy': assign_scipy, 'device': assign_device}


def hungarian(cost, valid, solver='scipy'):
  """cost [..., B, Q, T], valid [..., B, T] → for each target, its matched query (−1 if
  padded). B, the images, is the axis a mesh splits."""
  if solver not in SOLVERS:
    raise errors.UserError(f'Unknown matcher {solver!r}; expected one of {sorted(SOLVERS)}.')
  if cost.shape[-2] < cost.shape[-1]:
    raise errors.UserError(f'{cost.shape[-2]} queries cannot match up to {cost.shape[-1]} targets; '
                           'use model.num_queries ≥ data.max_boxes.')
  if cost.shape[-1] == 0:
    return jnp.zeros(valid.shape, jnp.int32)

  def solve(cost, valid):
    lead, n = cost.shape[:-2], int(np.prod(cost.shape[:-2]))
    flat = SOLVERS[solver](cost.reshape((n,) + cost.shape[-2:]), valid.reshape(n, -1))
    return flat.reshape(lead + valid.shape[-1:])

  # Traced for a mesh (the trainer's), each device solves its own images: a host callback
  # would otherwise gather every image's costs onto one device, and one host.
  mesh, batch = jax.sharding.get_abstract_mesh(), cost.ndim - 3
  if not mesh.empty and mesh.size > 1 and cost.shape[batch] % mesh.size == 0:
    spec = P(*[None] * batch, sharding.BATCH_AXES)
    solve = jax.shard_map(solve, mesh=mesh, in_specs=(spec, spec), out_specs=spec)
  return solve(cost, valid)
