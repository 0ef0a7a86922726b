"""Deformable DETR object detection ("Deformable DETR: Deformable Transformers for End-to-End
Object Detection", Zhu et al. 2021).

Default (no argument): DETR's embedded synthetic shapes (configs/detr.py: 48-64 px images of
1-3 circles, rectangles and triangles, generated deterministically in COCO format), a small
ResNet with GroupNorm trained from scratch feeding four levels (strides 8-64), a 2+4-layer
deformable Transformer with 20 queries and 4 sampling points, focal loss, COCO mAP on the 500
held-out images.
  python main.py --config=configs/deformable_detr.py --workdir=/tmp/deformable_shapes
  Measured: COCO AP 0.623 (AP50 0.893, AP75 0.717) on the 500 held-out images after the
  default 3,500 steps, in 19 min 19 s on a 2-core AMD EPYC (Zen 4) CPU (3.1 steps/s); 3,000
  steps gave 0.597 in 16 min. DETR (configs/detr.py) reaches 0.50-0.54 in 16-18 min.

Arguments (comma-separated): 'tiny' for tests and smoke runs; 'refine' for iterative bounding
box refinement (§4.2); 'two_stage' for two-stage Deformable DETR (§4.2, with refinement);
'r50' for the paper's model (ResNet-50 with frozen BatchNorm, 6+6
layers, 300 queries, 50 epochs with the learning rate dropped at 40) on COCO in data_dir:
  python main.py --config=configs/deformable_detr.py:r50 --config.data.data_dir=/data/coco \
    --config.pretrained.path=resnet50.safetensors
"""
import ml_collections

from configs import common
from configs import detr as detr_config


def get_config(arg=''):
  args = common.parse_args(arg, ['tiny', 'refine', 'two_stage', 'r50'])
  c = detr_config.get_config(','.join(a for a in args if a in ('tiny', 'r50')))  # Data, trainer.
  c.task = 'deformable_detection'
  c.model = ml_collections.ConfigDict(dict(
      num_classes=None,  # From the data.
      num_queries=20, backbone_name='resnet-tiny', backbone_norm='group_norm', frozen_stages=-1,
      hidden_size=128, num_heads=4, num_encoder_layers=2, num_decoder_layers=4, mlp_dim=256,
      dropout_rate=0.0, num_feature_levels=4, encoder_points=4, decoder_points=4,
      box_refine='refine' in args or 'two_stage' in args, two_stage='two_stage' in args,
      **common.backbone_attention()))
  # §4.1 / A.3: focal loss, matching costs and loss weights class 2, L1 5, GIoU 2.
  c.loss = ml_collections.ConfigDict(dict(
      aux_loss=True, class_weight=2.0, l1_weight=5.0, giou_weight=2.0, focal_alpha=0.25,
      focal_gamma=2.0, matcher='scipy'))
  c.total_steps, c.eval_every = 3500, 1000  # Converges in about half of DETR's steps.
  # The sampling offsets and reference points learn at 0.1x (A.3).
  c.optim.lr_multipliers = 'sampling_offsets|reference_points=0.1'
  if 'tiny' in args:
    c.model.update(num_queries=4, hidden_size=32, num_heads=2, num_encoder_layers=1,
                   num_decoder_layers=2, mlp_dim=64, encoder_points=2, decoder_points=2)
  if 'r50' in args:  # The paper's Deformable DETR-R50 on COCO 2017: 50 epochs at batch 32.
    c.model.update(num_queries=300, backbone_name='resnet50', backbone_norm='frozen_bn',
                   frozen_stages=1, hidden_size=256, num_heads=8, num_encoder_layers=6,
                   num_decoder_layers=6, mlp_dim=1024, dropout_rate=0.1)
    epoch = 118_287 // 32
    c.total_steps, c.batch_size, c.eval_every = 50 * epoch, 32, 5 * epoch
    c.optim.update(learning_rate=2e-4, schedule='step', drop_steps=(40 * epoch,),
                   lr_multipliers='backbone/(stem_|stage1_)=0,backbone/=0.1,'
                                  'sampling_offsets|reference_points=0.1')
  return c
