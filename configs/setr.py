"""SETR semantic segmentation (Zheng et al. 2021): the ViT encoder and a convolutional decoder.

Default (no argument): the embedded synthetic shapes of configs/detr.py (48-64 px images of
1-3 circles, rectangles and triangles on textured backgrounds, generated deterministically)
with their semantic maps (4 classes: background and the three shapes), a 4-layer ViT-XS/8
encoder trained from scratch (8x8 tokens) and the MLA decoder, 4,200 steps of 32, mIoU on the
500 held-out images at their original size.
  python main.py --config=configs/setr.py --workdir=/tmp/setr_shapes
  Measured: mIoU 0.854 (background 0.957, circle 0.847, rectangle 0.833, triangle 0.780),
  pixel accuracy 0.957, in 13 min 18 s on a 2-core AMD EPYC (Zen 4) CPU.

Arguments (comma-separated): 'tiny' for tests and smoke runs; 'naive', 'pup' or 'mla' for
the paper's three decoders (default 'mla'); 'ade20k' for the paper's SETR on ADE20K (ViT-L/16 initialised from a
published .npz, 512x512 crops, batch 16, 160k steps of SGD with a polynomial schedule,
auxiliary heads on layers 10, 15, 20) in the ADEChallengeData2016 layout in data_dir:
  python main.py --config=configs/setr.py:ade20k,pup --config.data.data_dir=/data/ADEChallengeData2016 \
    --config.pretrained.path=ViT-L_16.npz
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import common


def get_config(arg=''):
  args = common.parse_args(arg, ['tiny', 'naive', 'pup', 'mla', 'ade20k'])
  c = common.trainer_config()
  c.task = 'segmentation'
  c.model = ml_collections.ConfigDict(dict(
      num_classes=None,  # From the data.
      variant='XS/8', patch_size=placeholder(int), hidden_size=placeholder(int),
      num_layers=placeholder(int), num_heads=placeholder(int), mlp_dim=placeholder(int),
      dropout_rate=0.0, attention_dropout_rate=0.0, droppath_rate=0.0,
      # The decoder (models/setr.py): 'naive', 'pup' or 'mla'; its width; 'batch_norm' (the
      # paper's) or 'group_norm'; 1-based encoder layers with auxiliary naive heads.
      decoder='pup' if 'pup' in args else 'naive' if 'naive' in args else 'mla',
      decoder_dim=128, norm='batch_norm', aux_layers=()))
  c.loss = ml_collections.ConfigDict(dict(aux_weight=0.4))  # Each auxiliary head's loss.
  c.data = ml_collections.ConfigDict(dict(
      name='shapes', data_dir='', tfds_name='', train_split='train', eval_split='test',
      num_classes=0,  # 'folder' and 'tfds' data: the classes in the label maps.
      reduce_zero_label=False,  # 0 in the label maps means "other" (ADE20K): ignored.
      canvas=64, scales=(48, 56, 64, 72, 80), eval_size=None, flip=True, num_threads=2,
      # The shapes (data/detection.py), as configs/detr.py makes them.
      shapes_seed=0, shapes_train_images=4000, shapes_eval_images=500, shapes_min_size=48,
      shapes_max_size=64, shapes_max_objects=3, shapes_object_size=(0.25, 0.67)))
  c.total_steps = 4200
  c.batch_size = 32
  c.eval_batch_size = 100
  c.eval_every = 4200  # One evaluation at the end: the 15-minute budget goes to steps.
  c.checkpoint_every = 1000
  c.optim.update(name='adamw', learning_rate=1e-3, schedule='cosine', warmup_steps=200,
                 weight_decay=1e-4, clip_norm=1.0)

  if 'tiny' in args:
    c.model.update(variant='mu/8', decoder_dim=16)
    if c.model.decoder == 'mla':  # It reads four layers.
      c.model.num_layers = 4
    c.data.update(shapes_train_images=16, shapes_eval_images=6, canvas=32, scales=(32, 40),
                  shapes_min_size=24, shapes_max_size=32)
    c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 8
    c.log_every, c.eval_every, c.checkpoint_every = 2, 4, 4
    c.optim.warmup_steps = 1
  if 'ade20k' in args:  # §4: ADE20K, 512x512 crops, 160k iterations at batch 16.
    c.model.update(variant='L/16', decoder_dim=256, aux_layers=(10, 15, 20), dropout_rate=0.1)
    c.data.update(name='folder', train_split='training', eval_split='validation',
                  num_classes=150, reduce_zero_label=True, canvas=512,
                  scales=tuple(range(256, 1025, 64)), eval_size=512)
    c.total_steps, c.batch_size, c.eval_batch_size = 160_000, 16, 16
    c.eval_every, c.checkpoint_every = 8_000, 8_000
    c.optim.update(name='sgd', learning_rate=1e-3, schedule='poly', warmup_steps=0,
                   weight_decay=0.0, momentum=0.9)
  return c
