"""--source=tfds on a tiny dataset generated here (no download): videos are read
in one forward pass and decoded one at a time, when extraction loads them, only
their kept frames; flow decodes consecutive frames."""

import io

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from grurcn_jax.data import extract  # noqa: E402

LENGTHS = {"train": (7, 4, 9), "test": (5,)}


class GrurcnTinyVideos(tfds.core.GeneratorBasedBuilder):
  """Video i of a split: LENGTHS[split][i] frames, every pixel 10 * i + the frame."""
  VERSION = tfds.core.Version("1.0.0")
  code_path = None   # no checksums file to look for (and no importlib_resources)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "video": tfds.features.Video(shape=(None, 8, 8, 3)),
        "label": tfds.features.ClassLabel(names=["a", "b"])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in LENGTHS}

  def _generate_examples(self, split):
    for i, n in enumerate(LENGTHS[split]):
      frames = 10 * i + np.arange(n, dtype=np.uint8)[:, None, None, None]
      yield i, {"video": np.broadcast_to(frames, (n, 8, 8, 3)), "label": i % 2}


class GrurcnManyVideos(tfds.core.GeneratorBasedBuilder):
  """40 one-frame videos in 2 files of 20: more than tfds' interleave block (16)
  per file. Video i: every pixel i, label i % 3."""
  VERSION = tfds.core.Version("1.0.0")
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "video": tfds.features.Video(shape=(None, 8, 8, 3)),
        "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(40), "test": self._generate_examples(2)}

  def _generate_examples(self, count):
    for i in range(count):
      yield i, {"video": np.full((1, 8, 8, 3), i, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("grurcn_tiny_videos", data_dir=directory).download_and_prepare()
  return directory


@pytest.fixture
def reads(data_dir, monkeypatch):
  """The split of every dataset extraction opens, and the frames it decodes."""
  opened, decoded = [], []
  builder = tfds.builder("grurcn_tiny_videos", data_dir=data_dir)
  as_dataset = builder.as_dataset
  frame_feature = builder.info.features["video"].feature
  decode = frame_feature.decode_example

  def opening(split, **kwargs):
    opened.append(split)
    return as_dataset(split=split, **kwargs)

  def decoding(encoded):
    decoded.append(encoded)
    return decode(encoded)

  monkeypatch.setattr(builder, "as_dataset", opening)
  monkeypatch.setattr(frame_feature, "decode_example", decoding)
  monkeypatch.setattr(tfds, "builder", lambda name, data_dir: builder)
  return opened, decoded


def test_videos_are_read_in_one_pass_and_only_kept_frames_decoded(data_dir, reads):
  opened, decoded = reads
  settings = extract.Settings(frame_stride=2)
  class_names, videos = extract.tfds_videos("grurcn_tiny_videos", data_dir, settings)
  assert class_names == ["a", "b"] and decoded == []
  assert opened == ["train", "test"]   # the listing: labels and frame counts
  assert {v.video_id: v.estimate_frames() for v in videos} == {
      f"{split}/{i:06d}": len(range(0, n, 2))
      for split, lengths in LENGTHS.items() for i, n in enumerate(lengths)}
  by_id = {v.video_id: v for v in videos}
  for split, lengths in LENGTHS.items():
    for i, n in enumerate(lengths):
      video = by_id[f"{split}/{i:06d}"]
      before = len(decoded)
      frames, indices = video.load()
      np.testing.assert_array_equal(indices, range(0, n, 2))
      np.testing.assert_array_equal(frames[:, 0, 0, 0], 10 * i + indices)
      assert frames.shape[1:] == (8, 8, 3) and frames.dtype == np.uint8
      assert (video.label, video.split, len(decoded) - before) == (i % 2, split, len(indices))
  # Each split read once, forward: not a slice (a read from its shard's start) per video.
  assert opened == ["train", "test", "train[0:]", "test[0:]"]


def test_a_video_out_of_order_starts_a_read_at_it(data_dir, reads):
  opened, _ = reads
  _, videos = extract.tfds_videos("grurcn_tiny_videos", data_dir, extract.Settings())
  by_id = {v.video_id: v for v in videos}
  for i in (1, 2, 0, 1):   # a resumed run's first video, then the calibration's first
    frames, _ = by_id[f"train/{i:06d}"].load()
    np.testing.assert_array_equal(frames[:, 0, 0, 0], 10 * i + np.arange(LENGTHS["train"][i]))
  assert opened[2:] == ["train[1:]", "train[0:]"]


def test_flow_decodes_consecutive_frames_and_strides_the_windows_once(data_dir):
  """--frame_stride and --max_frames select flow windows (extract.network_input),
  so a flow video is loaded frame by frame, as many as max_frames windows need."""
  flow = extract.Settings(frame_stride=2, max_frames=2, modality="flow", flow_length=1)
  _, videos = extract.tfds_videos("grurcn_tiny_videos", data_dir, flow)
  video = next(v for v in videos if v.video_id == "train/000002")   # 9 frames
  frames, indices = video.load()
  np.testing.assert_array_equal(indices, range(5))   # 2 windows 2 apart, 1 flow each
  np.testing.assert_array_equal(frames[:, 0, 0, 0], 20 + indices)


def test_every_video_keeps_its_own_label_across_the_splits_files(tmp_path):
  # tfds interleaves a split's files 16 examples at a time unless told otherwise:
  # the listing's i-th label then belonged to another video than split[i:]'s first.
  builder = tfds.builder("grurcn_many_videos", data_dir=str(tmp_path))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=2))
  assert builder.info.splits["train"].shard_lengths == [20, 20]
  _, videos = extract.tfds_videos("grurcn_many_videos", str(tmp_path), extract.Settings())
  # In the listing's order, as extraction loads them, and out of it, as a resumed
  # extraction starts.
  for video in videos + videos[25:30] + videos[3:5]:
    frames, _ = video.load()
    assert video.label == int(frames[0, 0, 0, 0]) % 3, video.video_id


def test_tfds_videos_are_extracted_in_their_listed_order(monkeypatch, tmp_path):
  """tfds shuffled the split when it prepared it: extraction keeps that order (no
  hashing), so its reads go forward through the split."""
  from grurcn_jax.data import demo, features
  class_names, videos = demo.demo_videos(0, 1, 1, num_frames=2, image_size=32)
  loaded = []
  videos = [extract.Video(v.video_id, v.label, v.split, estimate_frames=v.estimate_frames,
                          load=lambda v=v: (loaded.append(v.video_id), v.load())[1])
            for v in videos]
  settings = extract.Settings(levels=("pool2",), image_size=32, videos_per_shard=4,
                              batch_size=8)
  extract.extract(videos, class_names, str(tmp_path), settings, source="tfds",
                  progress=False, out=io.StringIO())
  listed = [v.video_id for v in videos]
  # Calibration's first training videos, then every video in order.
  assert loaded[-len(listed):] == listed
  stored = [v.video_id for split in ("train", "test")
            for v in features.read_videos(str(tmp_path), split)]
  assert stored == listed
