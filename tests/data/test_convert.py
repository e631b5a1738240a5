"""Conversion: format 1 directories and int8 storage, through the current format."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from grurcn_jax.data import convert, features, pipeline
from grurcn_jax.data.prepare import FeatureSpec
from grurcn_jax.errors import ConfigError
from grurcn_jax.host_tf import tf
from configs import default
from tests.data.fake import LEVEL_SHAPES, write_fake_features

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_format1(directory, videos_per_split):
  """A format 1 directory (one tf.train.Example per video), written here from its
  description, independently of the package."""
  rng = np.random.default_rng(1)
  metadata = {"format_version": 1, "dtype": "float16",
              "levels": {l: {"shape": list(s), "mean": [0.0] * s[-1], "scale": 1.0}
                         for l, s in LEVEL_SHAPES.items()},
              "class_names": ["a", "b"], "splits": {}, "backbone": {"name": "fake"},
              "extraction": {}}
  written = {}
  for split, count in videos_per_split.items():
    name = f"{split}-00000.tfrecord"
    videos = []
    with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
      for i in range(count):
        n = 3 + i
        values = {l: rng.standard_normal((n, *s)).astype(np.float16)
                  for l, s in LEVEL_SHAPES.items()}
        feature = {
            "video_id": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[f"{split}/{i}".encode()])),
            "video_index": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
            "frame_indices": tf.train.Feature(int64_list=tf.train.Int64List(
                value=list(range(0, 2 * n, 2)))),
            "num_frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[n]))}
        for l, v in values.items():
          feature[f"features/{l}"] = tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[v.astype("<f2").tobytes()]))
        writer.write(tf.train.Example(features=tf.train.Features(
            feature=feature)).SerializeToString())
        videos.append((f"{split}/{i}", i % 2, values))
    metadata["splits"][split] = {
        "shards": [{"file": name, "num_videos": count,
                    "num_frames": sum(3 + i for i in range(count)),
                    "videos": {str(i): f"{split}/{i}" for i in range(count)}}],
        "failed": [], "num_videos": count}
    written[split] = videos
  with open(os.path.join(directory, "metadata.json"), "w") as f:
    json.dump(metadata, f)
  return written


def test_format_1_converts_exactly_and_trains(tmp_path):
  src, dst = tmp_path / "v1", tmp_path / "v2"
  src.mkdir()
  written = write_format1(str(src), {"train": 5, "test": 2})
  convert.convert(str(src), str(dst), progress=False)
  metadata = features.read_metadata(str(dst))
  assert metadata["class_names"] == ["a", "b"]
  for split, videos in written.items():
    got = list(features.read_videos(str(dst), split))
    assert [(v.video_id, v.label) for v in got] == [(i, l) for i, l, _ in videos]
    for v, (_, _, values) in zip(got, videos):
      np.testing.assert_array_equal(v.frame_indices, np.arange(0, 2 * v.num_frames, 2))
      for level in LEVEL_SHAPES:
        np.testing.assert_array_equal(v.features[level], values[level])
  data = default.get_config().data
  data.dir, data.clip_length = str(dst), 2
  batch = next(pipeline.train_batches(data, batch_size=2))
  assert batch["features"]["pool4"].shape == (2, 2, 2, 2, 3)


def test_int8_conversion_is_resumable_and_dequantised_in_the_step(tmp_path):
  src, dst = tmp_path / "src", tmp_path / "int8"
  written = write_fake_features(src)
  convert.convert(str(src), str(dst), int8_levels=("pool4",), progress=False)
  mtimes = {f: os.stat(dst / f).st_mtime_ns for f in os.listdir(dst)
            if f != "metadata.json"}
  convert.convert(str(src), str(dst), int8_levels=("pool4",), progress=False)
  assert {f: os.stat(dst / f).st_mtime_ns for f in mtimes} == mtimes
  with pytest.raises(ConfigError, match="other --int8_levels"):
    convert.convert(str(src), str(dst), int8_levels=("fc7",), progress=False)

  # What the device computes from an int8 batch is what the format reads back.
  model = default.get_config().model
  model.levels, model.num_classes = ("pool4", "fc7"), 3
  data = default.get_config().data
  data.dir, data.clip_length, data.eval_clips = str(dst), 4, 1
  spec = FeatureSpec.from_directory(data, model)
  assert set(spec.int8_steps) == {"pool4"}
  batch = next(pipeline.eval_batches(data, batch_size=1))
  first = next(features.read_videos(str(dst), "test"))
  device = spec.dequantize(batch["features"])
  assert device["pool4"].dtype == np.float16
  np.testing.assert_array_equal(np.asarray(device["pool4"][0]), first.features["pool4"][:4])
  # And within half a step (and float16 rounding) of the float16 original.
  step = spec.int8_steps["pool4"]
  original = written["test"][0].features["pool4"][:4].astype(np.float64)
  inside = np.abs(original) <= 127 * step
  error = np.abs(np.asarray(device["pool4"][0], np.float64) - original)
  assert np.all(error[inside] <= step / 2 + 2.0 ** -11 * 127 * step)


def test_resuming_a_conversion_needs_the_same_source_and_flags(tmp_path):
  a, b, dst = tmp_path / "a", tmp_path / "b", tmp_path / "dst"
  write_fake_features(a, frames_jpeg_quality=0)
  write_fake_features(b, frames_jpeg_quality=0, seed=1)
  convert.convert(str(a), str(dst), progress=False, frames_jpeg_quality=90)
  before = {f: os.stat(dst / f).st_mtime_ns for f in os.listdir(dst)}
  # The same source (as another spelling of its path) and flags resume.
  convert.convert(f"{tmp_path}/../{tmp_path.name}/a/", str(dst), progress=False,
                  frames_jpeg_quality=90)
  assert {f: os.stat(dst / f).st_mtime_ns for f in os.listdir(dst)
          if f != "metadata.json"} == {f: t for f, t in before.items()
                                       if f != "metadata.json"}
  with pytest.raises(ConfigError, match=f"holds a conversion of {a}, not of {b}; use "
                                        f"another --dst"):
    convert.convert(str(b), str(dst), progress=False, frames_jpeg_quality=90)
  with pytest.raises(ConfigError, match=r"other --frames_jpeg_quality \(90 there, 80 "
                                        r"now\); use another --dst"):
    convert.convert(str(a), str(dst), progress=False, frames_jpeg_quality=80)
  with pytest.raises(ConfigError, match="not converted from"):
    convert.convert(str(b), str(a), progress=False)
  # The source itself, spelled another way; a file where the output would go.
  with pytest.raises(ConfigError, match="--dst must differ from --src"):
    convert.convert(str(a), f"{tmp_path}/./a/", progress=False)
  (tmp_path / "afile").write_text("")
  with pytest.raises(ConfigError, match=f"--dst {tmp_path / 'afile'} is a file"):
    convert.convert(str(a), str(tmp_path / "afile"), progress=False)


def test_frames_are_copied_or_stored_as_jpeg(tmp_path):
  raw, jpeg, copied = tmp_path / "raw", tmp_path / "jpeg", tmp_path / "copied"
  written = write_fake_features(raw, frames_jpeg_quality=0)
  # Raw frames -> JPEG, with pool4 as int8 on the way.
  convert.convert(str(raw), str(jpeg), int8_levels=("pool4",), progress=False,
                  frames_jpeg_quality=90)
  info = features.read_metadata(str(jpeg))["levels"][features.FRAMES]
  assert (info["encoding"], info["quality"]) == ("jpeg", 90)
  for got, want in zip(features.read_videos(str(jpeg), "train"), written["train"]):
    error = got.features["frames"].astype(float) - want.features["frames"]
    assert 10 * np.log10(255 ** 2 / np.mean(error ** 2)) > 30
  # JPEG frames are copied byte for byte, never encoded a second time.
  convert.convert(str(jpeg), str(copied), progress=False)
  for name in os.listdir(jpeg):
    if name.endswith((".frames", ".frames.index")):
      assert (jpeg / name).read_bytes() == (copied / name).read_bytes(), name
  with pytest.raises(ConfigError, match="as JPEG already"):
    convert.convert(str(jpeg), str(tmp_path / "again"), progress=False,
                    frames_jpeg_quality=50)
  with pytest.raises(ConfigError, match="names frames"):
    convert.convert(str(raw), str(tmp_path / "x"), int8_levels=("frames",),
                    progress=False)


def test_command_line_errors_are_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "grurcn_jax.data.convert", f"--src={tmp_path / 'none'}",
       f"--dst={tmp_path / 'out'}"], capture_output=True, text=True, cwd=REPO,
      timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 1
  assert result.stderr.startswith("error: no feature metadata") and "Traceback" not in \
      result.stderr


def test_a_train_step_runs_on_int8_batches(tmp_path):
  import jax
  from grurcn_jax import sharding
  from grurcn_jax.experiment import assemble
  write_fake_features(tmp_path, int8_levels=("pool4",))
  config = default.get_config()
  config.data.dir, config.data.clip_length = str(tmp_path), 2
  config.model.levels, config.model.hidden = ("pool4", "fc7"), (2, 2)
  config.model.num_classes, config.batch_size = 3, 8
  config.model.dropout_rate = 0.0   # the step's loss is then the eval-mode loss
  experiment = assemble(config)
  state = experiment.init_state()
  params = jax.device_get(state.params)
  host = next(pipeline.train_batches(config.data, batch_size=8,
                                     levels=config.model.levels))
  assert host["features"]["pool4"].dtype == np.int8
  state, metrics = experiment.train_step()(state, sharding.global_batch(experiment.mesh,
                                                                        host))
  assert int(state.step) == 1 and bool(metrics["finite"])
  # The loss the step computed is the model's on the numpy-dequantised float16
  # features (what the format reads back), outside the step.
  from grurcn_jax.models import classification_loss
  step = experiment.spec.int8_steps["pool4"]
  values = {"pool4": features.dequantize(host["features"]["pool4"], step),
            "fc7": host["features"]["fc7"]}
  out = experiment.model.apply({"params": params}, values, train=False)
  expected = float(np.mean(classification_loss(out, host["label"], config.model.loss)))
  # float32 sums of 8 clips' losses in another order: a few ulps of ~log(3).
  np.testing.assert_allclose(float(jax.device_get(metrics["loss"])), expected,
                             rtol=1e-5)


def test_ctrl_c_during_a_conversion_is_one_line_and_says_it_goes_on(monkeypatch, capsys):
  import types

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(convert, "FLAGS", types.SimpleNamespace(
      src="a", dst="b", int8_levels=[], frames_jpeg_quality=0))
  monkeypatch.setattr(convert, "convert", interrupted)
  with pytest.raises(SystemExit) as exit:
    convert.main(["convert"])
  assert exit.value.code == 130
  assert capsys.readouterr().err.endswith("error: interrupted (Ctrl-C); the shards "
                                          "already written are kept: run the same "
                                          "command again to go on\n")
