"""Entry point: generic flags only; every other setting is in the config. The work happens
in vit_jax.train.

  python main.py --config=configs/vit.py --workdir=/tmp/vit            # train (resumes)
  python main.py --config=configs/vit.py:tiny --config.total_steps=50  # override any value
  python main.py --config=configs/vit.py --mode=config                 # every key and its value
  python main.py --workdir=/tmp/vit --mode=export                      # uses the run's config
  echo "twenty-four" | python main.py --workdir=/tmp/numbers --mode=translate \
      --config.translate.beam_size=4

Without --workdir a run goes to <temp>/vit_jax/<config name>. Without --config, modes other
than train read the config the workdir was trained with (its config.json).

Many hosts: run the same command on every host, adding --distributed (TPU pods, SLURM, Open MPI
and Kubernetes are detected by JAX) or --coordinator_address=HOST:PORT --num_processes=N
--process_id=I.
"""
import ast
import os
import re
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vit_jax import compiling
from vit_jax import errors
from vit_jax import preemption

HERE = os.path.dirname(os.path.abspath(__file__))


def flag_in_argv(argv, name):
  """The value of --name=V or --name V on the command line, else None."""
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def with_config(argv):
  """argv with an explicit --config: the one given; else, for a mode other than train and
  config with a --workdir, the config that workdir was trained with (configs/workdir.py reads
  its config.json; --config.KEY overrides apply to it), so the workdir alone is enough to
  export or translate; else the default, configs/vit.py."""
  if any(re.match(r'--config(=|$)', arg) for arg in argv):
    return argv
  mode, workdir = flag_in_argv(argv, 'mode'), flag_in_argv(argv, 'workdir')
  if mode not in (None, 'train', 'config') and workdir:
    config = f'{os.path.join(HERE, "configs", "workdir.py")}:{workdir}'
  else:
    config = os.path.join(HERE, 'configs', 'vit.py')
  return argv[:1] + [f'--config={config}'] + argv[1:]


def default_workdir(config_name):
  """<temp>/vit_jax/vit, …/vit_tiny: one per config file and argument, so runs of different
  families or sizes never share checkpoints."""
  path, _, arg = config_name.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += '_' + re.sub(r'[^A-Za-z0-9.-]+', '-', arg)
  return os.path.join(tempfile.gettempdir(), 'vit_jax', name)


def print_config(config, config_name):
  """--mode=config: the config file's docstring, then every key with its resolved value."""
  path = config_name.partition(':')[0]
  with open(path) as f:
    print((ast.get_docstring(ast.parse(f.read())) or '').strip() + '\n')
  print(f'Resolved config ({config_name}); override any key with --config.KEY=VALUE:')
  for key, value in flatten(config.to_dict()):
    print(f'  {key} = {value!r}')


def flatten(tree, prefix=''):
  """[('optim.learning_rate', 0.001), ...] in the config's own order."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from flatten(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def define_flags():
  """Defined once argv holds --config (with_config): config_flags would otherwise parse the
  default config at definition, where a bad override cannot be reported in one line."""
  config_flags.DEFINE_config_file(
      'config', None,
      'Config file (path[:arg]); --mode=config prints its keys and values.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and plots go here (default: '
                      '<temp>/vit_jax/<config name>).')
  flags.DEFINE_string('mode', 'train', 'train: train and evaluate (resuming from workdir); '
                      'export: write the newest checkpoint\'s parameters to config.export_path '
                      '(default workdir/params.npz); config: print the config and exit; or a mode '
                      'of the config\'s family, run with the newest checkpoint (translation: '
                      'translate, see config.translate).')
  flags.DEFINE_bool('verbose', False, 'Show the full traceback of every error (by default an '
                    'error in the config, data, checkpoint or workdir is one line).')
  flags.DEFINE_bool('distributed', False, 'Join a multi-process run through '
                    'jax.distributed.initialize (parameters detected by JAX on TPU pods, SLURM, '
                    'Open MPI, Kubernetes, or given by the three flags below).')
  flags.DEFINE_string('coordinator_address', None, 'Many hosts: HOST:PORT of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Many hosts: the number of processes.')
  flags.DEFINE_integer('process_id', None, 'Many hosts: this process\'s index, 0..N-1.')


def parse_flags(argv):
  """absl's parsing, with a bad flag or config value reported in one line: config_flags
  wraps an error raised in the config file with its traceback; its last line is the message."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    if '--verbose' in argv:
      raise
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    message = re.sub(r'^[A-Za-z]*Error: ', '', lines[-1])
    if not isinstance(e, flags.Error):  # --config.KEY with a KEY the config lacks.
      key = re.search(r"'\\?'?([^'\\]+)", str(e)).group(1)
      given = [a.split('=')[0][len('--config.'):] for a in argv if a.startswith('--config.')]
      key = next((g for g in given if key in g.split('.')), key)  # With its parents.
      hint = re.search(r'Did you mean "([^"]+)"', str(e))
      message = (f'Unknown config key {key!r}' + (f' (did you mean {hint.group(1)!r}?)' if hint
                                                  else '') + '; --mode=config lists them all.')
    print(f'Error: {message}', file=sys.stderr)
    sys.exit(2)


def init_distributed():
  """jax.distributed.initialize when asked to (any of the four flags); else one process."""
  f = flags.FLAGS
  explicit = (f.coordinator_address, f.num_processes, f.process_id)
  if not f.distributed and all(v is None for v in explicit):
    return
  # CPU processes need gloo for cross-process collectives (accelerators ignore this).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(*explicit)


def run(config, workdir, mode):
  from vit_jax import train  # Here, not above: a config mistake is reported 2.6 s sooner.
  if mode == 'train':
    train.train_and_evaluate(config, workdir)
  elif mode == 'export':
    train.export(config, workdir)
  else:
    train.run_command(config, workdir, mode)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  config_name = config_flags.get_config_filename(f['config'])
  if f.mode == 'config':
    print_config(f.config, config_name)
    return
  workdir = f.workdir or default_workdir(config_name)
  init_distributed()
  compiling.collect_garbage_less_often()
  try:
    run(f.config, workdir, f.mode)
  except preemption.Interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)  # The shell's convention for death by signal.
  except errors.UserError as e:
    if f.verbose:
      raise
    print(f'Error: {e}', file=sys.stderr)
    if isinstance(e, errors.DiskFull):
      # Nothing is left to save, and orbax's unfinished writers and tensorboardX's exit hook
      # would each report the same full disk again while Python shuts down.
      sys.stderr.flush()
      os._exit(2)
    sys.exit(2)


if __name__ == '__main__':
  sys.argv = with_config(sys.argv)
  define_flags()
  app.run(main, flags_parser=parse_flags)
