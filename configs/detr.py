"""DETR object detection ("End-to-End Object Detection with Transformers").

Default (no argument): the embedded synthetic shapes (1-3 circles, rectangles, triangles of
varied size (a quarter to two thirds of the shorter side), colour and overlap on textured
backgrounds; 48-64 px images, generated deterministically and written in COCO format), a small
ResNet with GroupNorm trained from scratch (last two stages dilated: stride 8, so a 64 px image
gives the encoder 8x8 positions), a 2+3-layer post-LN Transformer with 12 queries, 6,400 steps
of 32 with the on-device matcher, COCO mAP on the 500 held-out images.
  python main.py --config=configs/detr.py --workdir=/tmp/shapes
  Measured: COCO AP 0.503, 0.538 and 0.529 (seeds 0, 1, 2: --config.seed=N) on the 500
  held-out images in 16-18 min on a 2-core Intel Xeon (Emerald Rapids) CPU, images already
  generated. On this budget resolution pays more than steps: at stride 16
  (--config.model.dilation=1) a step is 1.6x faster, yet 12,500 steps gave 0.484 in 16 min
  on that CPU (0.494 in 19 min on a Zen 4); more decoder layers did not pay either.

Arguments (comma-separated): 'tiny' for tests and smoke runs; 'r50' for the paper's model
and training (ResNet-50 with frozen BatchNorm, 6+6 layers, 100 queries, 800-1333 px, dropout
and attention dropout 0.1, 500 epochs with the learning rate x0.1 after 400) on COCO in
data_dir, from torchvision's ImageNet ResNet-50 (README: converting its .pth):
  python main.py --config=configs/detr.py:r50 --config.data.data_dir=/data/coco \
    --config.pretrained.path=resnet50.safetensors
model.norm_first=True gives pre-LayerNorm blocks (the official code's `normalize_before`);
model.query_groups=G trains Group DETR's G query groups, loss.focal_alpha=0.25 sigmoid
focal-loss classes (README: neither paid on the shapes).

'panoptic': DETR's panoptic head (§4.4; task 'panoptic') trained jointly with the detector on
the shapes' COCO panoptic form (every shape a thing, the background one stuff segment), 8
heads (the mask head's GroupNorm needs hidden_size + num_heads divisible by 8), 6,000 steps:
  python main.py --config=configs/detr.py:panoptic --workdir=/tmp/panoptic
'frozen' (with 'panoptic' implied): the paper's second stage, only the mask head trains on a
detector loaded from --config.pretrained.path (README: Segmentation).
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import common


def get_config(arg=''):
  args = common.parse_args(arg, ['tiny', 'r50', 'panoptic', 'frozen'])
  c = common.trainer_config()
  c.task = 'detection'
  c.model = ml_collections.ConfigDict(dict(
      num_classes=None,  # From the data.
      num_queries=12, backbone_name='resnet-tiny', dilation=2,
      backbone_norm='group_norm', frozen_stages=-1, hidden_size=128,
      num_heads=4, num_encoder_layers=2, num_decoder_layers=3, mlp_dim=256, dropout_rate=0.0,
      attention_dropout_rate=0.0, posemb='sine', norm_first=False, query_groups=1,
      **common.backbone_attention()))
  c.loss = ml_collections.ConfigDict(dict(
      aux_loss=True, eos_coef=0.1, class_weight=1.0, l1_weight=5.0, giou_weight=2.0,
      focal_alpha=placeholder(float), focal_gamma=2.0,  # α set: sigmoid focal classes.
      matcher='device'))  # An exact Hungarian solver inside the jitted step, or 'scipy' (host).
  c.data = ml_collections.ConfigDict(dict(
      name='shapes', data_dir='', tfds_name='coco/2017', train_split='train', eval_split='test',
      canvas=64, scales=(48, 52, 56, 60, 64), eval_size=64, crop_scales=(), crop_min=32,
      flip=True, max_boxes=8, num_threads=2, shapes_seed=0, shapes_train_images=4000,
      shapes_eval_images=500, shapes_min_size=48, shapes_max_size=64, shapes_max_objects=3,
      shapes_object_size=(0.25, 0.67)))  # Object side, as a fraction of the shorter side.
  c.total_steps = 6400
  c.batch_size = 32
  c.eval_batch_size = 100
  c.eval_every = 6400  # Each evaluation of the 500 images costs about 25 s of the budget.
  c.checkpoint_every = 1000
  c.optim.update(name='adamw', learning_rate=5e-4, schedule='cosine', warmup_steps=200,
                 weight_decay=1e-4, clip_norm=0.1)

  if 'panoptic' in args or 'frozen' in args:  # §4.4: every segment a target, masks too.
    c.task = 'panoptic'
    c.model.num_heads = 8  # The mask head's GroupNorm needs hidden_size + num_heads ≡ 0 mod 8.
    c.model.dilation = 1  # Stride 16, as its PQ was measured (the masks come at stride 4).
    c.loss.update(mask_weight=1.0, dice_weight=1.0)
    c.data.max_boxes = c.data.shapes_max_objects + 1  # The objects and the background.
    c.panoptic = ml_collections.ConfigDict(dict(threshold=0.85, min_area=4))
    c.total_steps = c.eval_every = 6000  # The mask head makes a step 1.6x as long.
  if 'tiny' in args:
    c.model.update(num_queries=4, hidden_size=32, num_heads=2, num_encoder_layers=1,
                   num_decoder_layers=2, mlp_dim=64, dilation=1)  # Stride 16: 4x fewer tokens.
    c.loss.matcher = 'scipy'  # Compiles faster.
    c.data.update(shapes_train_images=24, shapes_eval_images=8, max_boxes=4,
                  shapes_max_objects=2, canvas=64, scales=(56, 64), crop_scales=(48, 56))
    c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 8
    c.log_every, c.eval_every, c.checkpoint_every = 2, 4, 4
    c.optim.warmup_steps = 1
    if c.task == 'panoptic':
      c.model.num_heads = 8
  if 'r50' in args:  # The paper's DETR-R50 on COCO 2017 (§4): 500 epochs at batch 64.
    c.model.update(num_queries=100, backbone_name='resnet50', dilation=0,
                   backbone_norm='frozen_bn', frozen_stages=1,
                   hidden_size=256, num_heads=8, num_encoder_layers=6, num_decoder_layers=6,
                   mlp_dim=2048, dropout_rate=0.1)
    c.loss.matcher = 'scipy'
    c.data.update(name='coco', train_split='train2017', eval_split='val2017', canvas=1333,
                  scales=tuple(range(480, 801, 32)), eval_size=800,
                  crop_scales=(400, 500, 600), crop_min=384, max_boxes=100)
    c.model.attention_dropout_rate = 0.1
    c.optim.update(learning_rate=1e-4, schedule='step', drop_steps=(400 * 1849,),
                   warmup_steps=0, lr_multipliers='backbone/(stem_|stage1_)=0,backbone/=0.1')
    c.total_steps, c.batch_size = 500 * 1849, 64  # x0.1 after 400 of the 500 epochs.
  if 'frozen' in args:  # The paper's second stage: only the mask head trains, on a detector
    # loaded with --config.pretrained.path (an export with the same classes: README).
    c.optim.lr_multipliers = '^(?!mask_head/|bbox_attention/)=0'
    c.pretrained.reset_head = False
    if 'r50' in args:  # The official panoptic recipe: 25 epochs, x0.1 after 15.
      c.total_steps, c.optim.drop_steps = 25 * 1849, (15 * 1849,)
  return c
