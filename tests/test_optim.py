import jax
import numpy as np
import pytest

from vit_jax import optim


def test_warmup_then_cosine():
  lr = optim.make_schedule(110, 1.0, 'cosine', warmup_steps=10)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110)], [0, 0.5, 1, 0.5, 0],
                             atol=1e-6)


def test_linear_poly_and_rsqrt():
  lr = optim.make_schedule(10, 2.0, 'linear', end_lr_factor=0.5)
  np.testing.assert_allclose([lr(0), lr(5), lr(10)], [2.0, 1.5, 1.0], atol=1e-6)
  rsqrt = optim.make_schedule(0, 1.0, 'rsqrt', warmup_steps=4000, model_dim=512)
  # The paper's formula at step 100 (warming up) and 10,000 (decaying), 1-based steps.
  np.testing.assert_allclose(rsqrt(99), 512 ** -0.5 * 100 * 4000 ** -1.5, rtol=1e-5)
  np.testing.assert_allclose(rsqrt(9999), 512 ** -0.5 * 10000 ** -0.5, rtol=1e-5)
  poly = optim.make_schedule(10, 2.0, 'poly')  # lr · (1 − step / total)^0.9 (DeepLab, SETR).
  np.testing.assert_allclose([poly(0), poly(5), poly(10)], [2.0, 2.0 * 0.5 ** 0.9, 0.0],
                             atol=1e-6)


def test_weight_decay_only_on_matrices():
  mask = optim.decay_mask({'kernel': np.ones((2, 3)), 'bias': np.ones(3)})
  assert mask == {'kernel': True, 'bias': False}


def test_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match="Unknown optimizer 'adam'; expected 'adamw' or 'sgd'"):
    optim.make_optimizer(10, name='adam')
  with pytest.raises(ValueError, match="Unknown schedule 'cosin'"):
    optim.make_schedule(10, 1.0, 'cosin')


def test_lr_multipliers_scale_and_freeze_by_path():
  params = {'backbone': {'stem_bn': {'scale': np.ones(2)}, 'conv': {'kernel': np.ones((2, 2))}},
            'head': {'kernel': np.ones((2, 2))}}
  grads = {'backbone': {'stem_bn': {'scale': np.ones(2)}, 'conv': {'kernel': np.ones((2, 2))}},
           'head': {'kernel': np.ones((2, 2))}}
  tx, _ = optim.make_optimizer(10, name='sgd', learning_rate=1.0, schedule='constant',
                               momentum=0.0, weight_decay=0.5, clip_norm=None,
                               lr_multipliers='_bn/=0,backbone/=0.1')
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['backbone']['stem_bn']['scale'], 0.0)  # Frozen: no decay.
  np.testing.assert_allclose(updates['backbone']['conv']['kernel'], -0.1 * (1 + 0.5))
  np.testing.assert_allclose(updates['head']['kernel'], -(1 + 0.5))
  # Frozen parameters carry no optimizer state (optax.set_to_zero); the others' momenta do.
  tx, _ = optim.make_optimizer(10, lr_multipliers='_bn/=0,backbone/=0.1')
  state_sizes = sum(x.size for x in jax.tree.leaves(tx.init(params)) if np.ndim(x))
  assert state_sizes == 2 * (4 + 4)  # Adam's two moments of the two 2x2 kernels, not of scale.
  with pytest.raises(ValueError, match='expected "regex=factor" rules separated by commas, '
                                       "got 'backbone'"):
    optim.make_optimizer(10, lr_multipliers='backbone')
  tx, _ = optim.make_optimizer(10, lr_multipliers='backbone/=0.1,encoderblock_3/=0.5')
  with pytest.raises(ValueError, match=r"optim.lr_multipliers: 'encoderblock_3/' matches no "
                                       r"parameter; the paths look like \['backbone/conv/kernel'"):
    tx.init(params)
