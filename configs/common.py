"""Trainer settings shared by every family's config, and the parsing of config arguments."""
import re

import ml_collections
from ml_collections.config_dict import placeholder


def parse_args(arg, known, pattern=None, pattern_help=''):
  """'tiny,dates' → ['tiny', 'dates']. An argument that is not in `known` (and does not match
  `pattern`) is an error listing the valid ones: a typo must not silently train the default."""
  args = [a for a in arg.split(',') if a]
  for a in args:
    if a not in known and not (pattern and re.fullmatch(pattern, a)):
      raise ValueError(f'Unknown config argument {a!r}; expected a comma-separated list of '
                       f'{", ".join(known)}{pattern_help}.')
  return args


def attention_args():
  """The hyperparameters of the attention modules for CNNs, each None for its paper's value;
  a module takes its own (see its docstring in vit_jax/layers/), e.g.
  --config.model.attention_args.reduction=8."""
  return ml_collections.ConfigDict(dict(
      reduction=placeholder(int), kernel_size=placeholder(int), dilation=placeholder(int),
      dilations=placeholder(tuple), gamma=placeholder(int), b=placeholder(int),
      dim=placeholder(int), min_dim=placeholder(int), subsample=placeholder(bool),
      key_dim=placeholder(int), sizes=placeholder(tuple)))


def backbone_attention():
  """The detection backbones' attention module for CNNs (configs/resnet.py's block_attention,
  attention_args, attention_stages), e.g. --config.model.backbone_attention=se."""
  return dict(backbone_attention=placeholder(str), backbone_attention_args=attention_args(),
              backbone_attention_stages=placeholder(tuple))


def trainer_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 128            # Global, over all devices and processes.
  c.eval_batch_size = 256
  c.accum_steps = 1             # Gradient accumulation: micro-batches per optimizer step.
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  # How models run, never what they compute (vit_jax/layers/kernels.py):
  c.dtype = 'float32'           # Compute dtype, or 'bfloat16' (parameters stay float32).
  c.attention_impl = 'fused'    # 'plain' (the textbook), 'fused' (fast on CPU) or 'xla'.
  c.remat = False               # Recompute transformer blocks in the backward pass.
  c.scan_layers = False         # Each block stack as one nn.scan: compiles once for any depth.
  c.on_nonfinite = 'stop'       # Non-finite loss/gradients: 'stop' with an error, or 'skip'.
  c.check_data = True           # Read every example of both splits once before training.
  c.optim = ml_collections.ConfigDict(dict(
      name='adamw', learning_rate=1e-3, schedule='cosine', warmup_steps=100, end_lr_factor=0.0,
      weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, nesterov=False,
      clip_norm=1.0,
      drop_steps=(),        # schedule='step': x0.1 at each of these steps.
      lr_multipliers=''))  # 'regex=factor,...' on parameter paths (first match); 0 freezes.
  # fsdp > 1: parameters and optimizer state sharded over that many devices (FSDP); arrays
  # under fsdp_min_size elements stay replicated.
  c.mesh = ml_collections.ConfigDict(dict(fsdp=1, fsdp_min_size=2**14))
  # Fine-tuning: start from an .npz written by --mode=export (or a published ViT checkpoint);
  # reset_head re-initialises the output head (new classes).
  c.pretrained = ml_collections.ConfigDict(dict(path='', reset_head=True))
  c.export_path = ''            # --mode=export writes here (default: workdir/params.npz).
  return c
