"""bfloat16 compute with float32 parameters, and rematerialisation, for every family."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import FAMILIES
from helpers import loss_and_grads
from helpers import tiny
from vit_jax import train


@pytest.mark.parametrize('family', ['vit', 'transformer'])  # Encoder and decoder blocks.
def test_remat_changes_memory_not_results(family, tmp_path):
  config = tiny(family, **{'model.dropout_rate': 0.1} if family != 'vit' else {})
  params, loss, grads = loss_and_grads(config, tmp_path)
  config.remat = True
  _, remat_loss, remat_grads = loss_and_grads(config, tmp_path, params)
  np.testing.assert_allclose(loss, remat_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads,
               remat_grads)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_bfloat16_compute_keeps_float32_parameters_and_loss(family, tmp_path):
  config = tiny(family)
  params, loss, grads = loss_and_grads(config, tmp_path)
  config.dtype = 'bfloat16'
  _, bf16_loss, bf16_grads = loss_and_grads(config, tmp_path, params)
  assert bf16_loss.dtype == jnp.float32
  assert {g.dtype for g in jax.tree.leaves(bf16_grads)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_allclose(bf16_loss, loss, rtol=3e-2)  # bf16 keeps ~3 significant digits.
  flat, bf16_flat = (np.concatenate([g.ravel() for g in jax.tree.leaves(t)])
                     for t in (grads, bf16_grads))
  difference = np.linalg.norm(bf16_flat - flat) / np.linalg.norm(flat)
  assert difference > 0  # The matmuls really ran in bf16.
  if family != 'detr':  # DETR's Hungarian matching can pair near-tied boxes differently.
    assert difference < 0.05


def test_bfloat16_training_learns(tmp_path):
  config = tiny('vit', dtype='bfloat16', total_steps=60, batch_size=64, eval_every=60,
                log_every=10, **{'optim.learning_rate': 3e-3, 'data.augment': 'none'})
  state, result = train.train_and_evaluate(config, str(tmp_path))
  assert {p.dtype for p in jax.tree.leaves(state['params'])} == {jnp.dtype(jnp.float32)}
  assert result['accuracy'] > 0.2  # Chance is 0.1.


def test_unknown_dtype_is_named():
  with pytest.raises(ValueError, match=r"Unknown dtype 'float16'; expected one of "
                                       r"\('float32', 'bfloat16'\)"):
    train.Trainer(tiny('vit', dtype='float16'))
