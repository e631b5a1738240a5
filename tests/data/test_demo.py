"""The demo dataset: classes defined by motion, in time-reversed twins."""

import dataclasses

import numpy as np

from grurcn_jax.data import demo, features


def test_a_reversed_video_is_a_video_of_its_twin():
  for label in range(len(demo.CLASS_NAMES)):
    rng = np.random.default_rng(label)
    params = demo.sample_params(rng, label, num_frames=6, image_size=32)
    twin = demo.reversed_params(params)
    assert twin.label == demo.twin(label) and demo.twin(twin.label) == label
    np.testing.assert_array_equal(demo.render(twin), demo.render(params)[::-1])


def test_twins_share_one_distribution_of_parameters():
  """The sampler draws the same numbers for a class and its twin: only the label
  (the direction of motion) differs, so every frame is equally likely under both."""
  for label in range(0, len(demo.CLASS_NAMES), 2):
    a = demo.sample_params(np.random.default_rng(7), label, 6, 32)
    b = demo.sample_params(np.random.default_rng(7), label + 1, 6, 32)
    assert dataclasses.replace(a, label=b.label) == b


def test_classes_differ_by_motion():
  """First and last frames of a 'right' video: the object moved right."""
  params = demo.sample_params(np.random.default_rng(0), 0, 6, 32)
  frames = demo.render(params).astype(np.float32)
  differs = np.abs(frames - np.asarray(params.background, np.float32)).sum(-1) > 60
  xs = [np.nonzero(f)[1].mean() for f in differs]
  assert xs[-1] - xs[0] > 0.3 * 32


def test_videos_are_deterministic_and_splits_disjoint():
  a = demo.video_params(0, "train", 2, 4, 32)
  assert a == demo.video_params(0, "train", 2, 4, 32)
  assert a != demo.video_params(1, "train", 2, 4, 32)
  test = demo.video_params(0, "test", 2, 4, 32)
  assert not set(a) & set(test)
  assert sorted(p.label for p in a) == sorted(list(range(8)) * 2)


def test_build_writes_the_feature_format(tmp_path):
  spec = demo.DemoSpec(train_per_class=1, test_per_class=1, num_frames=3, image_size=32,
                       levels=("pool2", "pool3"), videos_per_shard=4)
  metadata = demo.build(str(tmp_path), spec, progress=False)
  assert metadata["class_names"] == list(demo.CLASS_NAMES)
  assert metadata["splits"]["train"]["num_videos"] == 8
  assert metadata["splits"]["test"]["num_frames"] == 24
  assert metadata["levels"]["pool2"]["shape"] == [8, 8, 128]
  # Normalised on the way in: stored values are near zero mean, unit scale.
  video = next(features.read_videos(str(tmp_path), "train"))
  stored = video.features["pool3"].astype(np.float32)
  assert 0.2 < float(np.sqrt(np.mean(stored ** 2))) < 5
  before = sorted(p.stat().st_mtime_ns for p in tmp_path.iterdir())
  demo.build(str(tmp_path), spec, progress=False)  # cached: nothing rewritten
  assert sorted(p.stat().st_mtime_ns for p in tmp_path.iterdir()) == before


def test_the_flow_stream_is_flow_features_of_the_same_videos(tmp_path):
  spec = demo.DemoSpec(train_per_class=1, test_per_class=1, num_frames=3, image_size=32,
                       levels=("pool2",), videos_per_shard=4, store_frames=False,
                       modality="flow", flow_length=2)
  metadata = demo.build(str(tmp_path), spec, progress=False)
  assert metadata["extraction"]["modality"] == "flow"
  assert metadata["backbone"]["channels"] == 4
  # 3 frames: 2 flows, a window (of 2 stacked flows) starting at each.
  assert metadata["splits"]["test"]["num_frames"] == 8 * 2
  rgb = {v.video_id for v in demo.demo_videos(0, 1, 1, 3, 32)[1]}
  assert {v.video_id for s in ("train", "test")
          for v in features.read_videos(str(tmp_path), s)} == rgb
