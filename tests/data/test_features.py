"""The feature format: exact round trip, int8 within half a step, clip reads of
exactly the rows asked for, atomic shards, clear errors."""

import json
import re
import os

import numpy as np
import pytest

from grurcn_jax.data import features, sampling
from grurcn_jax.errors import FeatureFormatError
from grurcn_jax.host_tf import tf
from tests.data.fake import FRAME_SHAPE, LEVEL_SHAPES, data_config, write_fake_features


def read_split(directory, split, metadata=None):
  return list(features.read_videos(str(directory), split, metadata))


def test_round_trip_is_exact_for_every_level_and_the_metadata(tmp_path):
  written = write_fake_features(tmp_path)
  metadata = features.read_metadata(str(tmp_path))
  assert metadata["format_version"] == 2
  assert metadata["levels"]["pool4"]["shape"] == [2, 2, 3]
  assert {info["dtype"] for info in metadata["levels"].values()} == {"float16"}
  assert metadata["splits"]["train"]["num_videos"] == 10
  read = read_split(tmp_path, "train")
  assert [v.video_id for v in read] == [v.video_id for v in written["train"]]
  for got, want in zip(read, written["train"]):
    assert (got.label, got.video_index) == (want.label, want.video_index)
    np.testing.assert_array_equal(got.frame_indices, want.frame_indices)
    for level in LEVEL_SHAPES:
      assert got.features[level].dtype == np.float16
      np.testing.assert_array_equal(got.features[level], want.features[level])
  # The level files are the rows, nothing else: frames x row bytes.
  shard = features.split_shards(metadata, "train")[0]
  size = os.path.getsize(tmp_path / features.level_file(shard["name"], "pool4"))
  assert size == shard["num_frames"] * 2 * 2 * 3 * 2


def test_int8_levels_are_within_half_a_step_and_half_the_bytes(tmp_path):
  written = write_fake_features(tmp_path, int8_levels=("pool4",))
  metadata = features.read_metadata(str(tmp_path))
  info = metadata["levels"]["pool4"]
  assert info["dtype"] == "int8" and metadata["levels"]["fc7"]["dtype"] == "float16"
  step = info["int8_step"]
  for got, want in zip(read_split(tmp_path, "train"), written["train"]):
    want4 = want.features["pool4"].astype(np.float64)
    inside = np.abs(want4) <= 127 * step          # beyond: clipped to +-127 steps
    error = np.abs(got.features["pool4"].astype(np.float64) - want4)
    # Rounding to the step (step / 2), then float16's rounding of the product
    # (2^-11 relative, |value| <= 127 steps).
    bound = step / 2 + 2.0 ** -11 * 127 * step
    assert np.all(error[inside] <= bound)
    np.testing.assert_array_equal(got.features["fc7"], want.features["fc7"])
  shard = features.split_shards(metadata, "train")[0]
  assert os.path.getsize(tmp_path / features.level_file(shard["name"], "pool4")) == \
      shard["num_frames"] * 12


def test_int8_step_covers_all_but_the_rarest_values():
  values = np.random.default_rng(0).standard_normal(200_000)
  step = features.int8_step(values)
  clipped = np.mean(np.abs(values) > 127 * step)
  assert 0 < clipped <= 2e-4
  np.testing.assert_array_equal(features.quantize(np.array([0.0, 1e9, -1e9]), step),
                                [0, 127, -127])


def test_quantizing_a_long_video_needs_little_more_than_its_int8_bytes():
  """Quantised whole, a level's float32 temporaries were 4x its float16 bytes
  (5.7 GB for pool2 of a 1,776-frame UCF-101 video); now a few rows at a time,
  to the same steps."""
  import tracemalloc
  values = np.random.default_rng(0).standard_normal((1000, 8, 8, 16)).astype(np.float16)
  step = 0.02
  tracemalloc.start()
  try:
    got = features.quantize(values, step)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  np.testing.assert_array_equal(got, np.clip(np.round(
      values.astype(np.float32) / np.float32(step)), -127, 127).astype(np.int8))
  # The int8 result and one float32 temporary of a few rows (it was 8x the
  # result: 4x the float16 values).
  temporary = features._QUANTIZE_ROWS * values[0].size * 4
  assert peak <= got.nbytes + 2 * temporary, (peak, got.nbytes, temporary)


def test_a_long_video_is_written_a_few_rows_at_a_time(tmp_path):
  """Each level's bytes were made whole before writing: another copy of the
  video's levels (2.6 GB for a 1,776-frame UCF-101 video at 224 px). Now a few
  rows at a time, the same bytes."""
  import tracemalloc
  shapes = {"pool2": (8, 8, 128), "pool3": (4, 4, 256)}
  metadata = features.new_metadata(
      levels=shapes, stats={l: {"mean": [0.0] * s[-1], "scale": 1.0, "int8_step": 0.05}
                            for l, s in shapes.items()},
      class_names=["a"], backbone={"name": "vgg16"}, extraction={},
      int8_levels=("pool3",))
  rng = np.random.default_rng(0)
  rows = 2000
  video = features.VideoFeatures("long", 0, 0, np.arange(rows), {
      l: rng.standard_normal((rows, *s)).astype(np.float16) for l, s in shapes.items()})
  tracemalloc.start()
  try:
    entry = features.write_shard(str(tmp_path), "train-00000", [video], metadata)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  # A few rows' bytes and quantize's float32 temporary, not pool2's 32 MB.
  float32_row = 4 * max(int(np.prod(s)) for s in shapes.values())
  assert peak <= 3 * features._WRITE_ROWS * float32_row, peak
  assert entry["num_frames"] == rows
  stored = {l: (tmp_path / features.level_file("train-00000", l)).read_bytes()
            for l in shapes}
  assert stored["pool2"] == video.features["pool2"].astype("<f2").tobytes()
  assert stored["pool3"] == features.quantize(video.features["pool3"], 0.05).tobytes()


def test_a_shard_is_read_a_video_at_a_time(tmp_path, monkeypatch):
  """Conversion read each shard's level files whole: 3-16 GB at UCF-101's paper
  shapes. Now no read is larger than one video's rows of one level, and the
  videos are those written (int8 levels as dequantised, JPEG frames as bytes)."""
  written = write_fake_features(tmp_path, videos_per_split={"train": 3},
                                frames=lambda i: 2 + 3 * i, int8_levels=("pool4",),
                                frames_jpeg_quality=90)["train"]
  metadata = features.read_metadata(str(tmp_path))
  reads, read_local = [], features._read_local
  monkeypatch.setattr(features, "_read_local",
                      lambda path, spans: (reads.extend((os.path.basename(path), len(t))
                                                        for _, t in spans),
                                           read_local(path, spans))[1])
  shard = features.split_shards(metadata, "train")[0]
  got = list(features.read_shard(str(tmp_path), shard, metadata, encoded=True))
  largest = max(len(v.frame_indices) for v in written)   # 8 of the shard's 15 rows
  for name, size in reads:
    level = name.split(".")[-1]
    if level == features.FRAMES:
      continue   # JPEG: their sizes vary (the row count is checked below)
    row_bytes = int(np.prod(LEVEL_SHAPES[level])) * (1 if level == "pool4" else 2)
    assert size <= largest * row_bytes, (name, size)
  assert len(reads) == 3 * 3   # a read per video and level
  for video, want in zip(got, written):
    assert video.video_id == want.video_id
    np.testing.assert_array_equal(video.features["fc7"], want.features["fc7"])
    np.testing.assert_array_equal(
        video.features["pool4"],
        features.dequantize(features.quantize(want.features["pool4"], 4.0 / 127),
                            4.0 / 127))
    assert len(video.features[features.FRAMES]) == len(want.frame_indices)


def clip_rows(directory, split, video, rows, levels=None):
  """Reads one clip through ClipReader, eagerly."""
  metadata = features.read_metadata(str(directory))
  reader = features.ClipReader(str(directory), metadata, split, levels)
  table = reader.videos
  clip = reader.read(tf.constant(table["shard"][video]),
                     tf.constant(table["first_frame"][video]),
                     tf.constant(rows, tf.int64))
  return reader, {level: x.numpy() for level, x in clip.items()}


@pytest.mark.parametrize("rows", [[0, 1, 2], [1, 3, 5], [4, 0, 1], [2], [5, 5]])
def test_clip_reader_reads_exactly_the_rows_asked_for(tmp_path, rows):
  written = write_fake_features(tmp_path, frames=lambda i: 6)
  video = 4  # second shard, second video: a non-zero offset in its files
  reader, clip = clip_rows(tmp_path, "train", video, rows)
  assert int(reader.videos["video_index"][video]) == 4
  want = written["train"][4]
  for level in LEVEL_SHAPES:
    np.testing.assert_array_equal(clip[level], want.features[level][rows])


def test_clip_reader_reads_only_the_levels_asked_for(tmp_path):
  write_fake_features(tmp_path)
  _, clip = clip_rows(tmp_path, "train", 0, [0, 1], levels=["fc7"])
  assert set(clip) == {"fc7"}
  with pytest.raises(FeatureFormatError, match="pool2.*available: pool4, fc7"):
    features.ClipReader(str(tmp_path), features.read_metadata(str(tmp_path)), "train",
                        ["pool2"])


def test_a_read_past_the_end_of_a_file_names_it(tmp_path):
  write_fake_features(tmp_path, frames=lambda i: 6)
  reader = features.ClipReader(str(tmp_path), features.read_metadata(str(tmp_path)),
                               "train")
  path = str(tmp_path / "train-00000.fc7")
  with open(path, "rb+") as f:
    f.truncate(5 * 2 * 6)  # 6 of the shard's 18 rows are left
  with pytest.raises(FeatureFormatError, match="train-00000.fc7 ends at byte 60"):
    reader.read_numpy(0, 6, [0, 1, 2])
  with open(path, "rb+") as f:
    f.truncate(10)   # now the read starts past the end: the size is still named
  with pytest.raises(FeatureFormatError, match=r"train-00000.fc7 ends at byte 10, "
                                               r"before the \d+ bytes read at \d+"):
    reader.read_numpy(0, 6, [3, 4, 5])


def test_check_names_truncated_and_missing_files(tmp_path):
  write_fake_features(tmp_path)
  metadata = features.read_metadata(str(tmp_path))
  reader = features.ClipReader(str(tmp_path), metadata, "train")
  assert reader.check() == []
  truncated = str(tmp_path / "train-00001.pool4")
  with open(truncated, "rb+") as f:
    f.truncate(os.path.getsize(truncated) - 1)
  missing = str(tmp_path / "train-00002.fc7")
  os.remove(missing)
  problems = reader.check()
  assert [(shard, path) for shard, path, _ in problems] == [(1, truncated), (2, missing)]
  assert "train-00001.pool4 is truncated or corrupt" in problems[0][2]
  assert "train-00002.fc7 does not exist" in problems[1][2]
  assert reader.drop_shards([1, 2]) == 6 and len(reader.videos["video_index"]) == 4
  with pytest.raises(FeatureFormatError, match="train-00001.pool4 is truncated"):
    read_split(tmp_path, "train")


def test_a_shard_of_no_videos_is_written_and_read(tmp_path):
  """Every video of a shard may fail to decode: its shard is empty, not an error."""
  write_fake_features(tmp_path / "ref")
  metadata = features.read_metadata(str(tmp_path / "ref"))
  entry = features.write_shard(str(tmp_path / "out"), "train-00000", iter([]), metadata)
  assert (entry["num_videos"], entry["num_frames"], entry["videos"]) == (0, 0, [])
  assert os.path.getsize(tmp_path / "out" / "train-00000.pool4") == 0
  assert list(features.read_shard(str(tmp_path / "out"), entry, metadata)) == []


def test_interrupted_write_leaves_no_shard(tmp_path):
  write_fake_features(tmp_path / "ref")
  metadata = features.read_metadata(str(tmp_path / "ref"))

  def videos():
    yield features.VideoFeatures("a", 0, 0, np.arange(2),
                                 {l: np.zeros((2, *s), np.float16)
                                  for l, s in LEVEL_SHAPES.items()})
    raise KeyboardInterrupt  # the job is stopped mid-shard

  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    features.write_shard(str(out), "train-00000", videos(), metadata)
  assert os.listdir(out) == []
  assert not features.shard_written(str(out), "train-00000")


def test_a_video_of_no_frames_is_refused_when_written_and_when_opened(tmp_path):
  """Clip rows wrap modulo a video's frame count: a video of none would read its
  neighbour's rows under its own label."""
  write_fake_features(tmp_path)
  metadata = features.read_metadata(str(tmp_path))
  empty = features.VideoFeatures(
      video_id="train/empty", video_index=99, label=0, frame_indices=np.zeros([0], int),
      features={l: np.zeros((0, *s), np.float16) for l, s in LEVEL_SHAPES.items()})
  with pytest.raises(FeatureFormatError,
                     match="video train/empty of shard train-00009 has no frames"):
    features.write_shard(str(tmp_path), "train-00009", [empty], metadata)
  assert not features.shard_written(str(tmp_path), "train-00009")

  # One written anyway (another writer): opening the split names it. Video 0
  # takes video 1's rows, so every file still has the size its table says.
  first, second = features.split_shards(metadata, "train")[0]["videos"][:2]
  first[4], second[3], second[4] = first[4] + second[4], second[3] + second[4], 0
  features.write_metadata(str(tmp_path), metadata)
  with pytest.raises(FeatureFormatError,
                     match=r"^video train/v001 of split 'train' of .* has no frames"):
    sampling.open_split(data_config(tmp_path), "train", None)


def test_missing_metadata_unknown_split_and_format_1_are_clear(tmp_path):
  with pytest.raises(FeatureFormatError, match="no feature metadata"):
    features.read_metadata(str(tmp_path))
  write_fake_features(tmp_path)
  with pytest.raises(FeatureFormatError, match="available: test, train"):
    features.split_shards(features.read_metadata(str(tmp_path)), "validation")
  path = tmp_path / features.METADATA_FILE
  metadata = json.loads(path.read_text())
  path.write_text(json.dumps(dict(metadata, format_version=1)))
  with pytest.raises(FeatureFormatError,
                     match="format_version 1.*python -m grurcn_jax.data.convert"):
    features.read_metadata(str(tmp_path))


def test_damaged_metadata_is_a_feature_error_naming_the_file(tmp_path):
  path = tmp_path / features.METADATA_FILE
  for contents, message in ((b"\xff\xfe\x00binary", "is not valid JSON"),
                            (b'{"format_version": 2, "levels"', "is not valid JSON"),
                            (b"[]", "a JSON object was expected, found a list"),
                            (b'{"format_version": 2}',
                             "lacks levels, class_names, splits: it is damaged")):
    path.write_bytes(contents)
    with pytest.raises(FeatureFormatError, match=f"^{re.escape(str(path))} .*{message}"):
      features.read_metadata(str(tmp_path))
  path.unlink()
  path.mkdir()
  with pytest.raises(FeatureFormatError, match=f"^cannot read {re.escape(str(path))}"):
    features.read_metadata(str(tmp_path))


def test_record_shard_keeps_one_sorted_entry_per_shard_and_the_totals(tmp_path):
  write_fake_features(tmp_path)  # train: shards 0..3 of 3, 3, 3, 1 videos
  metadata = features.read_metadata(str(tmp_path))
  assert features.has_shard(metadata, "train", "train-00001")
  assert not features.has_shard(metadata, "validation", "validation-00000")
  assert features.shard_written(str(tmp_path), "train-00001")
  assert not features.shard_written(str(tmp_path), "train-00009")

  # A shard's entry recovered from its table is the one recorded with it.
  recorded = features.split_shards(metadata, "train")[1]
  table = features.read_shard_table(str(tmp_path), "train-00001")
  assert {k: table[k] for k in recorded} == recorded
  assert recorded["videos"][0][:3] == [3, "train/v003", 0]   # index, id, label

  totals = {k: metadata["splits"]["train"][k] for k in ("num_videos", "num_frames")}
  for _ in range(2):  # recording a shard again replaces its entry
    features.record_shard(metadata, "train", table,
                          failed=[("train/bad", "undecodable")])
  entries = metadata["splits"]["train"]
  assert [s["name"] for s in entries["shards"]] == [
      features.shard_name("train", i) for i in range(4)]
  assert {k: entries[k] for k in totals} == totals
  assert entries["failed"] == [{"video_id": "train/bad", "error": "undecodable"}]
  assert features.video_ids(metadata, "train")[3] == "train/v003"


def test_jpeg_frames_are_smaller_and_read_back_within_jpeg_error(tmp_path):
  written = write_fake_features(tmp_path, frames_jpeg_quality=95)
  metadata = features.read_metadata(str(tmp_path))
  info = metadata["levels"][features.FRAMES]
  assert (info["encoding"], info["quality"], info["dtype"]) == ("jpeg", 95, "uint8")
  for got, want in zip(read_split(tmp_path, "train"), written["train"]):
    frames = got.features[features.FRAMES]
    assert frames.dtype == np.uint8 and frames.shape == want.features["frames"].shape
    error = np.abs(frames.astype(int) - want.features["frames"])
    assert error.mean() < 2 and error.max() < 48      # JPEG at quality 95
    np.testing.assert_array_equal(got.features["fc7"], want.features["fc7"])
  shard = features.split_shards(metadata, "train")[0]
  stored = os.path.getsize(tmp_path / features.level_file(shard["name"], "frames"))
  assert stored < shard["num_frames"] * int(np.prod(FRAME_SHAPE)) / 2
  index = np.fromfile(tmp_path / features.index_file(shard["name"], "frames"), "<i8")
  assert len(index) == shard["num_frames"] + 1 and index[-1] == stored


@pytest.mark.parametrize("rows", [[0, 1, 2], [1, 3, 5], [4, 0, 1], [5, 5]])
def test_clip_reader_decodes_exactly_the_jpeg_frames_asked_for(tmp_path, rows):
  write_fake_features(tmp_path, frames=lambda i: 6, frames_jpeg_quality=90)
  video = 4  # second shard, second video: a non-zero offset in its files
  metadata = features.read_metadata(str(tmp_path))
  reader = features.ClipReader(str(tmp_path), metadata, "train")
  assert reader.check() == []   # reads the frame offsets too
  table = reader.videos
  clip = reader.read(tf.constant(table["shard"][video]),
                     tf.constant(table["first_frame"][video]),
                     tf.constant(rows, tf.int64))
  # The decoder of the numpy tools, on the whole video: the same pixels.
  whole = read_split(tmp_path, "train", metadata)[4].features[features.FRAMES]
  np.testing.assert_array_equal(clip[features.FRAMES].numpy(), whole[rows])
  np.testing.assert_array_equal(clip["pool4"].numpy(),
                                read_split(tmp_path, "train")[4].features["pool4"][rows])


def test_check_names_a_bad_jpeg_index_or_truncated_frames(tmp_path):
  write_fake_features(tmp_path, frames_jpeg_quality=90)
  metadata = features.read_metadata(str(tmp_path))
  truncated = str(tmp_path / "train-00001.frames")
  with open(truncated, "rb+") as f:
    f.truncate(os.path.getsize(truncated) - 1)
  os.remove(tmp_path / "train-00002.frames.index")
  problems = features.ClipReader(str(tmp_path), metadata, "train").check()
  assert [(shard, os.path.basename(path)) for shard, path, _ in problems] == [
      (1, "train-00001.frames"), (2, "train-00002.frames.index")]
  assert "truncated or corrupt" in problems[0][2]
  assert "does not exist" in problems[1][2]
  with pytest.raises(FeatureFormatError, match="JPEG quality 101"):
    features.new_metadata(levels={}, stats={}, class_names=[], backbone={},
                          extraction={}, frames_shape=FRAME_SHAPE,
                          frames_jpeg_quality=101)
