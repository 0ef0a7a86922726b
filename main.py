"""Entry point: flags only. The work happens in vit_jax.train.

  python main.py --config=configs/vit.py --workdir=/tmp/vit            # train (resumes)
  python main.py --config=configs/vit.py:tiny --config.total_steps=50  # override any value
  python main.py --config=configs/vit.py --workdir=/tmp/vit --mode=export
  echo "twenty-four" | python main.py --config=configs/transformer.py --workdir=/tmp/numbers \
      --mode=translate

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
flags.DEFINE_enum('mode', 'train', ['train', 'export', 'translate'],
                  'train: train and evaluate (resuming from workdir); export: write the newest '
                  'checkpoint to workdir/params.npz; translate: translate --input with the newest '
                  'checkpoint (translation configs).')
flags.DEFINE_string('export_path', None, 'Where --mode=export writes (default '
                    'workdir/params.npz).')
flags.DEFINE_string('input', '-', '--mode=translate: a file with one sentence a line (- = stdin).')
flags.DEFINE_integer('beam_size', 4, '--mode=translate: beam size (1 = greedy).')
flags.DEFINE_float('alpha', 0.6, '--mode=translate: GNMT length penalty exponent.')
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


def translate(config):
  trainer, state, _ = train.restore_latest(config, flags.FLAGS.workdir)
  with (sys.stdin if flags.FLAGS.input == '-' else open(flags.FLAGS.input)) as f:
    texts = [line.rstrip('\n') for line in f if line.strip()]
  for text in trainer.task.translate_texts(state['params'], texts, flags.FLAGS.beam_size,
                                           flags.FLAGS.alpha):
    print(text)


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
  elif flags.FLAGS.mode == 'translate':
    translate(config)
  else:
    train.export(config, flags.FLAGS.workdir, flags.FLAGS.export_path)


if __name__ == '__main__':
  app.run(main)
