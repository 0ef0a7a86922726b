"""Split names with TFDS's slicing syntax, for the sources held in memory: 'train[:3600]',
'train[90%:]'. A validation split carved from the training data is then a config value, and
one spelling serves TFDS (which slices natively) and the in-memory sources alike."""
import re

from vit_jax import errors

_SPLIT = re.compile(r'^(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?$')


def parse(split):
  """'train[:90%]' → ('train', ':90%' bounds as strings or None); 'train' → ('train', None)."""
  match = _SPLIT.match(split.strip())
  if not match:
    raise errors.UserError(f"Unreadable split {split!r}; expected a name, optionally sliced as "
                           "TFDS slices: 'train', 'train[:3600]', 'train[90%:]'.")
  name, start, stop = match.groups()
  return name, None if start is None else (start or None, stop or None)


def _index(bound, n):
  if bound is None:
    return None
  if bound.endswith('%'):
    return round(int(bound[:-1]) * n / 100)
  return int(bound)


def select(split, n):
  """The positions a (possibly sliced) split keeps of its base split's n examples."""
  _, bounds = parse(split)
  if bounds is None:
    return range(n)
  return range(n)[slice(_index(bounds[0], n), _index(bounds[1], n))]
