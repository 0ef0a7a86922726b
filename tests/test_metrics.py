"""Metrics reach TensorBoard's event file, and writing them does not import PyTorch."""
import struct
import subprocess
import sys

from tensorboardX.proto import event_pb2


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
