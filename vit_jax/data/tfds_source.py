"""Opening a prepared TFDS dataset for random access (`tfds.data_source`: no TensorFlow, never a
download), with errors that say what is missing from `data_dir`."""
from vit_jax import errors
from vit_jax.data import splits


def open_split(name, split, data_dir):
  """→ (random-access source, DatasetInfo)."""
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for a missing dataset.
    raise errors.UserError(f'TFDS dataset {name!r} not found in data_dir={data_dir!r}: {e}') from e
  if not builder.is_prepared():
    raise errors.UserError(f'TFDS dataset {name!r} is not prepared in data_dir={data_dir!r}; '
                           'prepare it there first (this code never downloads).')
  if splits.parse(split)[0] not in builder.info.splits:  # tfds slices 'train[:90%]' itself.
    raise errors.UserError(f'Split {split!r} not found for TFDS dataset {name!r}; available: '
                           f'{sorted(builder.info.splits)}.')
  return tfds.data_source(name, split=split, data_dir=data_dir), builder.info
