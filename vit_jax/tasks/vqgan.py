"""VQGAN (Esser et al. 2021) in its two stages through the one trainer, chosen by config.stage.

'autoencoder' (stage 1): the VQ autoencoder and its patch discriminator in one optimizer step.
The generator's loss is L1 + a perceptual distance + the codebook terms + λ·(−D(x̂)); the
discriminator's is the hinge loss on real images and on the reconstructions held constant.
Stop-gradients keep each player's gradient out of the other's parameters, so one Adam over
both is two Adams. λ is the paper's adaptive weight (Eq. 7), from the gradients of the two
terms with respect to the last layer's kernel; the adversarial terms start at loss.disc_start,
the task counting its steps in its own state (a GAN's schedule is part of its state).

'prior' (stage 2): the class-conditional Transformer over the frozen autoencoder's code
indices. The autoencoder comes from the stage-1 run (config.pretrained.path: its workdir, or
its --mode=export .npz) and stays, frozen, inside the prior's parameters: a stage-2
checkpoint or export is the whole generator.

Judged (evaluators/judge.py) by a classifier trained here on the same training images and
never seen by the generator; the perceptual loss uses another one.
"""
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint as checkpoint_lib
from vit_jax import compiling
from vit_jax import errors
from vit_jax import losses
from vit_jax import optim
from vit_jax import pretrained
from vit_jax.data import classification
from vit_jax.data import pipeline
from vit_jax.evaluators import judge
from vit_jax.models import vqgan
from vit_jax.tasks import base

STAGES = ('autoencoder', 'prior')


def to_uint8(images):
  """Images in [-1, 1] → uint8 0..255, as saved."""
  return jnp.round(jnp.clip((images + 1) * 127.5, 0, 255)).astype(jnp.uint8)


def to_float(images):
  """uint8 images → [-1, 1] (as the data pipeline normalises them)."""
  return np.asarray(images, np.float32) / 127.5 - 1.0


class Indexed:
  """A source whose examples carry their position ('index'): the seed of their samples."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return dict(self.source[i], index=i)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """The classification pipeline's images in [-1, 1], with the label checked against the
  number of classes and the example's index."""
  image: classification.Preprocess
  num_classes: int

  def _finish(self, out, example):
    if not 0 <= example['label'] < self.num_classes:
      raise errors.UserError(f"Label {example['label']} is outside 0..{self.num_classes - 1} "
                             f'(model.num_classes={self.num_classes}).')
    return dict(out, index=np.int32(example['index']))

  def train(self, example, rng):
    return self._finish(self.image.train(example, rng), example)

  def eval(self, example):
    return self._finish(self.image.eval(example), example)


class VqganTask(base.Task):

  @property
  def stage(self):
    if self.config.stage not in STAGES:
      raise errors.UserError(f'Unknown stage={self.config.stage!r}; expected one of {STAGES}.')
    return self.config.stage

  @property
  def num_classes(self):
    return self.config.model.num_classes

  @functools.cached_property
  def preprocess(self):
    c = self.config.data
    image = classification.Preprocess(c.image_size, augment=c.augment, flip=c.flip,
                                      channels=c.channels)
    return Preprocess(image, self.num_classes)

  def source(self, split):
    c = self.config.data
    return Indexed(classification.make_source(c.name, split, c.data_dir or None))

  @functools.cached_property
  def sources(self):
    return self.source(self.config.data.train_split), self.source(self.config.data.eval_split)

  def datasets(self):
    return base.Datasets(*self.sources, self.preprocess)

  # Models ---------------------------------------------------------------------------------
  def build_model(self):
    """The stage-1 autoencoder (both stages use it)."""
    m = self.config.model.autoencoder
    vqgan.check_size(self.config.data.image_size, len(m.channel_mult), 'data.image_size')
    return vqgan.VQAutoencoder(image_channels=self.config.data.channels,
                               **{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                  for k, v in m.items()})

  @functools.cached_property
  def discriminator(self):
    return vqgan.PatchDiscriminator(**self.config.model.discriminator)

  @property
  def grid(self):
    """The side of the code grid: the image side over 2 per downsampling."""
    return self.config.data.image_size // 2 ** (len(self.model.channel_mult) - 1)

  @functools.cached_property
  def prior(self):
    return vqgan.Prior(num_codes=self.model.num_codes, length=self.grid ** 2,
                       num_classes=self.num_classes, **self.config.model.prior)

  def dummy_batch(self, batch_size):
    s, c = self.config.data.image_size, self.config.data.channels
    return {'image': np.zeros((batch_size, s, s, c), np.float32),
            'label': np.zeros((batch_size,), np.int32),
            'index': np.zeros((batch_size,), np.int32)}

  def init(self, rng, batch):
    """{'autoencoder', 'discriminator' (stage 1) or 'prior' (stage 2), 'batch_stats':
    {'autoencoder' (moving-average codes, if any), 'discriminator' (BatchNorm), 'step'}}."""
    stage = self.stage
    k_autoencoder, k_other = jax.random.split(rng)
    autoencoder = self.model.init({'params': k_autoencoder}, batch['image'])
    params = {'autoencoder': autoencoder['params']}
    state = {'autoencoder': autoencoder['batch_stats']} if 'batch_stats' in autoencoder else {}
    if stage == 'autoencoder':
      discriminator = self.discriminator.init(k_other, batch['image'])
      params['discriminator'] = discriminator['params']
      state.update(discriminator=discriminator['batch_stats'], step=jnp.zeros((), jnp.float32))
    else:
      codes = jnp.zeros((batch['image'].shape[0], self.prior.length), jnp.int32)
      params['prior'] = self.prior.init(k_other, codes, batch['label'])['params']
    if state:
      params['batch_stats'] = state
    return params

  def _autoencoder_variables(self, params):
    variables = {'params': params['autoencoder']}
    if 'autoencoder' in params.get('batch_stats', {}):
      variables['batch_stats'] = params['batch_stats']['autoencoder']
    return variables

  def _discriminate(self, d_params, d_stats, images):
    logits, state = self.discriminator.apply({'params': d_params, 'batch_stats': d_stats},
                                             images, train=True, mutable=['batch_stats'])
    return logits, state['batch_stats']

  def _perceptual(self, frozen, a, b):
    model = judge.Classifier(self.num_classes, self.config.loss.perceptual_width)
    maps = lambda x: model.apply({'params': frozen}, x)[1]
    return judge.perceptual_distance(maps(a), maps(b))

  def codes(self, params, images):
    """The frozen autoencoder's code indices of images [B, H, W, C] → [B, h·w]."""
    _, aux = self.model.apply(self._autoencoder_variables(params), images,
                              method=vqgan.VQAutoencoder.encode)
    return jax.lax.stop_gradient(aux['indices'].reshape(images.shape[0], -1))

  # Losses ---------------------------------------------------------------------------------
  def loss_fn(self, params, batch, rng, frozen=None):
    if self.stage == 'autoencoder':
      return self._autoencoder_loss(params, batch, frozen)
    codes = self.codes(params, batch['image'])
    logits = self.prior.clone(deterministic=False).apply(
        {'params': params['prior']}, codes, batch['label'], rngs={'dropout': rng})
    metrics = {'code_accuracy': losses.ratio(losses.weighted_accuracy(logits, codes))}
    if 'batch_stats' in params:  # The frozen codes, written back untouched (no weight decay).
      metrics[base.STATE] = {'batch_stats': params['batch_stats']}
    return losses.softmax_cross_entropy(logits, codes).mean(), metrics

  def _autoencoder_loss(self, params, batch, frozen):
    c, x = self.config.loss, batch['image']
    state = params['batch_stats']
    (_, features, vq), new_autoencoder = self.model.apply(
        self._autoencoder_variables(params), x, train=True, mutable=['batch_stats'])
    d_params = params['discriminator']

    def generator_terms(to_pixels):
      """The last layer's kernel → (reconstruction term, adversarial term), parts."""
      images = self.model.apply({'params': dict(params['autoencoder'], to_pixels=to_pixels)},
                                features, method=vqgan.VQAutoencoder.pixels)
      l1 = jnp.abs(images - x).mean()
      perceptual = (self._perceptual(frozen, images, x).mean() if c.perceptual_weight
                    else jnp.zeros(()))
      fake, _ = self._discriminate(jax.lax.stop_gradient(d_params), state['discriminator'],
                                   images)
      return (l1 + c.perceptual_weight * perceptual, -jnp.mean(fake)), dict(
          images=images, l1=l1, perceptual=perceptual, logits_fake=jnp.mean(fake))

    (reconstruction, adversarial), pullback, parts = jax.vjp(
        generator_terms, params['autoencoder']['to_pixels'], has_aux=True)
    one, zero = jnp.ones(()), jnp.zeros(())
    weight = c.disc_weight * losses.adaptive_weight(pullback((one, zero))[0]['kernel'],
                                                    pullback((zero, one))[0]['kernel'])
    real, d_stats = self._discriminate(d_params, state['discriminator'], x)
    fake, d_stats = self._discriminate(d_params, d_stats,
                                       jax.lax.stop_gradient(parts['images']))
    discriminator = losses.hinge_discriminator_loss(real, fake)
    on = (state['step'] >= c.disc_start).astype(jnp.float32)
    loss = (reconstruction + c.codebook_weight * vq['loss'] +
            on * (weight * adversarial + discriminator))
    new_state = {'discriminator': d_stats, 'step': state['step'] + 1}
    if new_autoencoder.get('batch_stats'):  # The moving-average codes.
      new_state['autoencoder'] = new_autoencoder['batch_stats']
    return loss, {'l1': parts['l1'], 'perceptual': parts['perceptual'], 'codebook': vq['loss'],
                  'adversarial': adversarial, 'discriminator': discriminator,
                  'adaptive_weight': weight * on, 'logits_real': jnp.mean(real),
                  'logits_fake': parts['logits_fake'], 'perplexity': vq['perplexity'],
                  base.STATE: {'batch_stats': new_state}}

  # Evaluation -----------------------------------------------------------------------------
  def samples(self, params, labels, rng, temperature=None):
    """Class-conditional images (uint8) of `labels` [B] from the prior and the decoder, at
    config.sample's settings (or the temperature given)."""
    s = self.config.sample
    temperature = s.temperature if temperature is None else temperature
    codes = vqgan.sample(self.prior, params['prior'], labels, rng, temperature, s.top_k or None)
    images = self.model.apply(self._autoencoder_variables(params),
                              codes.reshape(-1, self.grid, self.grid),
                              method=vqgan.VQAutoencoder.decode_indices)
    return to_uint8(images)

  def eval_step(self, params, batch):
    """Stage 1: L1 per image; the reconstructions and code indices. Stage 2: the prior's
    negative log-likelihood (nats per code) and next-code accuracy; one sample of each
    example's class (seeded by the batch's first index)."""
    x, weight = batch['image'], batch[pipeline.WEIGHT]
    if self.stage == 'autoencoder':
      recon, _, vq = self.model.apply(self._autoencoder_variables(params), x)
      l1 = jnp.abs(recon - x).mean((1, 2, 3))
      return ({'l1': losses.weighted_mean(l1, weight)},
              {'reconstruction': to_uint8(recon), 'indices': vq['indices']})
    codes = self.codes(params, x)
    logits = self.prior.apply({'params': params['prior']}, codes, batch['label'])
    nll = losses.softmax_cross_entropy(logits, codes).mean(-1)
    correct = (jnp.argmax(logits, -1) == codes).mean(-1)
    rng = jax.random.fold_in(jax.random.key(self.config.seed), batch['index'][0])
    return ({'nll': losses.weighted_mean(nll, weight),
             'code_accuracy': losses.weighted_mean(correct, weight)},
            {'sample': self.samples(params, batch['label'], rng)})

  @functools.lru_cache(maxsize=2)
  def _images(self, source):
    """(images in [-1, 1] [N, H, W, C], labels [N]) of a whole split, eval-preprocessed
    (once per split: both classifiers and every evaluation read them)."""
    examples = [self.preprocess.eval(source[i]) for i in range(len(source))]
    return (np.stack([e['image'] for e in examples]),
            np.array([e['label'] for e in examples]))

  def _classifier(self, name, width, steps, seed):
    """A judge.Classifier trained on the training split, cached in the workdir; stage 2
    reads stage 1's from its workdir (pretrained.path), so one judge scores both stages."""
    images, labels = self._images(self.sources[0])
    path = os.path.join(self.workdir, f'{name}.npz') if self.workdir else None
    stage1 = os.path.join(self.config.pretrained.path, f'{name}.npz')
    if (self.stage == 'prior' and os.path.isdir(self.config.pretrained.path) and
        os.path.exists(stage1) and not (path and os.path.exists(path))):
      path = stage1
    kwargs = dict(width=width, steps=steps, seed=seed, desc=f'training the {name} classifier')
    if path:
      return judge.load_or_train(path, images, labels, self.num_classes, **kwargs)
    return judge.train(images, labels, self.num_classes, **kwargs)

  @functools.cached_property
  def judge(self):
    """(model, params) of the held-out judge: never part of any loss."""
    c = self.config.judge
    return (judge.Classifier(self.num_classes, c.width),
            self._classifier('judge', c.width, c.steps, c.seed))

  @functools.lru_cache(maxsize=2)
  def real_statistics(self, source):
    """The judge's embeddings of the real held-out images, its accuracy on them, and the
    Fréchet distance from the training images' embeddings (what two real samples score)."""
    model, params = self.judge
    images, labels = self._images(source)
    embedded, predicted = judge.predict(model, params, images)
    train_embedded, _ = judge.predict(model, params, self._images(self.sources[0])[0])
    return embedded, {'judge_accuracy_real': float(np.mean(predicted == labels)),
                      'frechet_distance_train_vs_eval': judge.frechet_distance(train_embedded,
                                                                               embedded)}

  def eval_metrics(self, outputs, source):
    """Stage 1: PSNR of the reconstructions, codes used and dead, the perplexity of their use
    over the split, and the judge's accuracy on and Fréchet distance of the reconstructions.
    Stage 2: the judge's accuracy on the class-conditional samples (sample_accuracy) and
    their Fréchet distance from the held-out images."""
    from skimage import metrics
    model, params = self.judge
    real, scores = self.real_statistics(source)
    scores, labels = dict(scores), self._images(source)[1]  # Not the cached dict itself.
    name = 'reconstruction' if self.stage == 'autoencoder' else 'sample'
    generated = outputs[name]
    embedded, predicted = judge.predict(model, params, to_float(generated))
    scores[f'{name}_accuracy'] = float(np.mean(predicted == labels))
    scores['frechet_distance'] = judge.frechet_distance(embedded, real)
    if self.stage == 'autoencoder':
      targets = [source[i]['image'] for i in range(len(source))]
      scores['psnr'] = float(np.mean([
          metrics.peak_signal_noise_ratio(t.reshape(r.shape), r, data_range=255)
          for t, r in zip(targets, generated)]))
      counts = np.bincount(outputs['indices'].ravel(), minlength=self.model.num_codes)
      scores['codes_used'] = int((counts > 0).sum())
      scores['dead_codes'] = int((counts == 0).sum())
      p = counts[counts > 0] / counts.sum()
      scores['code_perplexity'] = float(np.exp(-(p * np.log(p)).sum()))
    return scores

  # Stage 2 set-up -------------------------------------------------------------------------
  def frozen_params(self):
    """Stage 1: the perceptual loss's classifier (trained on first use). Stage 2: nothing
    (the autoencoder is in the parameters); here it checks that training can start."""
    if self.stage == 'autoencoder':
      c = self.config.loss
      return (self._classifier('perceptual', c.perceptual_width, c.perceptual_steps,
                               c.perceptual_seed) if c.perceptual_weight else None)
    resuming = self.workdir and os.path.isdir(os.path.join(self.workdir, 'checkpoints'))
    if not self.config.pretrained.path and not resuming:
      raise errors.UserError(
          "stage='prior' learns the codes of a trained autoencoder: set "
          '--config.pretrained.path to the stage-1 workdir (or its --mode=export .npz).')
    frozen = optim.frozen_mask(jax.eval_shape(self.init, jax.random.key(0),
                                              self.dummy_batch(1)),
                               self.config.optim.lr_multipliers)
    if frozen is None or not all(jax.tree.leaves(frozen['autoencoder'])):
      raise errors.UserError(
          "stage='prior' keeps the autoencoder frozen: optim.lr_multipliers must give "
          "'^autoencoder/' the factor 0 (configs/vqgan.py:prior does), got "
          f'{self.config.optim.lr_multipliers!r}.')
    return None

  def load_pretrained(self, params, path):
    """Stage 2: the autoencoder of a stage-1 workdir's newest checkpoint or of its export
    (anything else there, the discriminator, is left); the prior starts fresh."""
    if self.stage == 'autoencoder':
      return super().load_pretrained(params, path)
    if os.path.isdir(path):
      if not os.path.isdir(os.path.join(path, 'checkpoints')):
        raise errors.NotFound(f'No checkpoint in {path}/checkpoints: pretrained.path must be a '
                              'stage-1 workdir (or its exported .npz).')
      checkpoints = checkpoint_lib.Checkpointer(path, keep=None)
      state, _ = checkpoints.restore_newest()
      checkpoints.close()
      if state is None:
        raise errors.NotFound(f'No readable checkpoint in {path}/checkpoints.')
      restored = pretrained.flatten(jax.device_get(state['params']))
    else:
      restored = pretrained.load_npz(path)
    restored = {k: v for k, v in restored.items()
                if k.startswith(('autoencoder/', 'batch_stats/autoencoder/'))}
    return pretrained.fit(params, restored, fresh=('prior/',), source=f'Stage 1 {path!r}',
                          what="stage 2's autoencoder (config.model.autoencoder)")

  # Pictures ---------------------------------------------------------------------------------
  def write_plots(self, params, workdir):
    """Stage 1: reconstructions.png (held-out images over their reconstructions). Stage 2:
    samples.png (a row of class-conditional samples per class)."""
    from vit_jax import plots
    if self.stage == 'prior':
      return [self.write_samples(params, os.path.join(workdir, 'samples.png'))]
    source = self.sources[1]
    picks = np.linspace(0, len(source) - 1, 12).round().astype(int)
    images = np.stack([self.preprocess.eval(source[i])['image'] for i in picks])
    recon = compiling.run_once(lambda p, x: to_uint8(self.model.apply(
        self._autoencoder_variables(p), x)[0]), params, images)
    return [plots.image_grid([('held-out', np.asarray(to_uint8(images))),
                              ('reconstructed', np.asarray(recon))],
                             os.path.join(workdir, 'reconstructions.png'),
                             'VQGAN stage 1: held-out images and their reconstructions')]

  def write_samples(self, params, path):
    from vit_jax import plots
    n = self.config.sample.per_class
    labels = jnp.repeat(jnp.arange(self.num_classes), n)
    images = np.asarray(self._sampler(params, labels, jax.random.key(self.config.seed)))
    s = self.config.sample
    return plots.image_grid(
        [(f'class {k}', images[k * n:(k + 1) * n]) for k in range(self.num_classes)], path,
        f'VQGAN samples (temperature {s.temperature}, top-k {s.top_k or "all"})')

  @functools.cached_property
  def _sampler(self):
    """`samples` compiled once: the temperature is an argument, so every one shares it."""
    return jax.jit(self.samples)

  def _draw(self, params, labels, seed, temperature):
    """One sample of each label, batch by batch as evaluation draws them (batch i seeded by
    fold_in(key(seed), i))."""
    n = self.config.eval_batch_size
    return np.concatenate([
        jax.device_get(self._sampler(params, labels[i:i + n],
                                     jax.random.fold_in(jax.random.key(seed), i), temperature))
        for i in range(0, len(labels), n)])

  def sample_and_judge(self, params):
    """--mode=sample: with config.sample's settings (temperature, top-k), one sample of each
    held-out example's class, drawn as evaluation draws them, judged as evaluation judges
    them (printed); and samples.png in the workdir."""
    source = self.sources[1]
    labels = self._images(source)[1].astype(np.int32)
    generated = self._draw(params, labels, self.config.seed, self.config.sample.temperature)
    scores = self.eval_metrics({'sample': generated}, source)
    print(json.dumps({**dict(self.config.sample), **scores}))
    print(f'Samples: {self.write_samples(params, os.path.join(self.workdir, "samples.png"))}')

  def choose_temperature(self, params):
    """--mode=choose_temperature: for each of config.sample.temperatures, one sample of each
    validation example's class (data.validation_split, carved from the training data and
    never trained on) and their Fréchet distance from the validation images in the judge's
    features; prints the table and the temperature with the least distance, and writes them
    to sampling.json. The held-out split is not read, and the samples are seeded apart from
    evaluation's (seed + 1)."""
    split = self.config.data.get('validation_split')
    if not split:
      raise errors.UserError('--mode=choose_temperature needs data.validation_split (e.g. '
                             "'train[90%:]', with data.train_split='train[:90%]').")
    images, labels = self._images(self.source(split))
    model, judge_params = self.judge
    real, _ = judge.predict(model, judge_params, images)
    table = {}
    for t in self.config.sample.temperatures:
      generated = self._draw(params, labels.astype(np.int32), self.config.seed + 1, t)
      table[float(t)] = judge.frechet_distance(judge.predict(model, judge_params,
                                                             to_float(generated))[0], real)
      print(f'temperature {t:g}: Fréchet distance {table[float(t)]:.3f} on {split} '
            f'({len(labels)} images)')
    best = min(table, key=table.get)
    result = {'validation_split': split, 'frechet_distance': table, 'temperature': best}
    with open(os.path.join(self.workdir, 'sampling.json'), 'w') as f:
      json.dump(result, f, indent=1)
    print(json.dumps(result))
    print(f'Least distance at temperature {best:g}: --config.sample.temperature={best:g}')

  def commands(self):
    if self.stage != 'prior':
      return {}
    return {'sample': self.sample_and_judge, 'choose_temperature': self.choose_temperature}
