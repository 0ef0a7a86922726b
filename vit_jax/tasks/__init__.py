"""Tasks: what the one trainer needs from a model family (data, init, loss, eval metrics)."""


def get_task(name):
  from vit_jax.tasks import classification
  from vit_jax.tasks import detection
  from vit_jax.tasks import translation
  tasks = {'classification': classification.ClassificationTask,
           'detection': detection.DetectionTask,
           'translation': translation.TranslationTask}
  if name not in tasks:
    raise ValueError(f'Unknown task {name!r}; expected one of {sorted(tasks)}.')
  return tasks[name]
