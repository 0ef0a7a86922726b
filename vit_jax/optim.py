"""Optax optimizers and learning-rate schedules, built from flat config values."""
import re

import jax
import optax


def make_schedule(total_steps, learning_rate, schedule='cosine', warmup_steps=0,
                  end_lr_factor=0.0, model_dim=None):
  """Linear warmup, then 'cosine', 'linear' or 'constant' decay, or the Transformer's
  'rsqrt' (lr = learning_rate · model_dim^-0.5 · min(step^-0.5, step · warmup^-1.5), paper
  §5.3; model_dim is the model's width, which the trainer takes from the task)."""
  if schedule == 'rsqrt':
    if not model_dim:
      raise ValueError("optim.schedule='rsqrt' scales by the model width, which this family's "
                       "task does not define (Task.model_dim); choose another schedule.")
    scale = learning_rate * model_dim ** -0.5
    warm = max(warmup_steps, 1)
    return lambda step: scale * jax.numpy.minimum((step + 1) ** -0.5, (step + 1) * warm ** -1.5)
  decay_steps = max(total_steps - warmup_steps, 1)
  decays = {
      'cosine': lambda: optax.cosine_decay_schedule(learning_rate, decay_steps, end_lr_factor),
      'linear': lambda: optax.linear_schedule(learning_rate, learning_rate * end_lr_factor,
                                              decay_steps),
      'constant': lambda: optax.constant_schedule(learning_rate),
  }
  if schedule not in decays:
    raise ValueError(f'Unknown schedule {schedule!r}; expected one of {sorted(decays) + ["rsqrt"]}.')
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
        raise ValueError(f'optim.lr_multipliers: expected "regex=factor" rules separated by '
                         f'commas, got {rule!r}.') from None
    spec = dict(items)
  return [(re.compile(pattern), float(factor)) for pattern, factor in spec.items()]


def scale_by_path(lr_multipliers):
  """Multiplies each parameter's update (so its learning rate, weight decay included) by the
  factors of every regex in `lr_multipliers` that its path ('backbone/stem_bn/scale')
  matches; a factor of 0 freezes it (DETR: frozen BatchNorm, a 10x lower backbone rate).
  A rule that matches no parameter is an error (a typo would otherwise change nothing)."""
  rules = parse_multipliers(lr_multipliers)

  def init(params):
    paths = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pattern, _ in rules:
      if not any(pattern.search(p) for p in paths):
        raise ValueError(f'optim.lr_multipliers: {pattern.pattern!r} matches no parameter; '
                         f'the paths look like {paths[:4]} (of {len(paths)}).')
    return optax.EmptyState()

  def factor(path):
    out = 1.0
    for pattern, f in rules:
      if pattern.search(path_name(path)):
        out *= f
    return out

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u if factor(path) == 1.0 else u * factor(path), updates), state

  return optax.GradientTransformation(init, update)


def make_optimizer(total_steps, *, name='adamw', learning_rate=1e-3, schedule='cosine',
                   warmup_steps=0, end_lr_factor=0.0, weight_decay=0.0, b1=0.9, b2=0.999,
                   eps=1e-8, momentum=0.9, nesterov=False, clip_norm=None, model_dim=None,
                   lr_multipliers=None):
  """Returns (optax transformation, learning-rate schedule). model_dim: see make_schedule."""
  lr = make_schedule(total_steps, learning_rate, schedule, warmup_steps, end_lr_factor,
                     model_dim)
  if name == 'adamw':
    opt = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
  elif name == 'sgd':
    opt = optax.chain(optax.add_decayed_weights(weight_decay, decay_mask) if weight_decay
                      else optax.identity(), optax.sgd(lr, momentum=momentum, nesterov=nesterov))
  else:
    raise ValueError(f"Unknown optimizer {name!r}; expected 'adamw' or 'sgd'.")
  if lr_multipliers:
    opt = optax.chain(opt, scale_by_path(lr_multipliers))
  if clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)
  return opt, lr
