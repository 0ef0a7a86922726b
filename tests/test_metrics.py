"""Metrics reach TensorBoard's event file (without importing PyTorch); the training curves."""
import struct
import subprocess
import sys

from PIL import Image
from tensorboardX.proto import event_pb2

from vit_jax import metrics
from vit_jax import plots


def events(path):
  """The Event protos of a TFRecord file (length, its CRC, the record, the record's CRC)."""
  data, out, i = path.read_bytes(), [], 0
  while i < len(data):
    [length] = struct.unpack('<Q', data[i:i + 8])
    out.append(event_pb2.Event.FromString(data[i + 12:i + 12 + length]))
    i += 12 + length + 4
  return out


def test_scalars_reach_tensorboard_without_importing_torch(tmp_path):
  script = ('import sys; from vit_jax import metrics; '
            f'w = metrics.MetricWriter({str(tmp_path)!r}); '
            "w.write(3, {'train/loss': 0.25}); w.close(); "
            "print('torch' in sys.modules)")
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       check=True)
  assert out.stdout == 'False\n'  # tensorboardX would import it (4 s per run) if let.
  [path] = (tmp_path / 'tensorboard').iterdir()
  scalars = [(e.step, v.tag, v.simple_value) for e in events(path) for v in e.summary.value]
  assert scalars == [(3, 'train/loss', 0.25)]
  assert (tmp_path / 'metrics.jsonl').read_text() == '{"step": 3, "train/loss": 0.25}\n'


def test_training_curves_are_a_grid_of_four_panels_a_row(tmp_path):
  """Six metrics (one of them eval-only) give two rows of four panels; one panel alone
  gives a one-panel picture."""
  w = metrics.MetricWriter(str(tmp_path))
  names = ['loss', 'accuracy', 'grad_norm', 'learning_rate', 'loss_ce']
  for step in range(0, 50, 10):
    w.write(step, {f'train/{n}': 1.0 / (step + 1) for n in names})
  w.write(50, {'eval/loss': 0.5, 'eval/AP': 0.25})
  w.close()
  png = plots.training_curves(str(tmp_path / 'metrics.jsonl'), str(tmp_path / 'curves.png'))
  assert Image.open(png).size == (4 * 360, 2 * 260 + 50)  # 3.6 x 2.6 in per panel, 100 dpi.
  (tmp_path / 'one.jsonl').write_text('{"step": 1, "train/loss": 0.5}\n')
  png = plots.training_curves(str(tmp_path / 'one.jsonl'), str(tmp_path / 'one.png'))
  assert Image.open(png).size == (360, 260 + 50)
