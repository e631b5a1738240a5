"""The benchmark CLI: its JSON fields, their consistency, and the comparisons it offers."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from grurcn_jax import flops, levels as levels_lib
from tests.training_setup import REPO, build_tiny_demo

TINY_MODEL = ["--config.model.levels=('pool2','pool3')", "--config.model.hidden=(4,4)"]


def run_bench(*args):
  result = subprocess.run(
      [sys.executable, "-m", "grurcn_jax.bench", "--config=configs/demo.py", *args],
      capture_output=True, text=True, cwd=REPO, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def expected_params(levels, hidden, channels, num_classes, kernel=3):
  """GRU-RCN parameters from the closed formula (PAPER.md), per level: input conv
  (3F outputs, bias), hidden convs (3F outputs from F), classifier."""
  total = 0
  for level, f in zip(levels, hidden):
    c = channels[level]
    total += kernel * kernel * c * 3 * f + 3 * f + kernel * kernel * f * 3 * f
    total += f * num_classes + num_classes
  return total


@pytest.mark.parametrize("extra", [[], ["--remat"], ["--recurrence=rnn_cell"]])
def test_train_step_report(extra):
  report = run_bench(*TINY_MODEL, "--batch=8", "--clip_length=3", "--image_size=32",
                     "--steps=2", *extra)
  shapes = {l: levels_lib.feature_shape(l, 32) for l in ("pool2", "pool3")}
  channels = {l: s[-1] for l, s in shapes.items()}
  assert report["params"] == expected_params(("pool2", "pool3"), (4, 4), channels, 8)
  assert report["num_devices"] == jax.device_count()  # the 8 simulated CPU devices
  assert report["device"] and report["batch"] == 8 and report["clip_length"] == 3
  assert report["step_ms"] > 0 and report["compile_s"] > 0
  np.testing.assert_allclose(report["clips_per_s"], 8 / (report["step_ms"] / 1e3))
  from configs import demo
  model_cfg = demo.get_config().model
  model_cfg.levels, model_cfg.hidden = ("pool2", "pool3"), (4, 4)
  assert report["flops_per_step"] == flops.train_step_flops(model_cfg, shapes, 8, 3)
  np.testing.assert_allclose(report["achieved_flops_per_s"],
                             report["flops_per_step"] / (report["step_ms"] / 1e3))
  assert report["reference_flops_per_s"] > 0 and report["peak_memory_bytes"] > 0
  assert report["remat"] == ("--remat" in extra)
  assert report["recurrence"] == ("rnn_cell" if extra == ["--recurrence=rnn_cell"]
                                  else "fused")


def test_compile_only_reports_time_and_memory():
  report = run_bench(*TINY_MODEL, "--batch=8", "--clip_length=3", "--image_size=32",
                     "--steps=0")
  assert report["compile_s"] > 0 and report["peak_memory_bytes"] > 0
  assert report["step_ms"] != report["step_ms"]  # NaN: nothing was timed
  assert report["reference_flops_per_s"] is None


def test_pipeline_report(tmp_path):
  data_dir = build_tiny_demo(tmp_path / "demo")
  report = run_bench(*TINY_MODEL, f"--config.data.dir={data_dir}",
                     "--config.data.clip_length=4", "--what=pipeline", "--batch=4",
                     "--steps=5")
  assert report["what"] == "pipeline" and report["batch"] == 4
  assert report["batches"] == 20 and report["clips_per_s"] > 0
  assert report["levels"] == ["pool2", "pool3"] and report["clip_length"] == 4


def test_bad_config_is_one_line_error():
  result = subprocess.run(
      [sys.executable, "-m", "grurcn_jax.bench", "--config=configs/demo.py",
       "--config.model.recurrence=unrolled", "--steps=0"],
      capture_output=True, text=True, cwd=REPO, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 1
  assert "error: " in result.stderr and "Traceback" not in result.stderr
