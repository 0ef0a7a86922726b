"""Split names with TFDS's slicing syntax, for the sources held in memory: 'train[:3600]',
'train[90%:]', and unions of slices of one split, 'train[:2]+train[4:]'. A validation split
carved from the training data is then a config value, and one spelling serves TFDS (which
slices natively) and the in-memory sources alike."""
import re

from vit_jax import errors

_SPLIT = re.compile(r'^(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?$')


def parse(split):
  """'train[:90%]' → ('train', [(None, '90%')]): the base split's name and the bounds (strings
  or None) of each slice of a '+' union; 'train' → ('train', None)."""
  parts = [_SPLIT.match(part.strip()) for part in split.split('+')]
  if not all(parts):
    raise errors.UserError(f"Unreadable split {split!r}; expected a name, optionally sliced as "
                           "TFDS slices: 'train', 'train[:3600]', 'train[90%:]', "
                           "'train[:2]+train[4:]'.")
  names = {part.group(1) for part in parts}
  if len(names) > 1:
    raise errors.UserError(f'Split {split!r} joins slices of {sorted(names)}; a union takes '
                           'slices of one split.')
  if len(parts) == 1 and parts[0].group(2) is None:
    return names.pop(), None
  return names.pop(), [(part.group(2) or None, part.group(3) or None) for part in parts]


def _index(bound, n):
  if bound is None:
    return None
  if bound.endswith('%'):
    return round(int(bound[:-1]) * n / 100)
  return int(bound)


def select(split, n):
  """The positions a (possibly sliced) split keeps of its base split's n examples."""
  _, slices = parse(split)
  if slices is None:
    return range(n)
  return [i for start, stop in slices for i in range(n)[slice(_index(start, n), _index(stop, n))]]
