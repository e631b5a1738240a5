"""A restore checks the fields that shape the state: the model, and data.input."""

import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from grurcn_jax import checkpoints, sharding
from grurcn_jax.errors import CheckpointMismatchError, CheckpointReadError, ConfigError
from tests.training_setup import REPO


def saved(tmp_path, config_dict):
  manager = checkpoints.Checkpoints(str(tmp_path))
  manager.save(1, {"w": jnp.arange(3.0)}, config_dict)
  manager.close()
  return checkpoints.Checkpoints(str(tmp_path))


def target():
  return checkpoints.abstract_like({"w": jnp.zeros(3)},
                                   sharding.replicated(sharding.make_mesh()))


def test_another_input_mode_is_named(tmp_path):
  config = default.get_config()
  config.data.input = "frames"
  manager = saved(tmp_path, config.to_dict())
  contract = {"model": config.model.to_dict(), "data": {"input": "features"}}
  with pytest.raises(CheckpointMismatchError,
                     match="data.input: checkpoint 'frames', config 'features'"):
    manager.restore(target(), contract)
  contract["data"]["input"] = "frames"
  state = manager.restore(target(), contract)
  np.testing.assert_array_equal(jax.device_get(state["w"]), [0.0, 1.0, 2.0])
  manager.close()


def test_a_checkpoint_that_predates_a_field_counts_as_its_default(tmp_path):
  config = default.get_config().to_dict()
  del config["data"]["input"]               # saved before data.input existed
  del config["model"]["backbone_trainable"]
  manager = saved(tmp_path, config)
  contract = {"model": default.get_config().model.to_dict(),
              "data": {"input": "features"}}
  state = manager.restore(target(), contract)
  np.testing.assert_array_equal(jax.device_get(state["w"]), [0.0, 1.0, 2.0])
  contract["model"]["backbone_trainable"] = True
  with pytest.raises(CheckpointMismatchError, match="model.backbone_trainable"):
    manager.restore(target(), contract)
  manager.close()


def test_a_state_of_another_structure_names_the_settings_that_differ(tmp_path):
  # Same model, but an optimizer setting that adds state (clipping, say): orbax's
  # tree-structure error becomes one naming the setting.
  config = default.get_config()
  config.grad_clip_norm = 0.0
  manager = saved(tmp_path, config.to_dict())
  config.grad_clip_norm = 1.0
  bigger = checkpoints.abstract_like({"w": jnp.zeros(3), "clip": jnp.zeros(())},
                                     sharding.replicated(sharding.make_mesh()))
  contract = {"model": config.model.to_dict(), "data": {"input": "features"}}
  with pytest.raises(CheckpointMismatchError,
                     match=r"another structure .*grad_clip_norm: checkpoint 0.0, config 1.0"):
    manager.restore(bigger, contract, config=config.to_dict())
  # Settings that cannot shape the state (data.dir, the seed) are left out of the
  # message where one that can differs; where none does, all that differ are named.
  config.data.dir, config.seed = "/elsewhere", 7
  with pytest.raises(CheckpointMismatchError) as named:
    manager.restore(bigger, contract, config=config.to_dict(),
                    state_fields=("optimizer", "grad_clip_norm"))
  assert "(settings that differ: grad_clip_norm: checkpoint 0.0, config 1.0)" in str(
      named.value)
  with pytest.raises(CheckpointMismatchError) as named:
    manager.restore(bigger, contract, config=config.to_dict(), state_fields=("optimizer",))
  assert "data.dir: checkpoint '', config '/elsewhere'" in str(named.value)
  assert "seed: checkpoint 0, config 7" in str(named.value)
  manager.close()


def test_orbax_leaves_the_preemption_sync_point_to_the_training_loop(tmp_path, monkeypatch):
  # JAX's sync manager takes each call's step as the host's position: orbax's calls
  # (the saved step, from its finalising thread) would move it back.
  from jax.experimental import multihost_utils
  calls = []
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      lambda step: calls.append(step) or False)
  manager = checkpoints.Checkpoints(str(tmp_path))
  for step in (1, 2):
    manager.save(step, {"w": jnp.arange(3.0)}, default.get_config().to_dict())
  manager.close()
  assert calls == []


@pytest.mark.parametrize("given", ["run", "~/run"])
def test_a_relative_or_home_directory_saves_and_restores(tmp_path, monkeypatch, given):
  # Orbax refuses relative paths, and a shell leaves ~ as it is after '=':
  # `--workdir=run` and `--workdir=~/run` trained until the first save failed.
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path))
  manager = saved(given, default.get_config().to_dict())
  contract = {"model": default.get_config().model.to_dict(), "data": {"input": "features"}}
  state = manager.restore(target(), contract)
  np.testing.assert_array_equal(jax.device_get(state["w"]), [0.0, 1.0, 2.0])
  manager.close()
  assert (tmp_path / "run").is_dir()


@pytest.mark.parametrize("damage", ["config", "state"])
def test_a_damaged_checkpoint_is_one_error_naming_the_other_steps(tmp_path, damage):
  config = default.get_config().to_dict()
  manager = checkpoints.Checkpoints(str(tmp_path))
  for step in (1, 2):
    manager.save(step, {"w": jnp.arange(3.0) * step}, config)
  manager.close()
  if damage == "config":   # a partly deleted copy
    shutil.rmtree(tmp_path / "2" / "config")
  else:   # a truncated copy: every data file of the state cut short
    data = [p for p in (tmp_path / "2" / "state").rglob("*")
            if p.is_file() and p.parent.name == "d"]
    assert data
    for path in data:
      path.write_bytes(path.read_bytes()[:16])
  manager = checkpoints.Checkpoints(str(tmp_path))
  contract = {"model": config["model"], "data": {"input": "features"}}
  with pytest.raises(CheckpointReadError, match=r"the checkpoint at step 2 in .* cannot be "
                                                r"read \(.*\)\. If the storage .* damaged "
                                                r".* the others there \(\[1\]\)"):
    manager.restore(target(), contract, step=2)
  state = manager.restore(target(), contract, step=1)
  np.testing.assert_array_equal(jax.device_get(state["w"]), [0.0, 1.0, 2.0])
  manager.close()


def test_restore_params_reads_the_parameters_alone(tmp_path):
  config = default.get_config().to_dict()
  manager = checkpoints.Checkpoints(str(tmp_path))
  manager.save(4, {"params": {"w": jnp.arange(3.0)}, "opt_state": {"mu": jnp.ones(5)}},
               config)
  manager.close()
  manager = checkpoints.Checkpoints(str(tmp_path))
  contract = {"model": config["model"], "data": {"input": "features"}}
  params, step = manager.restore_params(target(), contract)
  assert step == 4 and params["w"].sharding.is_fully_replicated
  np.testing.assert_array_equal(jax.device_get(params["w"]), [0.0, 1.0, 2.0])
  contract["model"] = dict(config["model"], hidden=[7])
  with pytest.raises(CheckpointMismatchError, match="model.hidden"):
    manager.restore_params(target(), contract)
  manager.close()


@pytest.mark.parametrize("text,expected", [
    ("/runs/a", ("/runs/a", None)), ("/runs/a@12", ("/runs/a", 12)),
    ("/runs/user@host/a", ("/runs/user@host/a", None)),   # an '@' inside the path
    ("/runs/user@host/a@3", ("/runs/user@host/a", 3))])
def test_a_run_location_is_its_directory_and_maybe_a_step(text, expected):
  assert checkpoints.location(text, "caption.encoder_checkpoint") == expected


@pytest.mark.parametrize("text,message", [
    ("/runs/a@latest", "caption.encoder_checkpoint: the step after '@' must be a number"),
    ("", "caption.encoder_checkpoint needs a directory")])
def test_a_bad_run_location_is_a_config_error_naming_its_setting(text, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    checkpoints.location(text, "caption.encoder_checkpoint")


def test_ctrl_c_asks_to_save_and_stop_and_an_ignored_one_stays_ignored():
  import signal
  before = signal.getsignal(signal.SIGINT)
  with checkpoints.Preemption() as preemption:
    assert not preemption.requested and preemption.exit_status == 1
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.requested and preemption.cause == "Ctrl-C"
    assert preemption.exit_status == 130
  assert signal.getsignal(signal.SIGINT) is before   # restored
  # A job started in the background by a script ignores the terminal's Ctrl-C:
  # it stays ignored.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with checkpoints.Preemption() as preemption:
      os.kill(os.getpid(), signal.SIGINT)
      assert not preemption.requested
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_landing_inside_a_write_to_stderr_still_saves_and_stops(monkeypatch):
  """A signal handler runs between two bytecodes of the main thread, which may be
  inside a write to stderr (a progress line): a print there raised "reentrant
  call inside <_io.BufferedWriter>" in the training loop, a traceback instead of
  a save; a flush there kept the second Ctrl-C from exiting."""
  import io
  import signal
  from grurcn_jax import multihost
  exits = []
  monkeypatch.setattr(multihost.os, "_exit", exits.append)
  read_end, write_end = os.pipe()
  preemption = checkpoints.Preemption()

  class InterruptedWhileWriting(io.FileIO):
    def write(self, data):
      preemption._handle(signal.SIGINT, None)   # a Ctrl-C lands mid-write
      return super().write(data)

  stderr = io.TextIOWrapper(io.BufferedWriter(InterruptedWhileWriting(write_end, "w")),
                            line_buffering=True)
  monkeypatch.setattr(sys, "stderr", stderr)
  print("step 3/10", file=sys.stderr)             # the first Ctrl-C: save and stop
  assert preemption.requested and preemption.cause == "Ctrl-C" and not exits
  print("step 4/10", file=sys.stderr)             # the second: exit now
  assert exits == [130]
  stderr.close()
  with os.fdopen(read_end) as written:
    lines = written.read().splitlines()
  # (What follows the exit's message is the patched os._exit returning.)
  assert lines[:4] == ["Ctrl-C: saving a checkpoint at the end of this step, then "
                       "stopping (Ctrl-C again stops at once)", "step 3/10", "",
                       "error: Ctrl-C again: stopped now; checkpoints already written "
                       "are kept (one being written is not)"], lines


def test_a_second_ctrl_c_stops_at_once():
  """Raised as a KeyboardInterrupt inside an orbax save, the normal exit after it
  joined orbax's threads, which can wait 20 minutes: it exits now, status 130."""
  program = ("import os, signal, time\n"
             "from grurcn_jax import checkpoints\n"
             "with checkpoints.Preemption():\n"
             "  os.kill(os.getpid(), signal.SIGINT)\n"
             "  os.kill(os.getpid(), signal.SIGINT)\n"
             "  time.sleep(60)\n")
  result = subprocess.run([sys.executable, "-c", program], capture_output=True,
                          text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 130
  assert result.stderr.endswith("error: Ctrl-C again: stopped now; checkpoints already "
                                "written are kept (one being written is not)\n"), (
      result.stderr)
