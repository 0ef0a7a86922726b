"""Interruptions, damaged checkpoints, non-finite steps and unusable workdirs."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers import params_of
from helpers import tiny
from vit_jax import checkpoint
from vit_jax import errors
from vit_jax import metrics
from vit_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def restored_params(config, workdir, step):
  trainer = train.Trainer(config)
  checkpoints = checkpoint.Checkpointer(str(workdir), keep=3)
  state = checkpoints.restore(step, checkpoint.abstract_with_shardings(
      trainer.abstract_state, trainer.state_shardings))
  checkpoints.close()
  return params_of(state)


@pytest.mark.long
@pytest.mark.multi_device  # As main.py runs: the same 8 devices, so results are bitwise equal.
def test_sigterm_saves_a_checkpoint_and_resuming_equals_an_uninterrupted_run(tmp_path):
  overrides = {'total_steps': 120, 'log_every': 1, 'eval_every': 1000,
               'checkpoint_every': 1000, 'model.num_layers': 1, 'model.droppath_rate': 0.1}
  command = [sys.executable, 'main.py', '--config=configs/vit.py:tiny',
             f'--workdir={tmp_path / "run"}'] + [f'--config.{k}={v}' for k, v in
                                                 overrides.items()]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  log = tmp_path / 'run' / 'metrics.jsonl'
  deadline = time.time() + 240
  while not (log.exists() and len(log.read_text().splitlines()) >= 5):
    assert process.poll() is None and time.time() < deadline, process.communicate()
    time.sleep(0.02)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  [stopped] = [int(d) for d in os.listdir(tmp_path / 'run' / 'checkpoints')]
  assert 5 <= stopped < 120
  assert (f'Stopped by SIGTERM at step {stopped}; checkpoint saved in '
          f'{tmp_path / "run" / "checkpoints" / str(stopped)}. Run the same command again '
          f'(same --workdir) to resume from step {stopped}.') in stderr

  resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resuming from step {stopped}' in resumed.stdout

  config = tiny(**overrides)
  uninterrupted, _ = train.train_and_evaluate(config, str(tmp_path / 'whole'))
  jax.tree.map(np.testing.assert_array_equal, params_of(uninterrupted),
               restored_params(config, tmp_path / 'run', 120))


def test_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, capsys):
  config = tiny(total_steps=4, eval_every=100, checkpoint_every=2)
  train.train_and_evaluate(config, str(tmp_path), stop_at_step=4)
  at_two = restored_params(config, tmp_path, 2)
  for folder, _, files in os.walk(tmp_path / 'checkpoints' / '4'):
    for name in files:  # A disk that filled up mid-write.
      path = os.path.join(folder, name)
      os.truncate(path, os.path.getsize(path) // 2)

  trainer = train.Trainer(config)
  checkpoints = checkpoint.Checkpointer(str(tmp_path), keep=3)
  state, step = trainer.restore_newest(checkpoints)
  checkpoints.close()
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, at_two, params_of(state))
  out = capsys.readouterr().out
  assert f'Checkpoint {tmp_path / "checkpoints" / "4"} is damaged and was set aside as 4.damaged' \
      in out
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4.damaged']  # Nothing deleted.

  _, _ = train.train_and_evaluate(config, str(tmp_path))  # Resumes from 2, saves 4 again.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4', '4.damaged']


def test_a_save_cut_short_never_replaces_the_last_good_checkpoint(tmp_path):
  config = tiny(total_steps=2, eval_every=100, checkpoint_every=2)
  state, _ = train.train_and_evaluate(config, str(tmp_path))
  # Orbax writes into a temporary folder and renames it when complete: a crash mid-save
  # leaves only the temporary folder, half written.
  partial = tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp-1763900000000000'
  shutil.copytree(tmp_path / 'checkpoints' / '2', partial)
  for folder, _, files in os.walk(partial):
    for name in files:
      os.truncate(os.path.join(folder, name), 0)
  checkpoints = checkpoint.Checkpointer(str(tmp_path), keep=3)
  assert checkpoints.latest_step() == 2
  checkpoints.close()
  _, restored, step = train.restore_latest(config, str(tmp_path))
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, params_of(state), params_of(restored))


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  # A learning rate of 1e30 makes step 1's update finite but step 2's logits overflow.
  config = tiny(total_steps=5, eval_every=100, checkpoint_every=1, log_every=100,
                **{'optim.learning_rate': 1e30, 'optim.warmup_steps': 0})
  with pytest.raises(errors.Diverged,
                     match=r"Non-finite loss, grad_norm \(\{'loss': nan, 'grad_norm': nan\}\) at "
                           r"step 2\. Training stopped without saving; the last good checkpoint "
                           r"is step 1\. .*--config.on_nonfinite=skip"):
    train.train_and_evaluate(config, str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == ['1']


def test_nonfinite_steps_can_be_skipped_and_counted(tmp_path):
  config = tiny(total_steps=5, eval_every=100, checkpoint_every=1, log_every=5,
                keep_checkpoints=5, on_nonfinite='skip',
                **{'optim.learning_rate': 1e30, 'optim.warmup_steps': 0})
  state, _ = train.train_and_evaluate(config, str(tmp_path))
  assert int(state['step']) == 5
  # Steps 2-5 were skipped: the parameters are still those after step 1.
  jax.tree.map(np.testing.assert_array_equal, restored_params(config, tmp_path, 1),
               params_of(state))
  [row] = [r for r in metrics.read_jsonl(str(tmp_path / 'metrics.jsonl')) if 'train/loss' in r]
  assert row['train/skipped_steps'] == 4


@pytest.mark.filterwarnings('ignore:overflow encountered in cast')  # The 1e39 itself.
def test_a_finite_step_that_overflows_the_parameters_is_skipped_too(tmp_path):
  # A learning rate of 1e39 is infinite in float32: the loss and gradients of step 1 are
  # finite, the parameters after its update are not.
  config = tiny(total_steps=3, eval_every=100, checkpoint_every=1, log_every=3,
                on_nonfinite='skip', **{'optim.learning_rate': 1e39, 'optim.warmup_steps': 0})
  state, _ = train.train_and_evaluate(config, str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params_of(state)))
  [row] = [r for r in metrics.read_jsonl(str(tmp_path / 'metrics.jsonl')) if 'train/loss' in r]
  assert row['train/skipped_steps'] == 3 and np.isfinite(row['train/loss'])
  config.on_nonfinite = 'stop'
  with pytest.raises(errors.Diverged, match='Non-finite parameters after the update at step 1'):
    train.train_and_evaluate(config, str(tmp_path / 'stop'))


def test_a_full_disk_is_one_error_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
  saves = []
  real_save = checkpoint.ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):  # The second save finds the disk full.
    saves.append(step)
    if len(saves) == 2:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, 'save', save)
  config = tiny(total_steps=4, eval_every=100, checkpoint_every=2, log_every=100)
  with pytest.raises(errors.DiskFull) as raised:
    train.train_and_evaluate(config, str(tmp_path))
  directory = tmp_path / 'checkpoints'
  assert str(raised.value) == (
      f'No space left on device in {directory} (while saving checkpoint 4). The last good '
      f'checkpoint is {directory}/2; free some space (or move the workdir) and run the same '
      'command again to resume from it.')
  assert os.listdir(directory) == ['2']
  # A disk without room for the next checkpoint is named before orbax starts writing.
  monkeypatch.setattr(checkpoint.shutil, 'disk_usage', lambda _: shutil._ntuple_diskusage(
      10 * 2**20, 10 * 2**20 - 2**19, 2**19))
  with pytest.raises(errors.DiskFull, match=r'\(checkpoint 4 needs 1\.\d MiB, the disk has '
                                            r'0\.5 MiB free\)\. The last good checkpoint is '
                                            r'.*checkpoints/2;'):
    train.train_and_evaluate(config, str(tmp_path))


def test_bad_data_fails_before_training_and_an_eval_failure_after_the_save(tmp_path):
  """Every split is checked at start-up; with the check off, an evaluation that fails comes
  after its interval's checkpoint is written."""
  from PIL import Image
  root = tmp_path / 'photos'
  for split in ('train', 'test'):
    for c in ('cat', 'dog'):
      (root / split / c).mkdir(parents=True)
      for i in range(4):
        Image.new('L', (8, 8), 40 * i).save(root / split / c / f'{i}.png')
  (root / 'test' / 'dog' / '3.png').write_bytes(b'not a png')
  config = tiny(total_steps=4, eval_every=4, checkpoint_every=4, log_every=100, batch_size=8,
                **{'data.name': 'folder', 'data.data_dir': str(root), 'model.num_classes': 2})
  with pytest.raises(errors.UserError, match=r"Evaluation image '.*test/dog/3.png' is "
                                             r"malformed: UnidentifiedImageError"):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints' / '4')  # No training happened.
  assert json.loads((tmp_path / 'run' / 'classes.json').read_text()) == ['cat', 'dog']
  config.check_data = False
  with pytest.raises(errors.UserError, match='Evaluation image .* is malformed'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert os.listdir(tmp_path / 'run' / 'checkpoints') == ['4']  # Saved before evaluating.


def test_a_refused_checkpoint_leaves_the_workdir_config_untouched(tmp_path):
  train.train_and_evaluate(tiny(total_steps=1, eval_every=100), str(tmp_path))
  saved = (tmp_path / 'config.json').read_text()
  with pytest.raises(checkpoint.CheckpointMismatch):
    train.train_and_evaluate(tiny(total_steps=2, **{'model.mlp_dim': 48}), str(tmp_path))
  assert (tmp_path / 'config.json').read_text() == saved


def test_unknown_nonfinite_mode_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown on_nonfinite='ignore'; expected one of "
                                       r"\('stop', 'skip'\)"):
    train.train_and_evaluate(tiny(on_nonfinite='ignore'), str(tmp_path))


def test_a_checkpoint_of_another_model_is_named_not_restored(tmp_path):
  train.train_and_evaluate(tiny(total_steps=1, eval_every=100), str(tmp_path))
  wider = tiny(total_steps=2, **{'model.mlp_dim': 48})
  with pytest.raises(checkpoint.CheckpointMismatch,
                     match=r"does not match the model: "
                           r"params/Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias is "
                           r"float32\[64\] in the checkpoint but float32\[48\] in the model\. "
                           r"Was it written with another config\?"):
    train.train_and_evaluate(wider, str(tmp_path))
  deeper = tiny(total_steps=2, **{'model.num_layers': 3})
  with pytest.raises(checkpoint.CheckpointMismatch, match=r"the model has \[.*encoderblock_2"):
    train.train_and_evaluate(deeper, str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == ['1']  # Left as it was.


def test_a_workdir_that_cannot_be_written_is_named(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(errors.UserError, match=f"Cannot write to workdir '{blocker}/run' "
                                            r"\(Not a directory\); choose a writable --workdir"):
    train.train_and_evaluate(tiny(), str(blocker / 'run'))
