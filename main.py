"""Entry point: flags only. The work happens in vit_jax.train.

  python main.py --config=configs/vit.py --workdir=/tmp/vit            # train (resumes)
  python main.py --config=configs/vit.py:tiny --config.total_steps=50  # override any value
  python main.py --config=configs/vit.py --workdir=/tmp/vit --mode=export
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vit_jax import train

config_flags.DEFINE_config_file('config', 'configs/vit.py', 'Config file (path[:arg]).',
                                lock_config=True)
flags.DEFINE_string('workdir', '/tmp/vit_jax', 'Checkpoints, metrics and plots go here.')
flags.DEFINE_enum('mode', 'train', ['train', 'export'], 'train: train and evaluate (resuming '
                  'from workdir); export: write the newest checkpoint to workdir/params.npz.')
flags.DEFINE_string('export_path', None, 'Where --mode=export writes (default '
                    'workdir/params.npz).')


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  if flags.FLAGS.mode == 'train':
    train.train_and_evaluate(config, flags.FLAGS.workdir)
  else:
    train.export(config, flags.FLAGS.workdir, flags.FLAGS.export_path)


if __name__ == '__main__':
  app.run(main)
