"""Tasks: each model family's side of the contract in base.py (data, init, loss, metrics)."""
import importlib

from vit_jax import errors

# config.task → the family's Task class ('module:Class'), imported when first asked for.
TASKS = {
    'classification': 'vit_jax.tasks.classification:ClassificationTask',
    'cnn_classification': 'vit_jax.tasks.cnn_classification:CnnClassificationTask',
    'deformable_detection': 'vit_jax.tasks.deformable_detection:DeformableDetectionTask',
    'detection': 'vit_jax.tasks.detection:DetectionTask',
    'panoptic': 'vit_jax.tasks.panoptic:PanopticTask',
    'rnn_seq2seq': 'vit_jax.tasks.rnn_seq2seq:RnnSeq2SeqTask',
    'restoration': 'vit_jax.tasks.restoration:RestorationTask',
    'segmentation': 'vit_jax.tasks.segmentation:SegmentationTask',
    'translation': 'vit_jax.tasks.translation:TranslationTask',
    'vqgan': 'vit_jax.tasks.vqgan:VqganTask',
}


def get_task(name):
  """The Task class registered under `name` (config.task)."""
  if name not in TASKS:
    raise errors.UserError(f'Unknown task {name!r}; expected one of {sorted(TASKS)}.')
  module, cls = TASKS[name].split(':')
  return getattr(importlib.import_module(module), cls)
