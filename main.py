"""Entry point: flags only. The work happens in vit_jax.train.

  python main.py --config=configs/vit.py --workdir=/tmp/vit            # train (resumes)
  python main.py --config=configs/vit.py:tiny --config.total_steps=50  # override any value
  python main.py --config=configs/vit.py --workdir=/tmp/vit --mode=export
  echo "twenty-four" | python main.py --config=configs/transformer.py --workdir=/tmp/numbers \
      --mode=translate
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

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
  if flags.FLAGS.mode == 'train':
    train.train_and_evaluate(config, flags.FLAGS.workdir)
  elif flags.FLAGS.mode == 'translate':
    translate(config)
  else:
    train.export(config, flags.FLAGS.workdir, flags.FLAGS.export_path)


if __name__ == '__main__':
  app.run(main)
