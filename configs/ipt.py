"""IPT image restoration (Chen et al. 2021): per-task convolutional heads and tails around one
shared Transformer body, trained on several degradations at once.

Default (no argument): scikit-image's sample photographs (14 for training, 4 held out:
astronaut, camera, coffee, coins), degraded on the fly for three tasks (Gaussian noise σ=25,
2x bicubic super-resolution, rain streaks), 24x24 inputs, a 2+2-layer body on 3x3 patches of
16-channel features (residual learning over the input: model.input_skip); PSNR and SSIM on the held-out images' 48x48 crops, beside classic
baselines (Gaussian blur and non-local means; bicubic; a median filter) on the same inputs.
  python main.py --config=configs/ipt.py --workdir=/tmp/ipt
  python main.py --workdir=/tmp/ipt --mode=restore --config.restore.input=photo.png \\
      --config.restore.task=noise25  # Whole images, tile by tile: see config.restore.
  Measured (3,000 steps of 32, 20 min 11 s on a 2-core AMD EPYC (Zen 4) CPU), PSNR / SSIM on
  the 344 held-out crops: noise25 32.22 / 0.854 (non-local means 31.28 / 0.804: +0.94 dB),
  sr2 35.09 / 0.917 (bicubic 33.67 / 0.892: +1.42 dB), rain 34.88 / 0.904 (median filter
  23.00 / 0.592).

Arguments (comma-separated): 'tiny' for tests and smoke runs; 'shapes' for the synthetic
shapes of configs/detr.py instead of the photographs (one crop of each of the 500 held-out
images; measured: noise25 +1.31 dB over non-local means, sr2 +1.82 dB over bicubic, in 18 min
45 s of training); 'denoise' for one task, noise25, on all of the batch's rows, 3,000 steps
at learning rate 4e-3 with the geometric self-ensemble at inference (the paper fine-tunes per
task; the learning rate and the ensemble were chosen on a validation split carved from the
training photographs, --config.data.train_split='train[:2]+train[4:]'
--config.data.eval_split='train[2:4]'; evaluated on all 1,474 held-out 24x24 crops, as the
crop grid follows the largest scale; measured: 33.35 / 0.871 against non-local means' 31.14 /
0.793, +2.21 dB (+1.96 without the ensemble), 18.7 min of training steps, 22.5 min with the
three evaluations, on a 2-core AMD EPYC Zen 3); 'paper' for the paper's model (48x48 inputs,
64 features, 12+12 layers of 12 heads, no input skip; tasks noise30, noise50, sr2, sr3, sr4
and rain; contrastive weight 0.1) on a folder of images (e.g. ImageNet or DIV2K) in data_dir:
  python main.py --config=configs/ipt.py:paper --config.data.data_dir=/data/div2k
"""
import ml_collections

from configs import common


def get_config(arg=''):
  args = common.parse_args(arg, ['tiny', 'shapes', 'denoise', 'paper'])
  c = common.trainer_config()
  c.task = 'restoration'
  c.model = ml_collections.ConfigDict(dict(
      tasks=('noise25', 'sr2', 'rain'),  # 'noise<σ>', 'sr<scale>', 'rain': a head and tail each.
      features=16, patch_size=3, num_layers=2, num_heads=4, mlp_dim=576,
      dropout_rate=0.0, attention_dropout_rate=0.0,
      input_skip=True))  # Learn the residual over the (upsampled) input; False: the paper's.
  # pixel: 'l1' (the paper's) or 'l2'; IPT's patch-level contrastive loss (Eq. 4; the
  # paper's weight is 0.1).
  c.loss = ml_collections.ConfigDict(dict(pixel='l1', contrastive_weight=0.0, temperature=0.1))
  c.data = ml_collections.ConfigDict(dict(
      name='skimage', data_dir='', train_split='train', eval_split='test',
      canvas=24,        # Input side; targets are canvas x the task's scale.
      augment=True,     # Random flips and 90° rotations.
      eval_crops=None,  # At most this many evaluation crops per held-out image (None: all).
      num_threads=2,
      # The shapes (data/detection.py), as configs/detr.py makes them.
      shapes_seed=0, shapes_train_images=4000, shapes_eval_images=500, shapes_min_size=48,
      shapes_max_size=64, shapes_max_objects=3, shapes_object_size=(0.25, 0.67)))
  # --mode=restore: whole images (a file or a folder), tile by tile; with degrade=True they
  # are clean images, degraded for the task first (seed) and scored against the originals.
  c.restore = ml_collections.ConfigDict(dict(
      input='', task='', output='', overlap=8, batch_size=64, degrade=False, seed=0))
  # Geometric self-ensemble at inference (evaluation, plots, --mode=restore): the mean of the
  # outputs for the input's 8 flips and quarter turns, each turned back (EDSR+, Lim et al.
  # 2017); 8x the inference cost, none in training.
  c.self_ensemble = False
  c.total_steps = 3000
  c.batch_size = 32
  c.eval_batch_size = 128
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.optim.update(name='adamw', learning_rate=1e-3, schedule='cosine', warmup_steps=100,
                 weight_decay=0.0, clip_norm=1.0)

  if 'denoise' in args:  # One task: three times the rows a multi-task step gives it.
    c.model.tasks = ('noise25',)
    c.optim.learning_rate = 4e-3  # Chosen on the validation split, as the self-ensemble.
    c.self_ensemble = True
  if 'shapes' in args:
    c.data.name = 'shapes'
    c.data.eval_crops = 1
  if 'tiny' in args:
    c.model.update(features=8, num_layers=1, num_heads=2, mlp_dim=32)
    c.data.update(name='shapes', canvas=12, eval_crops=1, shapes_train_images=8,
                  shapes_eval_images=4, shapes_min_size=24, shapes_max_size=32)
    c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 8
    c.log_every, c.eval_every, c.checkpoint_every = 2, 4, 4
    c.optim.warmup_steps = 1
  if 'paper' in args:  # §4: 48x48 inputs, 6 tasks, batch 256, 300 epochs of ImageNet.
    c.model.update(tasks=('noise30', 'noise50', 'sr2', 'sr3', 'sr4', 'rain'), features=64,
                   num_layers=12, num_heads=12, mlp_dim=2304, input_skip=False)
    c.loss.contrastive_weight = 0.1
    c.data.update(name='folder', canvas=48, eval_crops=4)
    c.total_steps, c.batch_size = 300_000, 256
    c.eval_every, c.checkpoint_every = 10_000, 10_000
    # Adam at 5e-5 as the paper; it decays to 2e-5 at epoch 200, the 'step' schedule by x0.1.
    c.optim.update(learning_rate=5e-5, schedule='step', drop_steps=(200_000,), warmup_steps=0,
                   weight_decay=0.0)
  return c
