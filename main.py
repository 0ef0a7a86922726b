"""Entry point: generic flags only; every other setting is in the config. The work happens
in vit_jax.train.

  python main.py --config=configs/vit.py --workdir=/tmp/vit            # train (resumes)
  python main.py --config=configs/vit.py:tiny --config.total_steps=50  # override any value
  python main.py --config=configs/vit.py --workdir=/tmp/vit --mode=export
  echo "twenty-four" | python main.py --config=configs/transformer.py --workdir=/tmp/numbers \
      --mode=translate --config.translate.beam_size=4

Many hosts: run the same command on every host, adding --distributed (TPU pods, SLURM, Open MPI
and Kubernetes are detected by JAX) or --coordinator_address=HOST:PORT --num_processes=N
--process_id=I.
"""
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vit_jax import preemption
from vit_jax import train

config_flags.DEFINE_config_file('config', 'configs/vit.py', 'Config file (path[:arg]).',
                                lock_config=True)
flags.DEFINE_string('workdir', '/tmp/vit_jax', 'Checkpoints, metrics and plots go here.')
flags.DEFINE_string('mode', 'train', 'train: train and evaluate (resuming from workdir); '
                    'export: write the newest checkpoint\'s parameters to config.export_path '
                    '(default workdir/params.npz); or a mode of the config\'s family, run with '
                    'the newest checkpoint (translation: translate, see config.translate).')
flags.DEFINE_bool('distributed', False, 'Join a multi-process run through '
                  'jax.distributed.initialize (parameters detected by JAX on TPU pods, SLURM, '
                  'Open MPI, Kubernetes, or given by the three flags below).')
flags.DEFINE_string('coordinator_address', None, 'Many hosts: HOST:PORT of process 0.')
flags.DEFINE_integer('num_processes', None, 'Many hosts: the number of processes.')
flags.DEFINE_integer('process_id', None, 'Many hosts: this process\'s index, 0..N-1.')


def init_distributed():
  """jax.distributed.initialize when asked to (any of the four flags); else one process."""
  f = flags.FLAGS
  explicit = (f.coordinator_address, f.num_processes, f.process_id)
  if not f.distributed and all(v is None for v in explicit):
    return
  # CPU processes need gloo for cross-process collectives (accelerators ignore this).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(*explicit)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  init_distributed()
  if flags.FLAGS.mode == 'train':
    try:
      train.train_and_evaluate(config, flags.FLAGS.workdir)
    except preemption.Interrupted as e:
      print(e, file=sys.stderr)
      sys.exit(128 + e.signum)  # The shell's convention for death by signal.
  elif flags.FLAGS.mode == 'export':
    train.export(config, flags.FLAGS.workdir)
  else:
    train.run_command(config, flags.FLAGS.workdir, flags.FLAGS.mode)


if __name__ == '__main__':
  app.run(main)
