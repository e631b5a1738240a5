"""The benchmark CLI: its JSON fields, their consistency, and the comparisons it offers."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from grurcn_jax import bench, flops, levels as levels_lib
from tests.training_setup import REPO, python_without

TINY_MODEL = ["--config.model.levels=('pool2','pool3')", "--config.model.hidden=(4,4)"]


def run_bench(*args, without=()):
  """`python -m grurcn_jax.bench --config=configs/demo.py ARGS`, optionally with
  modules made unimportable (as on accelerator images without TensorFlow or clu)."""
  result = subprocess.run(
      python_without(without, "grurcn_jax.bench", "--config=configs/demo.py", *args),
      capture_output=True, text=True, cwd=REPO, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-3000:]
  # Strict JSON (the contract: one JSON line): NaN or Infinity would fail here.
  return json.loads(result.stdout.strip().splitlines()[-1],
                    parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


def expected_params(levels, hidden, channels, num_classes, kernel=3):
  """GRU-RCN parameters from the closed formula (the paper's cell), per level: input conv
  (3F outputs, bias), hidden convs (3F outputs from F), classifier."""
  total = 0
  for level, f in zip(levels, hidden):
    c = channels[level]
    total += kernel * kernel * c * 3 * f + 3 * f + kernel * kernel * f * 3 * f
    total += f * num_classes + num_classes
  return total


# Two runs cover the options (each run is a process start and a compilation).
# --host_feed after --profile_dir: its steps go on from the profiled ones' state
# (the step donates the one it is given).
@pytest.mark.parametrize("extra", [["--remat", "--kernel_gradient=taps",
                                    "--config.model.remat_levels=('pool3',)"],
                                   ["--flax_rnn_cell", "--profile_dir", "--host_feed"]])
def test_train_step_report(extra, tmp_path):
  extra = [f"--profile_dir={tmp_path}" if e == "--profile_dir" else e for e in extra]
  # The train step needs neither TensorFlow nor clu (GPU images often lack both).
  report = run_bench(*TINY_MODEL, "--batch=8", "--clip_length=3", "--image_size=32",
                     "--steps=2", *extra, without=("tensorflow", "clu"))
  shapes = {l: levels_lib.feature_shape(l, 32) for l in ("pool2", "pool3")}
  channels = {l: s[-1] for l, s in shapes.items()}
  assert report["params"] == expected_params(("pool2", "pool3"), (4, 4), channels, 8)
  assert report["num_devices"] == jax.device_count()  # the 8 simulated CPU devices
  assert report["device"] and report["batch"] == 8 and report["clip_length"] == 3
  assert report["image_size"] == 32
  assert report["step_ms"] > 0 and report["compile_s"] > 0
  np.testing.assert_allclose(report["clips_per_s"], 8 / (report["step_ms"] / 1e3))
  from configs import demo
  from grurcn_jax.models import build_model
  model_cfg = demo.get_config().model
  model_cfg.levels, model_cfg.hidden = ("pool2", "pool3"), (4, 4)
  # The same count for flax's nn.RNN model: the same convolutions.
  assert report["flops_per_step"] == flops.train_step_flops(build_model(model_cfg),
                                                            shapes, 8, 3)
  np.testing.assert_allclose(report["achieved_flops_per_s"],
                             report["flops_per_step"] / (report["step_ms"] / 1e3))
  assert report["reference_flops_per_s"] > 0 and report["peak_memory_bytes"] > 0
  assert report["compiled_memory_bytes"] > 0 and report["platform"] == "cpu"
  # A CPU keeps no peak: none is reported rather than 0.
  assert report["peak_memory_before_step_bytes"] is None and report["input"] == "features"
  assert "convolution" in report["reference"]
  np.testing.assert_allclose(report["utilisation"], report["achieved_flops_per_s"]
                             / report["reference_flops_per_s"])
  assert report["remat"] == ("--remat" in extra)
  assert report["remat_levels"] == (["pool3"] if "--remat" in extra else [])
  assert report["kernel_gradient"] == ("taps" if "--remat" in extra else "auto")
  if "--host_feed" in extra:
    assert report["host_fed_step_ms"] > 0 and report["host_fed_unprefetched_step_ms"] > 0
  else:
    assert "host_fed_step_ms" not in report
  assert report["recurrence"] == ("flax_rnn_cell" if "--flax_rnn_cell" in extra
                                  else "fused")
  if "--flax_rnn_cell" in extra:  # traced: the trace is written where asked
    assert report["profile"]["trace"].startswith(str(tmp_path))
    assert os.path.getsize(report["profile"]["trace"]) > 0
    assert report["profile"]["steps"] == 3  # the default --profile_steps
    assert "convolution" in (tmp_path / "train_step.hlo.txt").read_text()
  else:
    assert "profile" not in report


def test_utilisation_is_of_every_device_the_step_ran_on():
  from grurcn_jax import bench
  # 8 GPUs at 100 TFLOP/s each, the step at 400 TFLOP/s in all: half of them.
  assert bench.utilisation(400e12, 100e12, "gpu", 8) == pytest.approx(0.5)
  assert bench.utilisation(400e12, 100e12, "tpu", 4) == pytest.approx(1.0)
  # Simulated CPU devices share the cores the one-device reference used.
  assert bench.utilisation(4e9, 8e9, "cpu", 8) == pytest.approx(0.5)


def test_trace_summary_counts_device_time_per_step():
  # A GPU-shaped Chrome trace: a host process (ignored) and a device process with
  # one stream whose kernels overlap in part, over 2 steps.
  from grurcn_jax import bench
  meta = lambda kind, pid, name, tid=None: {"ph": "M", "name": kind, "pid": pid,
                                            "tid": tid, "args": {"name": name}}
  kernel = lambda ts, dur, name, tid=7: {"ph": "X", "pid": 2, "tid": tid, "ts": ts,
                                         "dur": dur, "name": name}
  trace = {"traceEvents": [
      meta("process_name", 1, "/host:CPU"), meta("process_name", 2, "/device:GPU:0"),
      meta("thread_name", 2, "Stream #13(Compute)", tid=7),
      {"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 10_000, "name": "host work"},
      kernel(0, 1000, "conv"), kernel(500, 1000, "conv"),   # overlap: busy 1500 us
      kernel(3000, 400, "fusion.1"), kernel(5000, 1000, "conv"),
      kernel(0, 50, "other", tid=8)]}
  summary = bench.summarize_trace(trace, steps=2)
  stream, other = summary["timelines"]
  assert stream["timeline"] == "Stream #13(Compute)" and other["timeline"] == "8"
  assert stream["process"] == "/device:GPU:0" and stream["events_per_step"] == 2
  np.testing.assert_allclose(stream["busy_ms_per_step"], (1500 + 400 + 1000) / 2 / 1e3)
  assert [op["name"] for op in stream["top"]] == ["conv", "fusion.1"]
  np.testing.assert_allclose(stream["top"][0]["ms_per_step"], 3000 / 2 / 1e3)
  np.testing.assert_allclose(stream["top"][1]["share"], 400 / 2900)
  assert bench.summarize_trace({"traceEvents": []}, steps=1)["timelines"] == []


def test_a_demo_config_is_benchmarked_at_its_own_frame_size():
  """Without --image_size, the frame size the config's demo is built at (48 px for
  configs/demo.py), not 224: its model timed at 224 px gave 3.6 clips/s where its
  training ran 50-90."""
  report = run_bench(*TINY_MODEL, "--batch=8", "--clip_length=2", "--steps=0",
                     without=("tensorflow", "clu"))
  assert report["image_size"] == 48
  from configs import demo
  from grurcn_jax.models import build_model
  model_cfg = demo.get_config().model
  model_cfg.levels, model_cfg.hidden = ("pool2", "pool3"), (4, 4)
  shapes = {l: levels_lib.feature_shape(l, 48) for l in ("pool2", "pool3")}
  assert report["flops_per_step"] == flops.train_step_flops(build_model(model_cfg),
                                                            shapes, 8, 2)


def test_frames_mode_train_step_report_compiled_only():
  # VGG-16 (random weights, frozen) runs in the step on uint8 frames; the report
  # counts its parameters and its forward FLOPs (no backward through it).
  # Compiled only (--steps=0): what is counted does not need the step timed.
  # The clip length is the config's when --clip_length is not given.
  report = run_bench(*TINY_MODEL, "--batch=8", "--config.data.clip_length=2",
                     "--image_size=32", "--steps=0", "--config.data.input=frames",
                     without=("tensorflow", "clu"))
  assert report["clip_length"] == 2
  assert report["input"] == "frames" and report["compiled_memory_bytes"] > 0
  assert report["compile_s"] > 0 and report["peak_memory_bytes"] > 0
  assert report["step_ms"] is None and report["clips_per_s"] is None  # not timed
  assert report["reference_flops_per_s"] is None
  shapes = {l: levels_lib.feature_shape(l, 32) for l in ("pool2", "pool3")}
  channels = {l: s[-1] for l, s in shapes.items()}
  # VGG-16 blocks 1-3 (pool3 is the deepest level): (input channels, output
  # channels, side) of each 3x3 convolution.
  convs = [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16),
           (128, 256, 8), (256, 256, 8), (256, 256, 8)]
  backbone_params = sum(9 * c * f + f for c, f, _ in convs)
  assert report["params"] == backbone_params + expected_params(
      ("pool2", "pool3"), (4, 4), channels, 8)
  backbone_forward = sum(2 * side * side * 9 * c * f for c, f, side in convs) * 8 * 2
  from configs import demo
  from grurcn_jax.models import build_model
  model_cfg = demo.get_config().model
  model_cfg.levels, model_cfg.hidden = ("pool2", "pool3"), (4, 4)
  assert report["flops_per_step"] == backbone_forward + flops.train_step_flops(
      build_model(model_cfg), shapes, 8, 2)


def test_scaling_report_shows_each_device_doing_its_share():
  # Stacked: every level's layer, and the states passed between levels.
  # (tests/test_sharding.py checks the per-device program of every variant.)
  report = run_bench(*TINY_MODEL, "--config.model.variant=stacked", "--what=scaling",
                     "--batch=16", "--clip_length=3", "--image_size=32",
                     without=("tensorflow", "clu"))
  assert report["num_devices"] == 8 and report["batch"] == 16
  # The per-device program does what one device does with 2 clips.
  assert 0.95 < report["flops_ratio"] < 1.05
  np.testing.assert_allclose(report["flops_ratio"], report["xla_flops_per_device"]
                             / report["xla_flops_one_device"])
  assert report["all_gather_bytes"] == 0
  assert report["collective_bytes"]["all-reduce"] > 0   # the gradients' sum


def test_pipeline_report(tiny_demo_dir):
  data_dir = tiny_demo_dir
  report = run_bench(*TINY_MODEL, f"--config.data.dir={data_dir}",
                     "--config.data.clip_length=4", "--what=pipeline", "--batch=4",
                     "--steps=5")
  assert report["what"] == "pipeline" and report["batch"] == 4
  assert report["batches"] == 10 and report["clips_per_s"] > 0
  assert report["levels"] == ["pool2", "pool3"] and report["clip_length"] == 4
  # pool2 and pool3 of 32x32 frames, float16, 4 frames a clip.
  assert report["bytes_per_clip"] == 4 * (8 * 8 * 128 + 4 * 4 * 256) * 2
  np.testing.assert_allclose(report["gb_per_s"],
                             report["clips_per_s"] * report["bytes_per_clip"] / 1e9)


@pytest.mark.long
def test_synthetic_videos_feed_end_to_end_and_the_pipeline(tmp_path):
  data_dir = tmp_path / "synthetic"
  common = [*TINY_MODEL, f"--config.data.dir={data_dir}", "--config.data.clip_length=3",
            "--image_size=32", "--batch=8", "--steps=2"]
  # end_to_end writes the synthetic set itself (one program start fewer); its
  # steps run on int8 pool2, delivered as bytes. It runs as on a GPU image without
  # TensorFlow or clu: the threaded loader.
  report = run_bench(*common, "--what=end_to_end", "--synthetic_videos=16",
                     "--synthetic_frames=5", "--int8_levels=pool2",
                     "--config.data.loader=threads", without=("tensorflow", "clu"))
  assert report["loader"] == "threads" and report["input"] == "features"
  assert report["bytes_per_clip"] == 3 * (8 * 8 * 128 * 1 + 4 * 4 * 256 * 2)
  assert report["what"] == "end_to_end" and report["num_devices"] == 8
  for key in ("end_to_end_clips_per_s", "step_clips_per_s", "input_clips_per_s",
              "to_device_clips_per_s"):
    assert report[key] > 0
  seconds = [report["batch"] / report[f"{stage}_clips_per_s"]
             for stage in ("input", "to_device", "step")]
  assert report["bound_by"] == bench.bound_by(*seconds)
  assert report["device_prefetch"] == 2
  from grurcn_jax.data import features
  metadata = features.read_metadata(str(data_dir))
  assert metadata["splits"]["train"]["num_videos"] == 16
  assert metadata["splits"]["train"]["num_frames"] == 16 * 5
  assert metadata["levels"]["pool2"]["dtype"] == "int8"
  frames = run_bench(*common, "--what=pipeline", "--synthetic_videos=16",
                     "--synthetic_frames=5", "--config.data.input=frames",
                     "--frames_jpeg_quality=90", f"--config.data.dir={tmp_path / 'frames'}")
  # JPEG frames on disk, delivered decoded.
  assert frames["loader"] == "tf" and frames["levels"] == ["frames"] and frames["bytes_per_clip"] == 3 * 32 * 32 * 3
  info = features.read_metadata(str(tmp_path / "frames"))["levels"]["frames"]
  assert (info["encoding"], info["quality"]) == ("jpeg", 90)


@pytest.mark.parametrize("input_ms,to_device_ms,step_ms,bound", [
    (8.3, 10.0, 61.0, "step"),           # frames mode on a GPU: VGG-16 in the step
    (27.5, 51.0, 24.6, "input+copy"),    # float16 features: the copy doubles it
    (27.5, 29.0, 24.6, "input"),         # the copy adds under a tenth
    (27.5, 51.0, 51.0, "step"),          # a tie is the step's
    (30.0, 28.0, 29.0, "input"),         # reads timed slower than reads and copy
])
def test_bound_by_names_the_slowest_stage(input_ms, to_device_ms, step_ms, bound):
  assert bench.bound_by(input_ms / 1e3, to_device_ms / 1e3, step_ms / 1e3) == bound


@pytest.mark.parametrize("args,message", [
    (["--config.model.recurrence=unrolled", "--steps=0"], "model.recurrence='unrolled'"),
    (["--batch=0"], "--batch=0: give 1 or more"),
    (["--config=configs/default.py", "--what=pipeline"],
     "--what=pipeline reads features: give --config.data.dir"),
    (["--config=configs/missing.py"], "--config: No such file or directory"),
])
def test_bad_config_or_flags_are_one_line_error(args, message):
  result = subprocess.run(
      [sys.executable, "-m", "grurcn_jax.bench", "--config=configs/demo.py", *args],
      capture_output=True, text=True, cwd=REPO, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 1
  assert "error: " in result.stderr and "Traceback" not in result.stderr
  assert message in result.stderr, result.stderr[-2000:]


def test_input_rates_leave_out_what_was_read_ahead():
  # A loader that read 3 batches ahead while the program compiled hands them over
  # at once; the rest take 10 ms each. Timed over all 20, it would read 8.5 ms a
  # batch; the second half reads the loader's own rate.
  taken = []

  def take_one():
    taken.append(1)
    if len(taken) > 3:
      time.sleep(0.01)
  assert bench._steady_seconds_per_item(20, take_one) >= 0.01
  assert len(taken) == 20


def test_a_partial_demo_spec_is_timed_at_the_size_it_builds_at(monkeypatch):
  # data.demo gives only what differs from DemoSpec's defaults (ensure_demo fills
  # in the rest): its frame size is DemoSpec's, not a KeyError.
  import types
  import ml_collections
  from grurcn_jax import bench
  from grurcn_jax.data.demo import DemoSpec
  monkeypatch.setattr(bench, "FLAGS", types.SimpleNamespace(image_size=None))
  config = ml_collections.ConfigDict({"data": {"demo": {"num_frames": 4}}})
  assert bench.image_size(config) == DemoSpec.image_size
  config.data.demo.image_size = 32
  assert bench.image_size(config) == 32
  config.data.demo = None
  assert bench.image_size(config) == 224
  monkeypatch.setattr(bench, "FLAGS", types.SimpleNamespace(image_size=64))
  assert bench.image_size(config) == 64
