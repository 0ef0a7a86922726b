"""VQGAN's task: the judge's Fréchet distance and perceptual distance against float64 numpy,
the two players' gradients kept apart, the adaptive weight equal to the whole model's
last-layer gradients, both stages trained through the trainer (stage 2 on stage 1's
checkpoint, frozen), and the errors a user meets."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from configs import vqgan as vqgan_config
from vit_jax import errors
from vit_jax import losses
from vit_jax import metrics as metrics_lib
from vit_jax import tasks
from vit_jax import train
from vit_jax.data import classification
from vit_jax.evaluators import judge
from vit_jax.models import vqgan


def tiny(arg='tiny', **overrides):
  config = vqgan_config.get_config(arg)
  config.update_from_flattened_dict(overrides)
  return config


def sqrtm_psd(m):
  w, v = np.linalg.eigh(m)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_equals_the_formula_on_symmetric_roots():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
  b = rng.normal(size=(300, 5)) * [1, 2, 3, 0.5, 1] + 0.7
  ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = sqrtm_psd(ca)
  # Tr (Σa Σb)^½ = Tr (Σa^½ Σb Σa^½)^½, whose root is of a symmetric matrix.
  expected = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb) -
              2 * np.trace(sqrtm_psd(root @ cb @ root)))
  assert judge.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
  assert judge.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
  assert judge.frechet_distance(a, a + [3, 0, 0, 4, 0]) == pytest.approx(25, rel=1e-6)


def test_perceptual_distance_is_lpips_with_unit_weights():
  rng = np.random.default_rng(1)
  maps_a = [rng.normal(size=(2, 6, 6, 4)), rng.normal(size=(2, 3, 3, 8))]
  maps_b = [rng.normal(size=(2, 6, 6, 4)), rng.normal(size=(2, 3, 3, 8))]
  unit = lambda f: f / np.linalg.norm(f, axis=-1, keepdims=True)
  expected = sum(((unit(a) - unit(b)) ** 2).sum(-1).mean((1, 2)) for a, b in zip(maps_a, maps_b))
  np.testing.assert_allclose(judge.perceptual_distance(maps_a, maps_b), expected, rtol=1e-5)
  scaled = [3 * a for a in maps_a]  # Each position's channel vector is normalised.
  np.testing.assert_allclose(judge.perceptual_distance(maps_a, scaled), 0, atol=1e-6)


def test_the_judge_learns_and_is_cached(tmp_path):
  source = classification.make_source('mnist5k', 'train')
  images, labels = source.images[:2000] / 127.5 - 1, source.labels[:2000]
  path = str(tmp_path / 'judge.npz')
  params = judge.load_or_train(path, images, labels, 10, width=8, steps=150, seed=0)
  test = classification.make_source('mnist5k', 'test')
  _, predicted = judge.predict(judge.Classifier(10, 8), params, test.images / 127.5 - 1)
  assert np.mean(predicted == test.labels) > 0.8
  again = judge.load_or_train(path, images[:1], labels[:1], 10, width=8, steps=0)
  jax.tree.map(np.testing.assert_array_equal, params, again)  # Read back, not retrained.
  with pytest.raises(errors.UserError, match='does not fit a 10-class classifier of width 16'):
    judge.load_or_train(path, images, labels, 10, width=16)


def test_shapes32_are_generated_deterministically_with_balanced_labels():
  a, b = classification.make_source('shapes32', 'test'), classification.make_source('shapes32',
                                                                                     'test')
  assert len(a) == 1000 and a[0]['image'].shape == (32, 32, 3)
  np.testing.assert_array_equal(a.images, b.images)
  assert np.bincount(a.labels).min() > 300


@pytest.fixture(scope='module')
def stage1_batch():
  config = tiny()
  task = tasks.get_task('vqgan')(config)
  batch = helpers.training_batch(task, 4)
  params = jax.jit(task.init)(jax.random.key(0), batch)
  frozen = jax.jit(judge.Classifier(10, config.loss.perceptual_width).init)(
      jax.random.key(3), batch['image'])['params']
  return task, params, batch, frozen


def test_each_player_gets_only_its_own_gradient(stage1_batch):
  task, params, batch, frozen = stage1_batch
  task.config.loss.disc_start = 0
  grads = jax.jit(jax.grad(lambda p: task.loss_fn(p, batch, None, frozen)[0]))(params)
  _, features, _ = task.model.apply({'params': params['autoencoder']}, batch['image'])
  images = task.model.apply({'params': params['autoencoder']}, features,
                            method=vqgan.VQAutoencoder.pixels)
  stats = params['batch_stats']['discriminator']

  @jax.jit
  def hinge(d_params):
    real, new = task._discriminate(d_params, stats, batch['image'])
    fake, _ = task._discriminate(d_params, new, images)
    return losses.hinge_discriminator_loss(real, fake)

  # The discriminator learns from the hinge loss alone (not from the generator's −D(x̂)).
  # atol: float32 rounding of the two programs (2e-7 under XLA's full optimisations) against
  # gradients up to 4e-2.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads['discriminator'], jax.grad(hinge)(params['discriminator']))
  # The state is not trained.
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads['batch_stats']))


def test_the_adaptive_weight_uses_the_whole_models_last_layer_gradients(stage1_batch):
  """λ from the task (the two terms pulled back from the last layer's output) equals λ from
  the gradients of the two terms of the whole model with respect to that kernel."""
  task, params, batch, frozen = stage1_batch
  task.config.loss.update(disc_start=0, disc_weight=1.0)

  def loss_terms(params):
    """Jitted afresh: the config is read when tracing (op by op, ~200 small programs)."""
    return jax.jit(lambda p: task.loss_fn(p, batch, None, frozen)[1])(params)

  terms = loss_terms(params)
  x, stats = batch['image'], params['batch_stats']['discriminator']

  def term(kernel, which):
    p = jax.tree.map(lambda v: v, params['autoencoder'])
    p['to_pixels'] = dict(p['to_pixels'], kernel=kernel)
    recon, _, _ = task.model.apply({'params': p}, x)
    if which == 'reconstruction':
      return jnp.abs(recon - x).mean() + task._perceptual(frozen, recon, x).mean()
    fake, _ = task._discriminate(params['discriminator'], stats, recon)
    return -fake.mean()

  kernel = params['autoencoder']['to_pixels']['kernel']
  g_rec, g_adv = (jax.jit(jax.grad(term), static_argnums=1)(kernel, w)
                  for w in ('reconstruction', 'adversarial'))
  expected = np.linalg.norm(g_rec) / (np.linalg.norm(g_adv) + 1e-4)
  assert float(terms['adaptive_weight']) == pytest.approx(expected, rel=1e-4)
  task.config.loss.disc_start = 10  # Before the start, no adversarial terms.
  params = dict(params, batch_stats=dict(params['batch_stats'], step=jnp.zeros(())))
  terms = loss_terms(params)
  assert float(terms['adaptive_weight']) == 0


def read_metrics(workdir):
  return metrics_lib.read_jsonl(str(workdir / 'metrics.jsonl'))


@pytest.mark.long
def test_two_stages_train_resume_and_the_prior_keeps_the_autoencoder(tmp_path):
  stage1 = tmp_path / 'autoencoder'
  config = tiny(total_steps=40, log_every=10, eval_every=40, checkpoint_every=20,
                **{'loss.disc_start': 20, 'optim.learning_rate': 3e-3,
                   'model.autoencoder.ema_decay': 0.9})  # Codes in the state, to carry.
  train.train_and_evaluate(config, str(stage1), stop_at_step=20)
  state, final = train.train_and_evaluate(config, str(stage1))  # Resumed.
  assert float(state['params']['batch_stats']['step']) == 40  # The task's own step counter.
  l1 = [r['train/l1'] for r in read_metrics(stage1) if 'train/l1' in r]
  assert l1[-1] < 0.8 * l1[0], l1
  assert any(r.get('train/adaptive_weight', 0) > 0 for r in read_metrics(stage1)[2:])
  assert final['codes_used'] + final['dead_codes'] == 16 and final['psnr'] > 10
  assert (stage1 / 'reconstructions.png').exists() and (stage1 / 'perceptual.npz').exists()

  stage2 = tmp_path / 'prior'
  config = tiny('tiny,prior', total_steps=80, log_every=20, eval_every=80, checkpoint_every=80,
                **{'pretrained.path': str(stage1), 'optim.learning_rate': 3e-3,
                   'model.autoencoder.ema_decay': 0.9})
  prior_state, final = train.train_and_evaluate(config, str(stage2))
  loss = [r['train/loss'] for r in read_metrics(stage2) if 'train/loss' in r]
  assert loss[-1] < loss[0] - 0.2, loss
  for part in (lambda p: p['autoencoder'], lambda p: p['batch_stats']['autoencoder']):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(part(state['params'])),
                 jax.device_get(part(prior_state['params'])))  # Frozen, codes included.
  assert 0 <= final['sample_accuracy'] <= 1 and final['nll'] < np.log(16)
  assert (stage2 / 'samples.png').exists()
  # The sampling temperature is chosen on the validation digits kept from the prior.
  config.sample.temperatures = (0.5, 1.0)
  tasks.get_task('vqgan')(config, str(stage2)).choose_temperature(prior_state['params'])
  chosen = json.loads((stage2 / 'sampling.json').read_text())
  table = chosen['frechet_distance']
  assert chosen['validation_split'] == 'train[90%:]' and set(table) == {'0.5', '1.0'}
  assert table['0.5'] != table['1.0'] and chosen['temperature'] == float(min(table, key=table.get))
  # The stage-1 export fits stage 2 as well as its workdir does.
  export = train.export(config, str(stage1), str(tmp_path / 'stage1.npz'))
  task = tasks.get_task('vqgan')(config, str(tmp_path / 'other'))
  # A template of zeros (no init to compile): every value compared comes from the export.
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                       jax.eval_shape(task.init, jax.random.key(0), task.dummy_batch(2)))
  loaded = task.load_pretrained(zeros, export)
  jax.tree.map(np.testing.assert_array_equal, loaded['autoencoder'],
               jax.device_get(state['params']['autoencoder']))
  assert not (stage2 / 'judge.npz').exists()  # Stage 1's judge scored stage 2.


def test_errors_a_user_meets(tmp_path):
  with pytest.raises(errors.UserError, match=re.escape(
      "stage='prior' learns the codes of a trained autoencoder: set --config.pretrained.path "
      'to the stage-1 workdir (or its --mode=export .npz).')):
    train.train_and_evaluate(tiny('tiny,prior'), str(tmp_path / 'a'))
  config = tiny('tiny,prior', **{'pretrained.path': str(tmp_path), 'optim.lr_multipliers': ''})
  with pytest.raises(errors.UserError, match=re.escape(
      "stage='prior' keeps the autoencoder frozen: optim.lr_multipliers must give "
      "'^autoencoder/' the factor 0 (configs/vqgan.py:prior does), got ''.")):
    train.train_and_evaluate(config, str(tmp_path / 'b'))
  config = tiny('tiny,prior', **{'pretrained.path': str(tmp_path)})
  with pytest.raises(errors.NotFound, match=re.escape(
      f'No checkpoint in {tmp_path}/checkpoints: pretrained.path must be a stage-1 workdir '
      '(or its exported .npz).')):
    train.train_and_evaluate(config, str(tmp_path / 'c'))
  with pytest.raises(errors.UserError, match=re.escape(
      "Unknown stage='decoder'; expected one of ('autoencoder', 'prior').")):
    tasks.get_task('vqgan')(tiny(stage='decoder')).init(jax.random.key(0), {})
  with pytest.raises(errors.UserError, match=re.escape(
      "--mode=choose_temperature needs data.validation_split (e.g. 'train[90%:]', with "
      "data.train_split='train[:90%]').")):
    tasks.get_task('vqgan')(tiny('tiny,prior', **{'data.validation_split': ''})
                            ).choose_temperature(None)
  task = tasks.get_task('vqgan')(tiny(**{'model.num_classes': 5}))
  with pytest.raises(errors.UserError, match=re.escape(
      'Label 7 is outside 0..4 (model.num_classes=5).')):
    task.preprocess.eval({'image': np.zeros((28, 28, 1), np.uint8), 'label': 7, 'index': 0})
