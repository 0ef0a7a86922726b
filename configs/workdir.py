"""The config a run was trained with, read back from its workdir's config.json.

main.py uses it when --mode is not train and no --config is given, so that the workdir alone
is enough to export or translate:
  python main.py --workdir=/tmp/numbers --mode=translate --config.translate.beam_size=1
It also resumes training with the saved settings:
  python main.py --config=configs/workdir.py:/tmp/numbers

Keys the code gained after the run was trained (config.json lacks them) take their defaults
from the family's config file, named on stderr, so an older workdir still takes every
--config.KEY override.
"""
import importlib
import json
import os
import sys

import ml_collections

# config.task → the config file (and argument) that defines its keys.
FAMILY_CONFIGS = {
    'classification': 'vit',
    'cnn_classification': 'resnet',
    'deformable_detection': 'deformable_detr',
    'detection': 'detr',
    'panoptic': 'detr:panoptic',
    'restoration': 'ipt',
    'rnn_seq2seq': 'rnn',
    'segmentation': 'setr',
    'translation': 'transformer',
    'vqgan': 'vqgan',
}


def get_config(workdir=''):
  path = os.path.join(workdir, 'config.json')
  if not workdir or not os.path.exists(path):
    raise ValueError(f'No saved config at {path!r} (a training run writes it into its workdir); '
                     'pass --config=configs/<family>.py with the settings it was trained with.')
  with open(path) as f:
    saved = json.load(f)
  family = FAMILY_CONFIGS.get(saved.get('task'))
  if family:
    module, _, arg = family.partition(':')
    defaults = importlib.import_module(f'configs.{module}').get_config(arg).to_dict()
    missing = list(missing_keys(defaults, saved))
    if missing:
      print(f'{path} has no {", ".join(missing)} (added to the code after this run was '
            f'trained): taking the defaults of configs/{module}.py{":" * bool(arg)}{arg}.',
            file=sys.stderr)
      saved = merged(defaults, saved)
  return ml_collections.ConfigDict(saved)


def missing_keys(defaults, saved, prefix=''):
  """The keys (a whole group as one) in `defaults` that `saved` lacks, dotted."""
  for key, value in defaults.items():
    if key not in saved:
      yield prefix + key
    elif isinstance(value, dict) and isinstance(saved[key], dict):
      yield from missing_keys(value, saved[key], f'{prefix}{key}.')


def merged(defaults, saved):
  """`saved` with the keys it lacks taken from `defaults`, recursively."""
  out = dict(defaults, **saved)
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(defaults.get(key), dict):
      out[key] = merged(defaults[key], value)
  return out
