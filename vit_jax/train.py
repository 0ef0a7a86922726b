"""The one trainer: `train_and_evaluate(config, workdir)` for every family.

Mesh + data → task.init under jax.eval_shape → sharded init → one jitted step calling
task.loss_fn (gradient accumulation by scan) → eval over the full split → orbax checkpoints.
The trainer knows no model: a family plugs in through its task, and the trainer calls only
what the contract in vit_jax/tasks/base.py declares.

A step whose loss, gradients or updated parameters are not finite leaves the state unchanged;
the host then stops with an error naming the step (config.on_nonfinite='stop') or counts it
('skip'). SIGTERM or SIGINT finishes the step, saves a checkpoint and raises
preemption.Interrupted. Every split is read once at start-up (Task.check_data), each interval's
checkpoint is written before its evaluation, and config.json only once the workdir's
checkpoint has been accepted: bad data or a refused checkpoint never costs finished work.
"""
import json
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from vit_jax import checkpoint as checkpoint_lib
from vit_jax import compiling
from vit_jax import errors
from vit_jax import metrics as metrics_lib
from vit_jax import optim
from vit_jax import plots
from vit_jax import preemption
from vit_jax import sharding
from vit_jax import tasks
from vit_jax.data import pipeline
from vit_jax.evaluators import fewshot as fewshot_lib
from vit_jax.tasks import base


def make_train_step(task, tx, accum_steps, is_frozen=None):
  """state, batch, rng, frozen → (state, metrics: the loss and the task's scalars, stats: the
  trainer's own 'grad_norm' and 'nonfinite'). The batch is split into `accum_steps`
  micro-batches whose gradients are averaged before one optimizer update. frozen: the task's
  frozen_params() (a teacher) or None. is_frozen: a tree of bools like the parameters, True
  where optim.lr_multipliers freezes one; those are not differentiated at all (a linear probe
  runs no backward pass through the frozen body), their gradient is reported as zero."""

  frozen_leaves = jax.tree.leaves(is_frozen) if is_frozen is not None else None

  def grads_of(params, batch, rng, frozen):
    leaves, treedef = jax.tree.flatten(params)
    fixed = frozen_leaves or [False] * len(leaves)
    trained = [p for p, f in zip(leaves, fixed) if not f]

    def loss_of(trained):
      it = iter(trained)
      merged = [p if f else next(it) for p, f in zip(leaves, fixed)]
      return task.loss_fn(jax.tree.unflatten(treedef, merged), batch, rng, frozen)

    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(trained)
    it = iter(grads)
    grads = [jnp.zeros_like(p) if f else next(it) for p, f in zip(leaves, fixed)]
    # With the model's new state, if any (base.STATE).
    return jax.tree.unflatten(treedef, grads), dict(metrics, loss=loss)

  def step(state, batch, rng, frozen):
    rng = jax.random.fold_in(rng, state['step'])
    params = state['params']
    if accum_steps == 1:
      grads, metrics = grads_of(params, batch, rng, frozen)
    else:
      # Micro-batch i = rows i, i + accum, ...: every device keeps a share of each one.
      micro = jax.tree.map(
          lambda x: x.reshape((-1, accum_steps) + x.shape[1:]).swapaxes(0, 1), batch)

      def body(carry, inputs):
        i, mb = inputs
        g, m = grads_of(params, mb, jax.random.fold_in(rng, i), frozen)
        return jax.tree.map(jnp.add, carry, (g, m)), None

      zeros = jax.eval_shape(grads_of, params, jax.tree.map(lambda x: x[0], micro), rng,
                             frozen)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
      (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
      grads, metrics = jax.tree.map(lambda x: x / accum_steps, (grads, metrics))
    updates, opt_state = tx.update(grads, state['opt_state'], params)
    # Batch statistics (averaged over micro-batches) replace their old values.
    new_params = {**jax.tree.map(jnp.add, params, updates), **metrics.pop(base.STATE, {})}
    grad_norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))
    # A non-finite step changes nothing: the host decides whether to stop or go on. Finite
    # gradients can still overflow the parameters (a huge learning rate): they are checked too.
    # (Not optax.apply_if_finite: it checks the gradients only, not the updated parameters,
    # and after max_consecutive_errors it applies them anyway.)
    finite = (jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm) &
              jnp.all(jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(new_params)])))
    # One conditional, not a select per array: with a select, XLA fuses the whole update into
    # every output and compiles the step 2.5x as long (23 vs 9 s for the tiny DETR).
    params, opt_state = jax.lax.cond(finite, lambda: (new_params, opt_state),
                                     lambda: (params, state['opt_state']))
    stats = {'grad_norm': grad_norm, 'nonfinite': 1 - finite.astype(jnp.int32)}
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics, stats

  return step


class Trainer:
  """Holds the mesh, the task, the jitted functions and the state's shardings."""

  def __init__(self, config, workdir=None, devices=None):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh.fsdp, devices)
    self.task = tasks.get_task(config.task)(config, workdir)
    self.local_batch = sharding.check_batch_size(config.batch_size, self.mesh)
    self.local_eval_batch = sharding.check_batch_size(config.eval_batch_size, self.mesh,
                                                      'eval_batch_size')
    if config.batch_size % (config.accum_steps * self.mesh.devices.size):
      raise errors.UserError(f'batch_size={config.batch_size} must be divisible by accum_steps '
                             f'({config.accum_steps}) x devices ({self.mesh.devices.size}).')
    self.tx, self.schedule = optim.make_optimizer(config.total_steps, **config.optim,
                                                  model_dim=self.task.model_dim())
    self.rng = jax.random.key(config.seed)

    def init(rng):
      params = self.task.init(rng, self.task.dummy_batch(2))
      return {'step': jnp.zeros((), jnp.int32), 'params': params,
              'opt_state': self.tx.init(params)}

    self._init = init
    self.abstract_state = jax.eval_shape(init, self.rng)
    replicated = sharding.replicated(self.mesh)
    self.state_shardings = sharding.state_shardings(self.abstract_state, self.mesh,
                                                    config.mesh.fsdp_min_size)
    batch_sh = sharding.batch_sharding(self.mesh)
    traced = lambda fn: sharding.traced_under(self.mesh, fn)
    options = compiling.step_options(self.mesh)
    is_frozen = optim.frozen_mask(self.abstract_state['params'], config.optim.lr_multipliers)
    self.frozen = None  # The task's frozen_params() on the devices, once load_frozen() ran.
    self._train_step = jax.jit(traced(make_train_step(self.task, self.tx, config.accum_steps,
                                                     is_frozen)),
                              in_shardings=(self.state_shardings, batch_sh, replicated,
                                            replicated),
                              out_shardings=(self.state_shardings, replicated, replicated),
                              donate_argnums=0, compiler_options=options)

    def eval_step(params, batch):
      """The task's pairs and outputs, the outputs' row weights, and the real examples."""
      pairs, outputs = self.task.eval_step(params, batch)
      weight = batch[pipeline.WEIGHT]
      return pairs, dict(outputs, **{pipeline.WEIGHT: weight}) if outputs else {}, weight.sum()

    self.eval_step = jax.jit(traced(eval_step),
                             in_shardings=(self.state_shardings['params'], batch_sh),
                             out_shardings=replicated, compiler_options=options)

    def features_step(params, batch):
      features, labels = self.task.representation(params, batch)
      return {'x': features, 'y': labels, pipeline.WEIGHT: batch[pipeline.WEIGHT]}

    self.features_step = jax.jit(traced(features_step),
                                 in_shardings=(self.state_shardings['params'], batch_sh),
                                 out_shardings=replicated, compiler_options=options)

  def features(self, params, source, preprocess):
    """(features [N, D], labels [N]) of every example of `source`, numpy, in order."""
    out = []
    for local in pipeline.eval_batches(source, preprocess, self.local_eval_batch,
                                       num_threads=self.config.data.num_threads):
      batch = sharding.to_host(self.features_step(params, sharding.global_batch(local,
                                                                                self.mesh)))
      keep = batch[pipeline.WEIGHT] > 0
      out.append((batch['x'][keep], batch['y'][keep]))
    return np.concatenate([x for x, _ in out]), np.concatenate([y for _, y in out])

  def fewshot(self, datasets):
    """The few-shot evaluator of config.fewshot over these datasets, or None when off."""
    c = self.config.get('fewshot')
    if not c or not c.every:
      return None
    jax.eval_shape(self.task.representation, self.abstract_state['params'],
                   self.task.dummy_batch(2))  # A task without features fails here, early.
    return fewshot_lib.FewShot(datasets.train, datasets.eval, self.task.model.num_classes,
                               shots=tuple(c.shots), validation_per_class=c.validation_per_class,
                               seed=self.config.seed)

  def load_frozen(self):
    """Places the task's frozen parameters (a teacher), if any, replicated on the mesh."""
    frozen = self.task.frozen_params()
    if frozen is not None:
      self.frozen = jax.device_put(frozen, sharding.replicated(self.mesh))

  def train_step(self, state, batch, rng):
    """One optimizer step (make_train_step), jitted; `state` is donated."""
    return self._train_step(state, batch, rng, self.frozen)

  def lower_train_step(self, state, batch, rng):
    """The train step lowered for these (possibly abstract) arguments: `.compile()` gives
    XLA's cost and memory analyses."""
    return self._train_step.lower(state, batch, rng, self.frozen)

  def initial_state(self):
    """Fresh parameters (or fine-tuning ones from config.pretrained.path), placed sharded."""
    state = compiling.run_once(sharding.traced_under(self.mesh, self._init), self.rng,
                               out_shardings=self.state_shardings)
    path = self.config.pretrained.path
    if path:
      params = self.task.load_pretrained(jax.device_get(state['params']), path)
      params = jax.device_put(params, self.state_shardings['params'])
      state = dict(state, params=params, opt_state=compiling.run_once(
          self.tx.init, params, out_shardings=self.state_shardings['opt_state']))
    return state

  def restore_newest(self, checkpoints, log=print):
    """(state, step) from the newest good checkpoint onto this mesh, or (None, None)."""
    abstract = checkpoint_lib.abstract_with_shardings(self.abstract_state, self.state_shardings)
    try:
      return checkpoints.restore_newest(abstract, log)
    except checkpoint_lib.CheckpointMismatch as e:
      raise checkpoint_lib.CheckpointMismatch(f'{e} {self.task.checkpoint_hint()}'.rstrip()
                                              ) from None

  def evaluate(self, params, source, preprocess):
    """Metrics over every example of the eval split: the task's (Σ w · value, Σ w) pairs add
    up on device and are divided once; its outputs (e.g. decoded tokens) are gathered,
    padding rows dropped, for host-side metrics. 'count': the number of real examples."""
    totals, outputs, count = None, [], 0.0
    batches = pipeline.eval_batches(source, preprocess, self.local_eval_batch,
                                    num_threads=self.config.data.num_threads)
    for local in batches:
      pairs, batch_outputs, real = self.eval_step(params, sharding.global_batch(local, self.mesh))
      totals = pairs if totals is None else jax.tree.map(jnp.add, totals, pairs)
      count += real
      if batch_outputs:
        out = sharding.to_host(batch_outputs)
        keep = out.pop(pipeline.WEIGHT) > 0
        outputs.append(self.task.host_outputs({k: v[keep] for k, v in out.items()}))
    outputs = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]} if outputs else {}
    metrics = metrics_lib.average(jax.device_get(totals))
    metrics.update(self.task.eval_metrics(outputs, source))
    metrics['count'] = count
    return {k: float(v) for k, v in metrics.items()}


NONFINITE_MODES = ('stop', 'skip')


def prepare_workdir(workdir):
  """Creates workdir and proves it writable before any work is done."""
  try:
    os.makedirs(workdir, exist_ok=True)
    tempfile.TemporaryFile(dir=workdir).close()
  except OSError as e:
    raise errors.UserError(f'Cannot write to workdir {workdir!r} ({e.strerror or e}); choose a '
                           'writable --workdir.') from None
  return workdir


class NonFiniteGuard:
  """Reads the steps' non-finite flags on the host (only at log, eval and save steps, so the
  device is never waited on per step): stops with an error or counts skipped steps."""

  def __init__(self, mode):
    if mode not in NONFINITE_MODES:
      raise errors.UserError(f'Unknown on_nonfinite={mode!r}; expected one of {NONFINITE_MODES}.')
    self.mode, self.pending, self.skipped = mode, [], 0

  def add(self, step, loss, stats):
    self.pending.append((step, (loss, stats)))

  def check(self, last_checkpoint):
    pending, self.pending = jax.device_get(self.pending), []
    for step, (loss, stats) in pending:
      if not stats['nonfinite']:
        continue
      if self.mode == 'skip':
        self.skipped += 1
        continue
      values = {'loss': loss, 'grad_norm': stats['grad_norm']}
      bad = {k: float(v) for k, v in values.items() if not np.isfinite(v)}
      what = f'{", ".join(bad)} ({bad})' if bad else 'parameters after the update'
      where = (f'step {last_checkpoint}' if last_checkpoint else 'none yet')
      raise errors.Diverged(
          f'Non-finite {what} at step {step}. Training stopped without saving; the last '
          f'good checkpoint is {where}. Lower the learning rate, or set '
          '--config.on_nonfinite=skip to skip such steps and count them.')


def describe_devices(mesh):
  """'8 cpu devices (cpu) in 1 process, mesh data=8 x fsdp=1'."""
  devices = mesh.devices.ravel()
  kinds = sorted({d.device_kind for d in devices})
  shape = ' x '.join(f'{k}={v}' for k, v in mesh.shape.items())
  return (f'{len(devices)} {"/".join(kinds)} device{"s" * (len(devices) > 1)} '
          f'({jax.default_backend()}) in {jax.process_count()} '
          f'process{"es" * (jax.process_count() > 1)}, mesh {shape}')


def last_eval(metrics_path):
  """The newest eval metrics in metrics.jsonl (a finished run's final ones), or {}."""
  if not os.path.exists(metrics_path):
    return {}
  evals = [{k[len('eval/'):]: v for k, v in r.items() if k.startswith('eval/')}
           for r in metrics_lib.read_jsonl(metrics_path)]
  return next((e for e in reversed(evals) if e), {})


def format_eval(step, metrics):
  return f'step {step}: ' + ', '.join(f'eval {k} {v:.4f}' if k != 'count' else
                                      f'{int(v)} examples' for k, v in metrics.items())


def train_and_evaluate(config, workdir, *, devices=None, stop_at_step=None):
  """Trains to config.total_steps (resuming from workdir), evaluates, checkpoints.

  devices: the mesh's devices (default: all). stop_at_step: save and return there, as if
  interrupted; a later call resumes. Returns (final state, last eval metrics).
  Raises preemption.Interrupted after saving when sent SIGTERM/SIGINT.
  """
  prepare_workdir(workdir)
  trainer = Trainer(config, workdir, devices)
  guard = NonFiniteGuard(config.on_nonfinite)
  main_process = jax.process_index() == 0
  log = tqdm.tqdm.write if main_process else (lambda *_: None)
  log(f'Running on {describe_devices(trainer.mesh)}.')
  datasets = trainer.task.datasets()
  trainer.load_frozen()
  if config.get('check_data', True):
    trainer.task.check_data(datasets)
  train_source, eval_source, preprocess = datasets
  fewshot = trainer.fewshot(datasets)
  checkpoints = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)
  writer = metrics_lib.MetricWriter(workdir)

  state, start = trainer.restore_newest(checkpoints, log)
  if state is None:
    state, start = trainer.initial_state(), 0
  else:
    log(f'Resuming from step {start} in {checkpoints.directory}')
  if main_process:  # Only now: a refused checkpoint leaves the workdir's config untouched.
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  batches = pipeline.train_batches(train_source, preprocess.train, trainer.local_batch,
                                   seed=config.seed, start_step=start,
                                   num_threads=config.data.num_threads)
  eval_metrics, saved = {}, start
  if start >= config.total_steps:
    eval_metrics = last_eval(writer.path)
    log(f'Already trained to step {start} (config.total_steps={config.total_steps}); its '
        f'final evaluation: {format_eval(start, eval_metrics) if eval_metrics else "none"}.')
  progress = tqdm.tqdm(total=config.total_steps, initial=start, disable=not main_process,
                       desc='train', unit='step', dynamic_ncols=True)
  window, timed, window_start = [], 0, time.perf_counter()
  last_step = min(config.total_steps, stop_at_step or config.total_steps)
  try:
    with preemption.StopOnSignal() as signals:
      for step in range(start + 1, last_step + 1):
        batch = sharding.global_batch(next(batches), trainer.mesh)
        state, metrics, stats = trainer.train_step(state, batch, trainer.rng)
        guard.add(step, metrics['loss'], stats)
        window.append((metrics, stats))
        timed += 1
        if step == start + 1:  # Compilation is not training throughput.
          jax.block_until_ready(state)
          timed, window_start = 0, time.perf_counter()
        progress.update(1)
        log_now = step % config.log_every == 0 or step == config.total_steps
        eval_now = step % config.eval_every == 0 or step == config.total_steps
        save_now = step % config.checkpoint_every == 0 or step == last_step
        stop_now = signals.requested(agree=log_now)
        if log_now or eval_now or save_now or stop_now:
          guard.check(saved)

        if log_now:
          window = jax.device_get(window)
          elapsed = time.perf_counter() - window_start
          # Skipped steps are not averaged in.
          counted = [m for m in window if not m[1]['nonfinite']] or window
          scalars = {f'train/{k}': np.mean([m[0][k] for m in counted]) for k in window[0][0]}
          scalars['train/grad_norm'] = np.mean([m[1]['grad_norm'] for m in counted])
          scalars['train/learning_rate'] = trainer.schedule(step - 1)
          if timed:
            scalars['train/examples_per_sec'] = timed * config.batch_size / elapsed
          if config.on_nonfinite == 'skip':
            scalars['train/skipped_steps'] = guard.skipped
          writer.write(step, scalars)
          progress.set_postfix(loss=f"{scalars['train/loss']:.4f}",
                               ex_s=f"{scalars.get('train/examples_per_sec', 0):.0f}")
          window, timed, window_start = [], 0, time.perf_counter()

        # Saved before evaluating: an evaluation that fails never costs the interval's work.
        if save_now or stop_now:
          checkpoints.save(step, state)
          saved = step
        if stop_now:
          checkpoints.wait()
          raise preemption.Interrupted(
              f'Stopped by {signals.name} at step {step}; checkpoint saved in '
              f'{checkpoints.directory}/{step}. Run the same command again (same --workdir) '
              f'to resume from step {step}.', signals.signum)

        if eval_now:
          eval_metrics = trainer.evaluate(state['params'], eval_source, preprocess.eval)
          # 'count' (the trainer's own: real examples seen) is printed, not plotted.
          writer.write(step, {f'eval/{k}': v for k, v in eval_metrics.items() if k != 'count'})
          log(format_eval(step, eval_metrics))
          timed, window_start = 0, time.perf_counter()  # Eval time is not training throughput.
        if fewshot and (step % config.fewshot.every == 0 or step == config.total_steps):
          scores = fewshot.evaluate(
              lambda source: trainer.features(state['params'], source, preprocess.eval))
          writer.write(step, {f'fewshot/{k}': v for k, v in scores.items()})
          log(f'step {step}: few-shot ' + ', '.join(
              f'{k[:-len("shot_accuracy")]}-shot {v:.4f}' for k, v in scores.items()
              if k.endswith('accuracy')))
          timed, window_start = 0, time.perf_counter()
  except OSError as e:  # Metrics and logs share the checkpoints' disk.
    if isinstance(e, errors.DiskFull) or not checkpoint_lib.out_of_space(e):
      raise
    raise checkpoints.disk_full_error(f'while writing {e.filename or "metrics"}') from None
  finally:
    progress.close()
    try:
      checkpoints.wait()  # A save in flight completes, whatever stopped the loop.
    finally:
      checkpoints.close()
      try:
        writer.close()
      except OSError as e:  # Its last flush, on a disk that may have filled up.
        if not checkpoint_lib.out_of_space(e):
          raise
        raise checkpoints.disk_full_error('while writing metrics') from None

  if main_process and os.path.exists(writer.path):
    png = plots.training_curves(writer.path, os.path.join(workdir, 'training_curves.png'))
    for path in trainer.task.write_plots(state['params'], workdir):  # Attention maps, boxes.
      print(f'Plot: {os.path.abspath(path)}')
    print(f'Checkpoints: {checkpoints.directory}\nMetrics: {os.path.abspath(writer.path)} and '
          f'{os.path.abspath(os.path.join(workdir, "tensorboard"))}\n'
          f'Training curves: {os.path.abspath(png)}')
    if eval_metrics:
      print('Final eval: ' + json.dumps(eval_metrics))
  return state, eval_metrics


def existing_checkpoints(config, workdir):
  """The workdir's checkpoints, for reading: a workdir without any is an error (and is not
  created)."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    raise errors.NotFound(f'No checkpoint in {directory}; train first (or check --workdir).')
  return checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints)


def restore_latest(config, workdir, devices=None):
  """(trainer, newest checkpointed state, its step) for export and inference."""
  checkpoints = existing_checkpoints(config, workdir)
  trainer = Trainer(config, workdir, devices)
  state, step = trainer.restore_newest(checkpoints)
  checkpoints.close()
  if state is None:
    raise errors.NotFound(f'No checkpoint in {checkpoints.directory}; train first.')
  return trainer, state, step


def export(config, workdir, path=None):
  """Writes the newest checkpoint's parameters to `path` (default config.export_path, else
  workdir/params.npz) in the published ViT .npz layout, for fine-tuning
  (config.pretrained.path) or other codebases, with the task's artifacts (a tokenizer)
  beside it. Builds no model and reads no data: the parameters are read as stored."""
  from vit_jax import pretrained
  checkpoints = existing_checkpoints(config, workdir)
  state, step = checkpoints.restore_newest()
  checkpoints.close()
  if state is None:
    raise errors.NotFound(f'No checkpoint in {checkpoints.directory}; train first.')
  path = os.path.abspath(path or config.export_path or os.path.join(workdir, 'params.npz'))
  if jax.process_index() == 0:
    if not os.path.isdir(os.path.dirname(path)):
      print(f'Creating {os.path.dirname(path)}')
      os.makedirs(os.path.dirname(path))
    pretrained.save_npz(jax.device_get(state['params']), path)
    for name in tasks.get_task(config.task).artifacts:
      source, target = os.path.join(workdir, name), os.path.join(os.path.dirname(path), name)
      if os.path.exists(source) and os.path.abspath(source) != target:
        shutil.copyfile(source, target)
    print(f'Exported step {step} parameters to {path}')
  return path


def run_command(config, workdir, mode):
  """A family's own mode (Task.commands, e.g. 'translate') with the newest checkpoint."""
  task = tasks.get_task(config.task)(config, workdir)
  commands = task.commands()
  if mode not in commands:
    raise errors.UserError(f'Unknown --mode={mode!r} for task {config.task!r}; expected one of '
                           f"{['train', 'export', 'config'] + sorted(commands)}.")
  trainer, state, _ = restore_latest(config, workdir)
  trainer.task.commands()[mode](state['params'])
