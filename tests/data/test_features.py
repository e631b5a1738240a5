"""The feature format: exact round trip, atomic shards, clear errors."""

import os

import numpy as np
import pytest

from grurcn_jax.data import features
from grurcn_jax.errors import FeatureFormatError
from tests.data.fake import LEVEL_SHAPES, write_fake_features


def test_round_trip_is_exact_for_every_level_and_the_metadata(tmp_path):
  written = write_fake_features(tmp_path)
  metadata = features.read_metadata(str(tmp_path))
  assert metadata["levels"]["pool4"]["shape"] == [2, 2, 3]
  assert metadata["dtype"] == "float16"
  assert metadata["splits"]["train"]["num_videos"] == 10
  read = [features.decode_video(r, metadata)
          for shard in features.split_shards(metadata, "train")
          for r in features.read_shard(os.path.join(tmp_path, shard["file"]))]
  assert [v.video_id for v in read] == [v.video_id for v in written["train"]]
  for got, want in zip(read, written["train"]):
    assert (got.label, got.video_index) == (want.label, want.video_index)
    np.testing.assert_array_equal(got.frame_indices, want.frame_indices)
    for level in LEVEL_SHAPES:
      assert got.features[level].dtype == np.float16
      np.testing.assert_array_equal(got.features[level], want.features[level])


def test_normalisation_round_trip_and_float16_range():
  rng = np.random.default_rng(0)
  # Tiny activations (a deep random-init level) would underflow float16 raw.
  activations = (rng.random((6, 2, 2, 4)) * 1e-6).astype(np.float32)
  assert np.count_nonzero(activations.astype(np.float16)) < activations.size
  stats = features.level_stats(activations)
  stored = features.normalize(activations, stats)
  assert stored.dtype == np.float16 and np.all(np.isfinite(stored))
  assert 0.5 < float(np.sqrt(np.mean(stored.astype(np.float32) ** 2))) < 2
  np.testing.assert_allclose(features.denormalize(stored, stats), activations,
                             rtol=2e-3, atol=2e-9)


def test_truncated_shard_error_names_the_file(tmp_path):
  write_fake_features(tmp_path)
  path = os.path.join(tmp_path, "train-00001.tfrecord")
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  with pytest.raises(FeatureFormatError, match="train-00001.tfrecord is corrupt or truncated"):
    list(features.read_shard(path))


def test_interrupted_write_leaves_no_shard(tmp_path):
  path = os.path.join(tmp_path, "train-00000.tfrecord")

  def videos():
    yield features.VideoFeatures("a", 0, 0, np.arange(2),
                                 {"fc7": np.zeros((2, 5), np.float16)})
    raise KeyboardInterrupt  # the job is stopped mid-shard

  with pytest.raises(KeyboardInterrupt):
    features.write_shard(path, videos())
  assert os.listdir(tmp_path) == []


def test_missing_metadata_and_unknown_split_are_clear(tmp_path):
  with pytest.raises(FeatureFormatError, match="no feature metadata"):
    features.read_metadata(str(tmp_path))
  write_fake_features(tmp_path)
  with pytest.raises(FeatureFormatError, match="available: test, train"):
    features.split_shards(features.read_metadata(str(tmp_path)), "validation")


def test_record_shard_keeps_one_sorted_entry_per_file_and_the_totals(tmp_path):
  write_fake_features(tmp_path)  # train: shards 0..3 of 3, 3, 3, 1 videos
  metadata = features.read_metadata(str(tmp_path))
  assert features.has_shard(metadata, "train", "train-00001.tfrecord")
  assert not features.has_shard(metadata, "validation", "validation-00000.tfrecord")
  path = os.path.join(tmp_path, "train-00001.tfrecord")
  assert features.exists(path) and not features.exists(path + ".missing")

  # A shard's entry recovered from its contents is the one written with it.
  recorded = features.split_shards(metadata, "train")[1]
  counts, videos = features.scan_shard(path, metadata)
  assert {"file": "train-00001.tfrecord", **counts,
          "videos": {str(i): v for i, v in videos.items()}} == recorded

  totals = {k: metadata["splits"]["train"][k] for k in ("num_videos", "num_frames")}
  for _ in range(2):  # recording a shard again replaces its entry
    features.record_shard(metadata, "train", "train-00001.tfrecord", counts,
                          videos=videos, failed=[("train/bad", "undecodable")])
  entries = metadata["splits"]["train"]
  assert [s["file"] for s in entries["shards"]] == [
      features.shard_name("train", i) for i in range(4)]
  assert {k: entries[k] for k in totals} == totals
  assert entries["failed"] == [{"video_id": "train/bad", "error": "undecodable"}]

  features.record_shard(metadata, "validation", "validation-00000.tfrecord",
                        {"num_videos": 1, "num_frames": 4}, videos={0: "validation/v0"})
  assert metadata["splits"]["validation"] == {
      "shards": [{"file": "validation-00000.tfrecord", "num_videos": 1, "num_frames": 4,
                  "videos": {"0": "validation/v0"}}],
      "failed": [], "num_videos": 1, "num_frames": 4}
