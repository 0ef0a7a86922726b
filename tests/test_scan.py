"""Scan over layers: the same model as the Python loop, with stacked parameters."""
import jax
import numpy as np
import pytest

from helpers import loss_and_grads
from helpers import tiny
from vit_jax import checkpoint
from vit_jax import pretrained
from vit_jax import train
from vit_jax.layers import kernels
from vit_jax.layers import transformer
from vit_jax.models import transformer as transformer_model
from vit_jax.ops import decoding


flat = pretrained.flatten


def stacked(params):
  """Loop parameters ('encoderblock_0', ...) in the scanned layout."""
  return pretrained.unflatten(pretrained.stack_layers(flat(params)))


@pytest.mark.parametrize('family,remat', [('vit', False), ('vit', True), ('transformer', False)])
def test_scanned_stacks_give_the_loop_loss_and_gradients(family, remat, tmp_path):
  config = tiny(family, **{'model.dropout_rate': 0.0})  # Scan draws other dropout masks.
  params, loss, grads = loss_and_grads(config, tmp_path)
  config.scan_layers, config.remat = True, remat
  scan_params, scan_loss, scan_grads = loss_and_grads(config, tmp_path, stacked(params))
  assert any('encoderblock/' in k for k in flat(scan_params))
  np.testing.assert_allclose(scan_loss, loss, rtol=1e-5)
  expected = pretrained.stack_layers(flat(grads))
  for key, value in flat(scan_grads).items():
    np.testing.assert_allclose(value, expected[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_scanned_encoder_returns_every_layer_and_applies_each_layers_droppath_rate():
  x = np.random.default_rng(0).normal(size=(64, 4, 8)).astype(np.float32)
  config = transformer.BlockConfig(num_heads=2, mlp_dim=16, droppath_rate=0.5, norm_first=True,
                                   compute=kernels.Compute(scan_layers=True))
  enc = transformer.Encoder(num_layers=3, config=config)
  params = enc.init(jax.random.key(0), x)
  assert jax.tree.leaves(params['params']['encoderblock'])[0].shape[0] == 3
  _, clean = enc.apply(params, x)
  _, noisy = enc.apply(params, x, deterministic=False, return_attention=True,
                       rngs={'dropout': jax.random.key(1)})
  assert len(noisy['layers']) == 3 and noisy['attention'][2].shape == (64, 2, 4, 4)
  # Rates 0, 0.25, 0.5: no example skips the first block; about a quarter skip both branches
  # of the last one (its output equals its input).
  np.testing.assert_allclose(noisy['layers'][0], clean['layers'][0], atol=1e-6)
  skipped = np.all(np.asarray(noisy['layers'][2]) == np.asarray(noisy['layers'][1]), axis=(1, 2))
  assert 5 <= skipped.sum() <= 30


def test_scanned_decoder_stack_equals_the_loop_with_every_output_normed():
  rng = np.random.default_rng(0)
  x, memory = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 6, 8))
  kw = dict(num_layers=3, final_norm=True, norm_every_output=True)
  config = lambda scan: transformer.BlockConfig(num_heads=2, mlp_dim=16,
                                                compute=kernels.Compute(scan_layers=scan))
  params = transformer.Decoder(**kw, config=config(False)).init(jax.random.key(0), x,
                                                                memory)['params']
  out, aux = transformer.Decoder(**kw, config=config(False)).apply(
      {'params': params}, x, memory, return_attention=True)
  scan_out, scan_aux = transformer.Decoder(**kw, config=config(True)).apply(
      {'params': stacked(params)}, x, memory, return_attention=True)
  np.testing.assert_allclose(scan_out, out, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), scan_aux, aux)


def test_scanned_decoder_decodes_like_the_loop():
  """Greedy and beam search with a stacked [L, B, ...] key/value cache."""
  kw = dict(vocab_size=19, num_layers=2, hidden_size=32, mlp_dim=64, num_heads=4, max_length=32)
  loop, scan = (transformer_model.Transformer(**kw, compute=kernels.Compute(scan_layers=s))
                for s in (False, True))
  source = np.random.default_rng(0).integers(3, 19, (3, 6))
  source[2, 3:] = 0
  params = jax.jit(loop.init)(jax.random.key(1), source, source)['params']
  args = dict(max_length=8, bos_id=1, eos_id=2)
  for search in (decoding.greedy,
                 lambda *a, **k: decoding.beam_search(*a, **k, beam_size=3,
                                                      return_attention=True)):
    expected = jax.jit(lambda p, s: search(loop, p, s, **args))(params, source)
    got = jax.jit(lambda p, s: search(scan, p, s, **args))(stacked(params), source)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1], atol=1e-4)
    np.testing.assert_allclose(got[2], expected[2], atol=1e-5)


def test_export_writes_per_layer_names_and_finetunes_into_either_layout(tmp_path):
  config = tiny(total_steps=2, scan_layers=True, log_every=1, eval_every=2,
                checkpoint_every=2)
  train.train_and_evaluate(config, str(tmp_path / 'scan'))
  path = train.export(config, str(tmp_path / 'scan'))
  saved = pretrained.load_npz(path)
  assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel' in saved
  assert not any('encoderblock/' in k for k in saved)
  for scan in (True, False):
    abstract = train.Trainer(tiny(scan_layers=scan)).abstract_state['params']
    init = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
    loaded = flat(pretrained.load_vit(init, saved, grid=(4, 4), reset_head=False))
    assert any('encoderblock/' in k for k in loaded) == scan
    per_layer = pretrained.unstack_layers(loaded)
    assert per_layer.keys() == saved.keys()
    for key, value in saved.items():
      np.testing.assert_array_equal(per_layer[key], value, err_msg=key)


def test_resuming_with_the_other_layout_says_which_to_use(tmp_path):
  train.train_and_evaluate(tiny(total_steps=2, checkpoint_every=2, eval_every=2),
                           str(tmp_path))
  with pytest.raises(checkpoint.CheckpointMismatch,
                     match=r'written with scan_layers=False; run with '
                           r'--config.scan_layers=False'):
    train.train_and_evaluate(tiny(total_steps=4, checkpoint_every=2, eval_every=2,
                                  scan_layers=True), str(tmp_path))
