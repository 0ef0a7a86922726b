"""The config a run was trained with, read back from its workdir's config.json.

main.py uses it when --mode is not train and no --config is given, so that the workdir alone
is enough to export or translate:
  python main.py --workdir=/tmp/numbers --mode=translate --config.translate.beam_size=1
It also resumes training with the saved settings:
  python main.py --config=configs/workdir.py:/tmp/numbers
"""
import json
import os

import ml_collections


def get_config(workdir=''):
  path = os.path.join(workdir, 'config.json')
  if not workdir or not os.path.exists(path):
    raise ValueError(f'No saved config at {path!r} (a training run writes it into its workdir); '
                     'pass --config=configs/<family>.py with the settings it was trained with.')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
