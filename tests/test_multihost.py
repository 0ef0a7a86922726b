"""Two processes on loopback (CPU, gloo collectives) train exactly as one process does."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from configs import vit as vit_config
from helpers import with_devices
from vit_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_end_with_the_parameters_of_one(tmp_path):
  overrides = {'total_steps': 4, 'eval_every': 4, 'checkpoint_every': 4,
               'model.droppath_rate': 0.1}
  port = free_port()
  env = with_devices(1)  # One device a process: a mesh of two, across the processes.
  processes = [subprocess.Popen(
      [sys.executable, 'main.py', '--config=configs/vit.py:tiny', f'--workdir={tmp_path / "two"}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}']
      + [f'--config.{k}={v}' for k, v in overrides.items()],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  assert 'Final eval' in outputs[0][0] and 'Final eval' not in outputs[1][0]  # Process 0 logs.

  config = vit_config.get_config('tiny')
  config.update_from_flattened_dict(overrides)
  two_devices = jax.devices()[:2]  # The same two devices, in one process.
  one, metrics = train.train_and_evaluate(config, str(tmp_path / 'one'), devices=two_devices)
  _, two, step = train.restore_latest(config, str(tmp_path / 'two'), devices=two_devices)
  assert step == 4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0),
               jax.device_get(one['params']), jax.device_get(two['params']))
  assert f'"accuracy": {metrics["accuracy"]}' in outputs[0][0]
