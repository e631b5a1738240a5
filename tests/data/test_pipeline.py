"""The tf.data pipeline: host sharding, determinism, resume, eval padding, errors;
captioning's segments and captions."""

import collections
import itertools
import os

import numpy as np
import pytest

from grurcn_jax.data import features, pipeline, sampling
from grurcn_jax.errors import FeatureFormatError
from tests.data.fake import data_config, write_fake_features


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("features")
  # 20 train videos in 7 shards (uneven), 7 test videos in 3 shards.
  write_fake_features(directory, videos_per_split={"train": 20, "test": 7})
  return str(directory)


def host_epoch_videos(feature_dir, seed, host, hosts, epoch=0):
  """The video ids one host reads in one epoch, in order (batch size 1)."""
  epoch_size = -(-20 // hosts)    # every stream of `hosts`: ceil(20 videos / hosts)
  batches = pipeline.train_batches(data_config(feature_dir, clip_length=3), batch_size=1,
                                   seed=seed, process_index=host, process_count=hosts,
                                   start_step=epoch * epoch_size)
  return [int(b["video_index"][0]) for b in itertools.islice(batches, epoch_size)]


@pytest.mark.parametrize("hosts", [2, 3])
def test_every_video_once_per_epoch_over_hosts(feature_dir, hosts):
  for epoch in (0, 1):
    seen = [v for h in range(hosts) for v in host_epoch_videos(feature_dir, 0, h, hosts, epoch)]
    if hosts == 2:
      assert sorted(seen) == list(range(20)), (epoch, seen)
    else:   # 3 streams of 7 (all in the same epoch at the same step): one video
      # of the 20 twice, the epoch's first
      counts = collections.Counter(seen)
      assert sorted(counts) == list(range(20)), (epoch, seen)
      assert sorted(counts.values()) == [1] * 19 + [2]
      assert counts[host_epoch_videos(feature_dir, 0, 0, hosts, epoch)[0]] == 2


def test_order_is_a_function_of_the_seed(feature_dir):
  a = host_epoch_videos(feature_dir, 0, 0, 1)
  assert a == host_epoch_videos(feature_dir, 0, 0, 1)
  assert a != host_epoch_videos(feature_dir, 1, 0, 1)
  assert a != host_epoch_videos(feature_dir, 0, 0, 1, epoch=1)  # reshuffled per epoch


def _stream(feature_dir, start_step, steps):
  batches = pipeline.train_batches(data_config(feature_dir, clip_length=3, frame_stride=2),
                                   batch_size=4, seed=5, start_step=start_step)
  return list(itertools.islice(batches, steps))


def test_iterating_again_continues_instead_of_restarting(feature_dir):
  """A loop that calls iter() on the batches (islice, a prefetcher) must not send
  the stream back to its first batch."""
  expected = _stream(feature_dir, 0, 3)
  batches = pipeline.train_batches(data_config(feature_dir, clip_length=3, frame_stride=2),
                                   batch_size=4, seed=5)
  got = [next(iter(batches)) for _ in range(3)]
  for a, b in zip(got, expected):
    np.testing.assert_array_equal(a["video_index"], b["video_index"])
  assert len({tuple(b["video_index"]) for b in got}) == 3


def test_resume_sees_the_same_batches(feature_dir):
  full = _stream(feature_dir, 0, 14)          # crosses epoch boundaries (20 videos)
  resumed = _stream(feature_dir, 9, 5)
  for a, b in zip(full[9:], resumed):
    np.testing.assert_array_equal(a["video_index"], b["video_index"])
    for level in a["features"]:
      np.testing.assert_array_equal(a["features"][level], b["features"][level])


def test_train_clips_have_the_right_frames(feature_dir):
  videos = {v.video_index: v for v in features.read_videos(feature_dir, "train")}
  batch = _stream(feature_dir, 0, 1)[0]
  assert batch["features"]["pool4"].shape == (4, 3, 2, 2, 3)
  assert batch["features"]["fc7"].shape == (4, 3, 5)
  assert batch["features"]["pool4"].dtype == np.float16
  for i, index in enumerate(batch["video_index"]):
    source = videos[int(index)].features["fc7"]
    n = len(source)
    clip = batch["features"]["fc7"][i]
    # A start s in [0, n - span] (0 for videos shorter than the span of 5 frames)
    # with frames s, s+2, s+4 (mod n for short videos: they loop).
    assert any(np.array_equal(clip, source[[(s + 2 * k) % n for k in range(3)]])
               for s in range(max(n - 5, 0) + 1)), index
    assert batch["label"][i] == videos[int(index)].label


@pytest.mark.parametrize("hosts", [1, 2, 3])
def test_eval_gives_each_video_eval_clips_and_padding_never_counts(feature_dir, hosts):
  per_host = [pipeline.eval_batches(data_config(feature_dir, clip_length=3, eval_clips=3),
                                    batch_size=4, process_index=h, process_count=hosts) for h in range(hosts)]
  counts = collections.Counter()
  num_batches = set()
  for batches in per_host:
    got = list(batches)
    assert len(got) == batches.num_batches
    num_batches.add(len(got))
    for b in got:
      assert b["video_index"].shape == (4,)
      for index, mask in zip(b["video_index"], b["mask"]):
        if mask:
          counts[int(index)] += 1
        else:
          assert index == -1
  assert len(num_batches) == 1  # every host runs the same number of eval steps
  assert counts == {i: 3 for i in range(7)}


@pytest.mark.parametrize("clips", [1, 3])
def test_eval_clips_are_evenly_spaced(feature_dir, clips):
  first = next(features.read_videos(feature_dir, "test"))
  batch = next(iter(pipeline.eval_batches(
      data_config(feature_dir, clip_length=2, eval_clips=clips), batch_size=clips)))
  n = first.num_frames
  # Several clips span the video end to end; one clip is its middle.
  starts = (np.round(np.linspace(0, n - 2, 3)).astype(int) if clips == 3
            else [round((n - 2) / 2)])
  assert n > 3    # so that the middle is not the start
  for i, s in enumerate(starts):
    np.testing.assert_array_equal(batch["features"]["fc7"][i], first.features["fc7"][s:s + 2])


def test_truncated_file_is_a_clear_error_or_skipped_on_request(tmp_path):
  write_fake_features(tmp_path, videos_per_split={"train": 9, "test": 6})
  path = os.path.join(tmp_path, "test-00001.fc7")
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) - 40])
  with pytest.raises(FeatureFormatError, match="test-00001.fc7 is truncated or corrupt"):
    pipeline.eval_batches(data_config(tmp_path, clip_length=2, eval_clips=1),
                          batch_size=2)
  batches = pipeline.eval_batches(
      data_config(tmp_path, clip_length=2, eval_clips=1, skip_bad_records=True),
      batch_size=2)
  got = list(batches)
  assert sum(float(b["mask"].sum()) for b in got) == 3  # the second shard's 3 videos
  assert {int(i) for b in got for i, m in zip(b["video_index"], b["mask"]) if m} == \
      {0, 1, 2}
  assert batches.stats.skipped_records == 3
  assert batches.stats.bad_files == [path]


def test_bad_train_shards_are_named_or_skipped_and_counted(tmp_path):
  write_fake_features(tmp_path, videos_per_split={"train": 9, "test": 3})
  shards = features.split_shards(features.read_metadata(str(tmp_path)), "train")
  truncated = os.path.join(tmp_path, features.level_file(shards[0]["name"], "pool4"))
  data = open(truncated, "rb").read()
  open(truncated, "wb").write(data[: len(data) - 40])
  missing = os.path.join(tmp_path, features.level_file(shards[1]["name"], "fc7"))
  os.remove(missing)
  lost = shards[0]["num_videos"] + shards[1]["num_videos"]

  def batches(**kwargs):
    return pipeline.train_batches(data_config(tmp_path, clip_length=2, **kwargs),
                                  batch_size=1)
  with pytest.raises(FeatureFormatError,
                     match=r"train-00000.pool4 is truncated or corrupt.*1 more problem"):
    batches()
  skipping = batches(skip_bad_records=True)
  # Two epochs: every readable video twice, the lost ones never.
  seen = [int(b["video_index"][0]) for b in itertools.islice(skipping, 2 * (9 - lost))]
  assert set(seen) == set(range(6, 9))
  assert collections.Counter(seen).most_common(1)[0][1] == 2
  assert skipping.stats.skipped_records == lost
  assert skipping.stats.bad_files == sorted([truncated, missing])


def test_int8_levels_arrive_as_int8(tmp_path):
  write_fake_features(tmp_path, int8_levels=("pool4",))
  batch = next(pipeline.train_batches(data_config(tmp_path, clip_length=2), batch_size=2))
  assert batch["features"]["pool4"].dtype == np.int8
  assert batch["features"]["fc7"].dtype == np.float16
  evaluation = next(pipeline.eval_batches(data_config(tmp_path, clip_length=2),
                                          batch_size=16))
  assert evaluation["features"]["pool4"].dtype == np.int8   # padding included


def test_unknown_level_is_clear(feature_dir):
  with pytest.raises(FeatureFormatError, match="pool2.*available: pool4, fc7"):
    pipeline.train_batches(data_config(feature_dir, clip_length=2), batch_size=1,
                           levels=["pool2"])


def test_global_batches_do_not_depend_on_the_host_count(feature_dir):
  """With a fixed num_streams, hosts' batches concatenated in host order are the
  one-host batches: 1, 2 or 4 hosts train on the same data."""
  def stream(hosts, host, steps=6, start_step=0):
    return list(itertools.islice(pipeline.train_batches(
        data_config(feature_dir, clip_length=2, num_streams=4), batch_size=8 // hosts,
        seed=3, process_index=host, process_count=hosts, start_step=start_step), steps))
  single = stream(1, 0)
  for hosts in (2, 4):
    parts = [stream(hosts, h) for h in range(hosts)]
    for step, batch in enumerate(single):
      joined = np.concatenate([p[step]["video_index"] for p in parts])
      np.testing.assert_array_equal(joined, batch["video_index"])
      joined = np.concatenate([p[step]["features"]["fc7"] for p in parts])
      np.testing.assert_array_equal(joined, batch["features"]["fc7"])
  resumed = stream(2, 1, steps=2, start_step=4)
  np.testing.assert_array_equal(resumed[0]["video_index"], stream(2, 1)[4]["video_index"])


# -- captioning: segments and captions ----------------------------------------

def fake_references(feature_dir, per_video=2):
  """Two references a video, each naming its video id: 'clip trainv003 take 1'."""
  metadata = features.read_metadata(feature_dir)
  ids = [v for split in ("train", "test")
         for v in features.video_ids(metadata, split).values()]
  return {v: [f"clip {v.replace('/', '')} take {k}" for k in range(per_video)]
          for v in ids}


def caption_batches(feature_dir, references, start_step=0, **fields):
  from grurcn_jax.data import captions
  vocabulary = captions.build_vocabulary(c for refs in references.values() for c in refs)
  batches = pipeline.caption_train_batches(
      data_config(feature_dir, clip_length=2, **fields), segments=3,
      references=references, vocabulary=vocabulary, max_length=6, batch_size=4,
      seed=0, start_step=start_step)
  return batches, vocabulary


def test_segment_rows_start_each_segment_at_its_share_of_the_video():
  rows = lambda n, segments, frames, stride=1: sampling.segment_rows(
      n, segments, frames, stride).tolist()
  assert rows(10, 3, 2) == [0, 1, 3, 4, 6, 7]
  assert rows(12, 2, 3, stride=2) == [0, 2, 4, 6, 8, 10]
  assert rows(3, 2, 4) == [0, 1, 2, 0, 1, 2, 0, 1]   # a short video wraps around
  # Where the last segment would run past the end, the starts spread over the
  # video instead: in order, never its first frames last.
  assert rows(2, 3, 2) == [0, 1, 0, 1, 0, 1]
  assert rows(100, 4, 10, stride=5) == [s + 5 * j for s in (0, 18, 36, 54)
                                        for j in range(10)]
  assert rows(8, 3, 4) == [0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7]


def test_caption_batches_hold_each_segments_frames_and_one_reference(feature_dir):
  references = fake_references(feature_dir)
  videos = {v.video_index: v for v in features.read_videos(feature_dir, "train")}
  ids = features.video_ids(features.read_metadata(feature_dir), "train")
  batches, vocabulary = caption_batches(feature_dir, references)
  drawn = collections.defaultdict(set)
  for batch in itertools.islice(batches, 15):
    assert batch["features"]["fc7"].shape == (4, 3, 2, 5)
    assert batch["features"]["pool4"].shape == (4, 3, 2, 2, 2, 3)
    np.testing.assert_array_equal(batch["words"][:, 0], vocabulary.bos)
    np.testing.assert_array_equal(batch["words"][:, 1:], batch["targets"][:, :-1])
    for i, index in enumerate(batch["video_index"]):
      source = videos[int(index)].features["fc7"]
      n = len(source)
      rows = [(k * n // 3 + j) % n for k in range(3) for j in range(2)]
      np.testing.assert_array_equal(batch["features"]["fc7"][i].reshape(6, 5),
                                    source[rows])
      caption = vocabulary.decode(batch["targets"][i])
      assert caption in references[ids[int(index)]]
      drawn[int(index)].add(caption)
  # 60 draws over 20 videos: some video has shown both of its references.
  assert max(len(c) for c in drawn.values()) == 2


def test_caption_batches_resume_where_they_stopped(feature_dir):
  references = fake_references(feature_dir)
  run, _ = caption_batches(feature_dir, references)
  expected = list(itertools.islice(run, 4))[2:]
  resumed, _ = caption_batches(feature_dir, references, start_step=2)
  for want, got in zip(expected, itertools.islice(resumed, 2)):
    for key in ("video_index", "words", "targets"):
      np.testing.assert_array_equal(want[key], got[key])


def test_a_video_without_references_is_named(feature_dir):
  references = fake_references(feature_dir)
  missing = sorted(v for v in references if v.startswith("train"))[0]
  references[missing] = []
  with pytest.raises(FeatureFormatError, match=f"video '{missing}' has no reference"):
    caption_batches(feature_dir, references)


@pytest.mark.parametrize("hosts", [1, 2])
def test_caption_eval_gives_every_video_once(feature_dir, hosts):
  seen = []
  counts = set()
  for host in range(hosts):
    batches = pipeline.caption_eval_batches(
        data_config(feature_dir, clip_length=2), segments=3, batch_size=3,
        process_index=host, process_count=hosts)
    host_batches = list(batches)
    counts.add(len(host_batches))
    for batch in host_batches:
      assert batch["features"]["fc7"].shape == (3, 3, 2, 5)
      seen.extend(int(i) for i, m in zip(batch["video_index"], batch["mask"]) if m)
  assert len(counts) == 1                  # every host the same number of batches
  assert sorted(seen) == sorted(v.video_index for v in features.read_videos(
      feature_dir, "test"))
