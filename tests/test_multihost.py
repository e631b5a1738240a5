"""Two processes on one machine (4 CPU devices each, gloo collectives) train the
demo config to the same parameters and eval loss as one process with 8 devices
and the same global batch, each reading only its own data streams."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from grurcn_jax import train
from tests.training_setup import (REPO, build_tiny_demo, overrides_as_flags,
                                  restore_params, tiny_config)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  data_dir = build_tiny_demo(tmp_path / "data")
  settings = dict(num_train_steps=6, checkpoint_every_steps=3, eval_every_steps=6)
  reference_dir = str(tmp_path / "one")
  config = tiny_config(data_dir, data__num_streams=2, **settings)
  reference = train.train_and_evaluate(config, reference_dir)

  workdir = str(tmp_path / "two")
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  processes = [subprocess.Popen(
      [sys.executable, "-m", "grurcn_jax.main", "--config=configs/demo.py",
       f"--workdir={workdir}", *overrides_as_flags(data_dir, **settings),
       "--config.data.num_streams=2", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "on 8 device(s)" in outputs[0][0]

  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    metrics = json.load(f)
  np.testing.assert_allclose(metrics["loss"], reference["loss"], rtol=1e-5)
  assert metrics["num_videos"] == reference["num_videos"]
  # One consistent set of checkpoints, equal to the one-process run's.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               restore_params(config, workdir, 6), restore_params(config, reference_dir, 6))
