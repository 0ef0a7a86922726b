"""Model sizes by name ('B/16', 'base'): each family keeps one table; one rule combines a
named size with values given explicitly."""
from absl import logging


def build(module, decode_variant, settings, **fixed):
  """module(**decode_variant(variant), **explicit settings, **fixed).

  settings: config.model, with an optional 'variant'. None values are left to the variant
  (else the module's default). An explicit value wins over the variant's and is logged, so
  an override is never silent.
  """
  settings = dict(settings)
  variant = settings.pop('variant', None)
  sizes = decode_variant(variant) if variant else {}
  explicit = {k: v for k, v in settings.items() if v is not None}
  for key, value in explicit.items():
    if key in sizes and sizes[key] != value:
      logging.warning('model.%s=%r overrides the %r variant\'s %r.', key, value, variant,
                      sizes[key])
  return module(**{**sizes, **explicit, **fixed})
