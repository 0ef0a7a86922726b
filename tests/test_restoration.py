"""Image restoration (IPT): degradations, sources, the contrastive loss, metrics, training."""
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import ipt as ipt_config
from tests import helpers
from vit_jax import errors
from vit_jax import pretrained
from vit_jax import tasks
from vit_jax import train
from vit_jax.data import restoration as data
from vit_jax.ops import tiling
from vit_jax.tasks import restoration


def tiny(**overrides):
  config = ipt_config.get_config('tiny')
  config.update_from_flattened_dict(overrides)
  return config


def test_degradations():
  rng = np.random.default_rng(0)
  clean = rng.integers(0, 256, (96, 96, 3)).astype(np.uint8)
  noisy, target = data.degrade('noise25', clean[:48, :48], rng)
  assert noisy.shape == target.shape == (48, 48, 3) and noisy.dtype == np.float32
  np.testing.assert_array_equal(target, clean[:48, :48])
  assert abs((noisy - target).std() - 25) < 1  # Added, not clipped.
  small, target = data.degrade('sr2', clean, rng)
  np.testing.assert_array_equal(target, clean)
  np.testing.assert_array_equal(small, np.asarray(Image.fromarray(clean).resize((48, 48),
                                                                               Image.BICUBIC)))
  small, _ = data.degrade('sr2', clean[:, :64], rng)  # Any rectangle of even sides.
  assert small.shape == (48, 32, 3)
  rainy, target = data.degrade('rain', clean[:48, :48] // 2, rng)
  assert (rainy >= target).all() and (rainy > target).mean() > 0.02  # Streaks only brighten.


def test_task_names_and_sizes_are_checked():
  assert [data.task_scale(t) for t in ('noise50', 'sr3', 'rain')] == [1, 3, 1]
  with pytest.raises(errors.UserError, match=re.escape(
      "Unknown restoration task 'blur'; expected 'noise<σ>' (e.g. 'noise25'), 'sr<scale>' "
      "(e.g. 'sr2') or 'rain'.")):
    data.task_scale('blur')
  preprocess = data.Preprocess(['noise25', 'sr2'], 12)
  with pytest.raises(errors.UserError, match=re.escape(
      'the image is 30x20, smaller than the 24x24 crop the tasks need (data.canvas x the '
      'largest scale).')):
    preprocess.eval({'image': np.zeros((20, 30, 3), np.uint8)})


def test_evaluation_crops_are_a_fixed_grid_with_fixed_degradations(tmp_path):
  for i, size in enumerate([(50, 30), (24, 24)]):
    Image.fromarray(np.full(size[::-1] + (3,), 40 * i, np.uint8)).save(tmp_path / f'{i}.png')
  crops = data.Crops(data.Folder(tmp_path), 12)
  assert [crops.describe(k) for k in (0, 7, 8)] == [
      f'{tmp_path}/0.png crop at (0, 0)', f'{tmp_path}/0.png crop at (36, 12)',
      f'{tmp_path}/1.png crop at (0, 0)']
  assert len(crops) == 8 + 4 and len(data.Crops(data.Folder(tmp_path), 12, per_image=2)) == 4
  preprocess = data.Preprocess(['noise25', 'rain'], 12)
  first, again = preprocess.eval(crops[3]), preprocess.eval(crops[3])
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert not np.array_equal(first['input_noise25'], preprocess.eval(crops[4])['input_noise25'])
  with pytest.raises(errors.UserError, match=re.escape(
      f'{tmp_path}/0.png is 50x30, smaller than the 36x36 crops evaluation needs '
      '(data.canvas x the largest scale).')):
    data.Crops(data.Folder(tmp_path), 36)


def test_patch_contrastive_loss_equals_the_paper_equation():
  tokens = np.random.default_rng(0).normal(size=(3, 4, 5))
  f = tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)
  tau, terms = 0.5, []
  for b in range(3):
    for i in range(4):
      negatives = sum(np.exp(f[b, i] @ f[c, k] / tau)
                      for c in range(3) if c != b for k in range(4))
      terms += [-np.log(np.exp(f[b, i] @ f[b, j] / tau) / negatives)
                for j in range(4) if j != i]
  np.testing.assert_allclose(restoration.patch_contrastive_loss(jnp.asarray(tokens), tau),
                             np.mean(terms), rtol=1e-5)
  assert restoration.patch_contrastive_loss(jnp.asarray(tokens[:1]), tau) == 0


def test_image_scores_on_known_cases():
  clean = np.full((16, 16, 3), 100, np.uint8)
  scores = restoration.image_scores(clean, clean + 5)
  np.testing.assert_allclose(scores['psnr'], 10 * np.log10(255 ** 2 / 25))
  assert restoration.image_scores(clean, clean)['ssim'] == 1.0
  np.testing.assert_array_equal(restoration.to_uint8(jnp.array([-0.1, 0.5, 0.999, 2.0])),
                                [0, 128, 255, 255])


def test_ipt_fits_a_batch_of_every_task():
  task = tasks.get_task('restoration')(tiny(), None)
  history, grads = helpers.fit_one_batch(task, steps=60, learning_rate=3e-3, size=6)
  assert history[-1][0] < 0.5 * history[0][0]
  assert set(history[0][1]) == {'l1_noise25', 'l1_sr2', 'l1_rain'}
  for t in task.tasks:  # Every task learns in every step (the tails' last convolutions
    # start at zero, so the first gradient reaches them only).
    assert float(jnp.abs(grads[f'tail_{t}']['conv']['kernel']).sum()) > 0


def test_contrastive_option_adds_its_terms():
  task = tasks.get_task('restoration')(tiny(**{'loss.contrastive_weight': 0.1}), None)
  history, _ = helpers.fit_one_batch(task, steps=1, learning_rate=1e-3, size=6)
  loss, terms = history[0]
  contrastive = [terms[f'contrastive_{t}'] for t in task.tasks]
  l1 = [terms[f'l1_{t}'] for t in task.tasks]
  np.testing.assert_allclose(loss, np.mean(l1) + 0.1 * np.mean(contrastive), rtol=1e-5)


def denoise_step(rows, **overrides):
  """The tiny denoise config without the ensemble (the loss sees the plain outputs), one loss
  on `rows` noisy random crops: (task, params, batch, loss, terms, the restored images'
  error against the clean ones in float64)."""
  config = ipt_config.get_config('denoise,tiny')
  config.update_from_flattened_dict(dict(self_ensemble=False, **overrides))
  task = tasks.get_task('restoration')(config, None)
  rng = np.random.default_rng(0)
  clean = rng.integers(0, 256, (rows, 12, 12, 3)).astype(np.uint8)
  batch = {'input_noise25': clean + rng.normal(0, 25, clean.shape).astype(np.float32),
           'target_noise25': clean}
  params = task.init(jax.random.key(0), batch)
  loss, terms = task.loss_fn(params, batch, jax.random.key(1))
  restored, _ = task.restore(params, batch['input_noise25'], 0)
  return task, params, batch, loss, terms, np.asarray(restored, np.float64) - clean / 255


def test_denoise_config_trains_its_one_task_on_every_row():
  config = ipt_config.get_config('denoise,tiny')
  assert config.self_ensemble and config.optim.learning_rate == 4e-3
  task, _, _, loss, terms, error = denoise_step(5)
  assert task.tasks == ['noise25']
  every_row = np.abs(error).mean()
  np.testing.assert_allclose([loss, terms['l1_noise25']], [every_row] * 2, rtol=1e-5)


def test_l2_pixel_loss_is_the_squared_error_and_unknown_losses_are_named():
  task, params, batch, loss, terms, error = denoise_step(4, **{'loss.pixel': 'l2'})
  np.testing.assert_allclose([loss, terms['l2_noise25']], [np.square(error).mean()] * 2,
                             rtol=1e-5)
  task.config.loss.pixel = 'l3'
  with pytest.raises(errors.UserError, match=re.escape(
      "Unknown loss.pixel 'l3'; expected one of ['l1', 'l2'].")):
    task.loss_fn(params, batch, jax.random.key(1))


def test_self_ensemble_averages_the_outputs_of_the_eight_symmetries_turned_back():
  x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  views = [np.asarray(restoration.dihedral(x, k)) for k in range(8)]
  assert len({v.tobytes() for v in views}) == 8  # Eight different views ...
  for k, view in enumerate(views):  # ... each undone by its inverse.
    np.testing.assert_array_equal(restoration.dihedral(view, k, inverse=True), x)
  config = ipt_config.get_config('denoise,tiny')
  config.self_ensemble = False
  task = tasks.get_task('restoration')(config, None)
  noisy = np.random.default_rng(0).uniform(0, 255, (3, 12, 12, 3)).astype(np.float32)
  params = jax.jit(task.init)(jax.random.key(0), {'input_noise25': noisy})
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
  # Jitted (op by op the model compiles ~150 small programs); the config is read when tracing.
  single = jax.jit(lambda v: task.restore(params, v, 0)[0])
  expected = np.mean([restoration.dihedral(single(restoration.dihedral(noisy, k)), k,
                                           inverse=True) for k in range(8)], 0)
  plain = np.asarray(single(noisy))
  config.self_ensemble = True
  ensembled = np.asarray(jax.jit(lambda v: task.restore(params, v, 0)[0])(noisy))
  np.testing.assert_allclose(ensembled, expected, rtol=1e-5, atol=2e-5)
  assert np.abs(ensembled - plain).max() > 1e-3  # The model alone is not symmetric.


def test_a_validation_split_of_photographs_is_carved_from_the_training_ones():
  c = ipt_config.get_config().data
  names = lambda source: [source.describe(i).split("'")[1] for i in range(len(source))]
  assert names(data.make_source(c, 'train[2:4]')) == ['chelsea', 'clock']
  rest = names(data.make_source(c, 'train[:2]+train[4:]'))
  assert len(rest) == 12 and not {'chelsea', 'clock'} & set(rest)
  with pytest.raises(errors.UserError, match=re.escape(
      "Unknown split 'valid' for data.name='skimage'; expected 'train' or 'test', optionally "
      "sliced ('train[2:4]', 'train[:2]+train[4:]').")):
    data.make_source(c, 'valid')


@pytest.mark.long
def test_trainer_reports_baselines_draws_pictures_restores_and_fine_tunes(tmp_path, capsys):
  config = tiny()
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  final = train.last_eval(os.path.join(tmp_path, 'run', 'metrics.jsonl'))
  for t in ('noise25', 'sr2', 'rain'):
    assert {f'psnr_{t}', f'ssim_{t}', f'psnr_gain_{t}', f'l1_{t}'} <= set(final)
  best = max(final['psnr_noise25_gaussian'], final['psnr_noise25_nl_means'])
  np.testing.assert_allclose(final['psnr_gain_noise25'], final['psnr_noise25'] - best)
  assert os.path.exists(tmp_path / 'run' / 'restoration.png')
  export = str(tmp_path / 'ipt.npz')
  train.export(config, str(tmp_path / 'run'), export)

  # --mode=restore: whole images of any size, tile by tile; degraded first and scored.
  os.makedirs(tmp_path / 'photos')
  for name, size in (('wide', (31, 21)), ('square', (12, 12))):
    image = np.random.default_rng(0).integers(0, 256, size[::-1] + (3,), np.uint8)
    Image.fromarray(image).save(tmp_path / 'photos' / f'{name}.png')
  config.restore.update(input=str(tmp_path / 'photos'), task='sr2', degrade=True)
  train.run_command(config, str(tmp_path / 'run'), 'restore')
  restored = tmp_path / 'run' / 'restored'
  assert Image.open(restored / 'wide_sr2.png').size == (30, 20)  # Cropped to even sides.
  assert Image.open(restored / 'wide_sr2_input.png').size == (15, 10)
  scores = json.loads((restored / 'scores.json').read_text())
  assert set(scores['square.png']) == {'IPT', 'bicubic'}
  assert 0 < scores['square.png']['IPT']['ssim'] <= 1
  out = capsys.readouterr().out
  assert re.search(r'square.png: IPT [\d.]+ / [\d.]+, bicubic [\d.]+ / [\d.]+', out)
  assert re.search(r'mean: IPT [\d.]+ / [\d.]+, bicubic', out)
  config.restore.update(task='sr3')
  with pytest.raises(errors.UserError, match=re.escape(
      "restore.task 'sr3' is not one this IPT was trained for; expected one of ['noise25', "
      "'sr2', 'rain'].")):
    train.run_command(config, str(tmp_path / 'run'), 'restore')
  config.restore.update(task='sr2', overlap=12)
  with pytest.raises(errors.UserError, match=re.escape(
      'restore.overlap=12 must be in [0, 12): tiles are data.canvas pixels wide.')):
    train.run_command(config, str(tmp_path / 'run'), 'restore')
  older = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k != 'restore'})
  with pytest.raises(errors.UserError, match=re.escape(
      "This run's config predates --mode=restore (no config.restore); pass "
      "--config=configs/ipt.py with the run's settings.")):
    train.run_command(older, str(tmp_path / 'run'), 'restore')

  # Fine-tuning on one of its tasks and a new one: the body and sr2 load, sr3 starts fresh.
  config = tiny(**{'model.tasks': ('sr2', 'sr3'), 'pretrained.path': export})
  task = tasks.get_task('restoration')(config, None)
  fresh = task.init(jax.random.key(1), task.dummy_batch(2))
  loaded = task.load_pretrained(fresh, export)
  saved = pretrained.load_npz(export)
  np.testing.assert_array_equal(loaded['body']['embedding']['kernel'],
                                saved['body/embedding/kernel'])
  np.testing.assert_array_equal(loaded['query_sr2'], saved['query_sr2'])
  np.testing.assert_array_equal(loaded['query_sr3'], fresh['query_sr3'])
  assert 'head_noise25' not in loaded

  # A body of another shape does not fit, and the error names the parameters.
  config = tiny(**{'model.features': 4, 'model.tasks': ('sr2',)})
  task = tasks.get_task('restoration')(config, None)
  with pytest.raises(errors.UserError, match=r"does not fit IPT for tasks \['sr2'\]"):
    task.load_pretrained(task.init(jax.random.key(1), task.dummy_batch(2)), export)


@pytest.mark.parametrize('shape,scale', [((37, 50, 3), 1), ((20, 29, 3), 2), ((5, 30, 3), 2)])
def test_tiles_blend_back_into_the_whole_image(shape, scale):
  # A tile-wise operation (nearest upsampling) through overlapping tiles equals it on the
  # whole image, for sides that are not multiples of the stride and sides under one tile.
  image = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
  upsample = lambda x: x.repeat(scale, axis=-3).repeat(scale, axis=-2)
  calls = []
  def restore_batch(tiles):
    calls.append(tiles.shape)
    return upsample(tiles)
  out = tiling.restore_tiled(restore_batch, image, tile=12, scale=scale, overlap=4,
                             batch_size=8)
  np.testing.assert_allclose(out, upsample(image), rtol=1e-6)
  assert set(calls) == {(8, 12, 12, 3)}  # Full batches only: one compiled shape.


def test_tiles_overlap_and_blend_linearly():
  assert tiling.starts(37, 12, 8) == [0, 8, 16, 24, 25] and tiling.starts(5, 12, 8) == [0]
  np.testing.assert_allclose(tiling.ramp(8, 4), [0.25, 0.5, 0.75, 1, 1, 0.75, 0.5, 0.25])
  # Tile k outputs the constant k: across an overlap the blend runs linearly from one to
  # the next, with no step.
  counter = iter(range(100))
  out = tiling.restore_tiled(lambda t: np.stack([np.full(t.shape[1:], next(counter))
                                                  for _ in t]), np.zeros((12, 20, 1)), 12,
                             overlap=4, batch_size=1)
  assert np.all(out[:, :8] == 0) and np.all(out[:, 12:] == 1)
  np.testing.assert_allclose(out[0, 8:12, 0], [0.2, 0.4, 0.6, 0.8])
