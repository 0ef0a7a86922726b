"""Optax optimizers and learning-rate schedules, built from flat config values."""
import re

import jax
import optax

from vit_jax import errors


def make_schedule(total_steps, learning_rate, schedule='cosine', warmup_steps=0,
                  end_lr_factor=0.0, model_dim=None, drop_steps=()):
  """Linear warmup, then 'cosine', 'linear', 'poly' (power 0.9: SETR's, from DeepLab) or
  'constant' decay, 'step' (x0.1 at each of
  `drop_steps`, as DETR and Deformable DETR train), or the Transformer's 'rsqrt'
  (lr = learning_rate · model_dim^-0.5 · min(step^-0.5, step · warmup^-1.5), paper §5.3;
  model_dim is the model's width, which the trainer takes from the task)."""
  if schedule == 'rsqrt':
    if not model_dim:
      raise errors.UserError(
          "optim.schedule='rsqrt' scales by the model width, which this family's "
          "task does not define (Task.model_dim); choose another schedule.")
    scale = learning_rate * model_dim ** -0.5
    warm = max(warmup_steps, 1)
    return lambda step: scale * jax.numpy.minimum((step + 1) ** -0.5, (step + 1) * warm ** -1.5)
  decay_steps = max(total_steps - warmup_steps, 1)
  decays = {
      'cosine': lambda: optax.cosine_decay_schedule(learning_rate, decay_steps, end_lr_factor),
      'linear': lambda: optax.linear_schedule(learning_rate, learning_rate * end_lr_factor,
                                              decay_steps),
      'poly': lambda: optax.polynomial_schedule(learning_rate, learning_rate * end_lr_factor,
                                                0.9, decay_steps),
      'constant': lambda: optax.constant_schedule(learning_rate),
      'step': lambda: optax.piecewise_constant_schedule(
          learning_rate, {int(s) - warmup_steps: 0.1 for s in drop_steps}),
  }
  if schedule not in decays:
    raise errors.UserError(
        f'Unknown schedule {schedule!r}; expected one of {sorted(decays) + ["rsqrt"]}.')
  if not warmup_steps:
    return decays[schedule]()
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, decays[schedule]()], [warmup_steps])


def decay_mask(params):
  """Weight decay on matrices only (kernels, embeddings), not on biases and norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def path_name(path):
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def parse_multipliers(spec):
  """'regex=factor,regex=factor' (a config string, overridable on the command line) or a
  dict → [(compiled regex, factor)]."""
  if isinstance(spec, str):
    items = []
    for rule in filter(None, spec.split(',')):
      pattern, sep, factor = rule.rpartition('=')
      try:
        items.append((pattern, float(factor)))
      except ValueError:
        sep = ''
      if not sep or not pattern:
        raise errors.UserError(f'optim.lr_multipliers: expected "regex=factor" rules separated '
                               f'by commas, got {rule!r}.') from None
    spec = dict(items)
  return [(re.compile(pattern), float(factor)) for pattern, factor in spec.items()]


def multiplier_labels(lr_multipliers):
  """→ ({label: factor}, params → label tree) for optax.multi_transform: a parameter whose
  path ('backbone/stem_bn/scale') matches a rule's regex gets the first such rule's factor,
  else 1 ('default'). A rule that matches no parameter is an error (a typo would otherwise
  change nothing)."""
  rules = parse_multipliers(lr_multipliers)

  def labels(params):
    paths = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pattern, _ in rules:
      if not any(pattern.search(p) for p in paths):
        raise errors.UserError(f'optim.lr_multipliers: {pattern.pattern!r} matches no '
                               f'parameter; the paths look like {paths[:4]} (of {len(paths)}).')
    return jax.tree_util.tree_map_with_path(
        lambda path, _: next((f'rule{i}' for i, (pattern, _) in enumerate(rules)
                              if pattern.search(path_name(path))), 'default'), params)

  return {f'rule{i}': factor for i, (_, factor) in enumerate(rules)}, labels


def frozen_mask(params, lr_multipliers):
  """A tree of bools like `params`: True where lr_multipliers gives factor 0 (frozen), or
  None when nothing is frozen."""
  if not lr_multipliers:
    return None
  factors, labels = multiplier_labels(lr_multipliers)
  mask = jax.tree.map(lambda label: factors.get(label, 1.0) == 0, labels(params))
  return mask if any(jax.tree.leaves(mask)) else None


def make_optimizer(total_steps, *, name='adamw', learning_rate=1e-3, schedule='cosine',
                   warmup_steps=0, end_lr_factor=0.0, weight_decay=0.0, b1=0.9, b2=0.999,
                   eps=1e-8, momentum=0.9, nesterov=False, clip_norm=None, model_dim=None,
                   lr_multipliers=None, drop_steps=()):
  """Returns (optax transformation, learning-rate schedule). model_dim: see make_schedule.

  lr_multipliers ('regex=factor,...'): each group of parameters gets its own optimizer at
  factor x the learning rate (weight decay scaled alike, as in PyTorch parameter groups);
  factor 0 freezes a group with optax.set_to_zero, which keeps no optimizer state for it.
  """
  lr = make_schedule(total_steps, learning_rate, schedule, warmup_steps, end_lr_factor,
                     model_dim, drop_steps)

  def optimizer(rate):
    if name == 'adamw':
      return optax.adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                         mask=decay_mask)
    return optax.chain(optax.add_decayed_weights(weight_decay, decay_mask) if weight_decay
                       else optax.identity(), optax.sgd(rate, momentum=momentum,
                                                        nesterov=nesterov))

  if name not in ('adamw', 'sgd'):
    raise errors.UserError(f"Unknown optimizer {name!r}; expected 'adamw' or 'sgd'.")
  if lr_multipliers:
    factors, labels = multiplier_labels(lr_multipliers)
    scaled = lambda f: lambda step: lr(step) * f
    groups = {label: optax.set_to_zero() if f == 0 else optimizer(scaled(f))
              for label, f in factors.items()}
    opt = optax.multi_transform(dict(groups, default=optimizer(lr)), labels)
  else:
    opt = optimizer(lr)
  if clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
  return opt, lr
