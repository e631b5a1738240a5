"""The threaded loader: tf.data's batches without TensorFlow, batch arrays reused
only when nothing holds them, errors."""

import concurrent.futures
import itertools
import math
import os
import subprocess
import sys
import threading
import time
import traceback

import jax
import numpy as np
import pytest

from grurcn_jax import config_validation
from grurcn_jax.data import captions, features, loaders, pipeline, threaded
from grurcn_jax.errors import ConfigError, FeatureFormatError
from configs import default
from tests.data.fake import data_config, write_fake_features
from tests.training_setup import REPO


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory):
  """float16 fc7, int8 pool4 and raw uint8 frames; 20 train videos in 7 shards,
  7 test videos in 3."""
  directory = tmp_path_factory.mktemp("features")
  write_fake_features(directory, videos_per_split={"train": 20, "test": 7},
                      int8_levels=("pool4",), frames_jpeg_quality=0)
  return str(directory)


def assert_same_batches(got, expected):
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    assert a.keys() == b.keys()
    assert a["features"].keys() == b["features"].keys()
    for level in b["features"]:
      assert a["features"][level].dtype == b["features"][level].dtype
      np.testing.assert_array_equal(a["features"][level], b["features"][level])
    for key in b:
      if key != "features":
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("fields,kwargs", [
    # Crosses epoch boundaries (20 videos, 4 a batch).
    (dict(clip_length=3, frame_stride=2), dict(batch_size=4, seed=5)),
    # Four streams, the second of two hosts, resumed mid-epoch.
    (dict(clip_length=2, num_streams=4), dict(batch_size=4, seed=3, start_step=3,
                                              process_index=1, process_count=2)),
])
def test_train_batches_are_tf_datas(feature_dir, fields, kwargs):
  data = data_config(feature_dir, **fields)
  expected = list(itertools.islice(pipeline.train_batches(data, **kwargs), 12))
  got = list(itertools.islice(threaded.train_batches(data, **kwargs), 12))
  assert_same_batches(got, expected)


@pytest.mark.parametrize("hosts", [1, 3])
def test_eval_batches_are_tf_datas_padding_included(feature_dir, hosts):
  data = data_config(feature_dir, clip_length=3, eval_clips=3)
  for host in range(hosts):
    kwargs = dict(batch_size=4, process_index=host, process_count=hosts)
    expected, got = pipeline.eval_batches(data, **kwargs), threaded.eval_batches(data, **kwargs)
    assert got.num_batches == expected.num_batches
    got, expected = list(got), list(expected)
    # 7 videos x 3 clips: the most any host takes, in batches of 4.
    assert len(got) == math.ceil(math.ceil(7 / hosts) * 3 / 4)
    assert_same_batches(got, expected)
    assert got[-1]["mask"].min() == 0    # padding, zero features
    assert not got[-1]["features"]["frames"][got[-1]["mask"] == 0].any()


def test_caption_batches_are_tf_datas(feature_dir):
  metadata = features.read_metadata(feature_dir)
  references = {v: [f"clip {v.replace('/', '')} take {k}" for k in range(3)]
                for split in ("train", "test")
                for v in features.video_ids(metadata, split).values()}
  vocabulary = captions.build_vocabulary(c for refs in references.values() for c in refs)
  data = data_config(feature_dir, clip_length=2)
  kwargs = dict(segments=3, references=references, vocabulary=vocabulary, max_length=6,
                batch_size=4, seed=1, start_step=2)
  assert_same_batches(
      list(itertools.islice(threaded.caption_train_batches(data, **kwargs), 8)),
      list(itertools.islice(pipeline.caption_train_batches(data, **kwargs), 8)))
  kwargs = dict(segments=3, batch_size=3, process_index=1, process_count=2)
  assert_same_batches(list(threaded.caption_eval_batches(data, **kwargs)),
                      list(pipeline.caption_eval_batches(data, **kwargs)))


def test_batch_arrays_are_reused_only_when_nothing_holds_them(feature_dir):
  """Held batches, views and jax arrays made from a batch keep their values while
  later batches are read; batches dropped at once are read into reused arrays."""
  data = data_config(feature_dir, clip_length=3, frame_stride=2)
  kwargs = dict(batch_size=4, seed=5)
  expected = list(itertools.islice(pipeline.train_batches(data, **kwargs), 16))
  batches = threaded.train_batches(data, **kwargs)
  held, on_device, views = [], [], []
  for step in range(16):
    batch = next(batches)
    if step % 4 == 0:
      held.append((step, batch))
    elif step % 4 == 1:   # on CPU a jax array may alias the numpy array it came from
      on_device.append((step, jax.device_put(batch["features"]["fc7"])))
    elif step % 4 == 2:
      views.append((step, batch["features"]["frames"][1:3]))
    del batch
  for step, batch in held:
    assert_same_batches([batch], [expected[step]])
  for step, array in on_device:
    np.testing.assert_array_equal(np.asarray(array), expected[step]["features"]["fc7"])
  for step, view in views:
    np.testing.assert_array_equal(view, expected[step]["features"]["frames"][1:3])
  # Dropped at once: a few sets of arrays serve every batch.
  fresh = threaded.train_batches(data, **kwargs)
  seen = set()
  for step in range(16):
    batch = next(fresh)
    assert_same_batches([batch], [expected[step]])
    seen.add(id(batch["features"]["fc7"]))
    del batch
  assert len(seen) <= 2 + 4   # prefetch + its spare sets


def test_jpeg_frames_are_refused_with_the_way_out(tmp_path):
  write_fake_features(tmp_path, frames_jpeg_quality=90)
  with pytest.raises(FeatureFormatError, match="frames .*JPEG.*data.loader='tf'"):
    threaded.train_batches(data_config(tmp_path, clip_length=2), batch_size=2)
  # Without the frames it reads the same directory.
  batch = next(threaded.train_batches(data_config(tmp_path, clip_length=2), batch_size=2,
                                      levels=["fc7"]))
  assert batch["features"]["fc7"].shape == (2, 2, 5)


@pytest.mark.parametrize("loader", [pipeline, threaded])
def test_a_file_lost_while_training_is_a_feature_error(tmp_path, loader):
  write_fake_features(tmp_path, videos_per_split={"train": 9, "test": 3})
  batches = loader.train_batches(data_config(tmp_path, clip_length=2), batch_size=1)
  for level in ("pool4", "fc7"):
    for shard in range(3):
      os.remove(os.path.join(tmp_path, f"train-0000{shard}.{level}"))
  with pytest.raises(FeatureFormatError, match="reading features failed") as error:
    list(itertools.islice(batches, 9))
  assert "{{" not in str(error.value) and "train-0000" in str(error.value)


def test_after_a_failed_read_nothing_is_read_and_every_next_raises(feature_dir,
                                                                   monkeypatch):
  """A batch's arrays are handed out again once nothing holds them: after a failure
  no thread may still write into them, and a caller that goes on gets the error
  again, not a batch."""
  monkeypatch.setattr(threaded, "_usable_cores", lambda: 4)   # a task per clip
  batches = threaded.train_batches(data_config(feature_dir, clip_length=2),
                                   batch_size=4, seed=5)
  read_into = batches.reader.read_into
  lock = threading.Lock()
  calls, active = [0], [0]

  def slow_or_failing(*args):
    with lock:
      calls[0] += 1
      call = calls[0]
      active[0] += 1
    try:
      time.sleep(0.01 if call == 6 else 0.2)
      if call == 6:
        raise OSError("the disk went away")
      read_into(*args)
    finally:
      with lock:
        active[0] -= 1

  batches.reader.read_into = slow_or_failing
  with pytest.raises(FeatureFormatError, match="the disk went away"):
    for _ in range(4):
      next(batches)
  assert active[0] == 0
  calls_at_error = calls[0]
  depths = []
  for _ in range(3):
    with pytest.raises(FeatureFormatError, match="the disk went away") as raised:
      next(batches)
    depths.append(len(traceback.extract_tb(raised.value.__traceback__)))
  assert depths[0] == depths[1] == depths[2]   # the traceback does not grow
  time.sleep(0.3)
  assert calls[0] == calls_at_error


def test_an_error_making_a_batch_fails_the_iterator_for_good(feature_dir, monkeypatch):
  extras = threaded._classification_extras
  calls, submitted, at_call = [0], [0], []
  submit = concurrent.futures.ThreadPoolExecutor.submit

  def counting(pool, *args, **kwargs):
    submitted[0] += 1
    return submit(pool, *args, **kwargs)

  def failing_third(reader):
    made = extras(reader)

    def extra(elements):
      calls[0] += 1
      at_call.append(submitted[0])
      if calls[0] == 3:
        raise FeatureFormatError("no label for this batch")
      return made(elements)
    return extra

  monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", counting)
  monkeypatch.setattr(threaded, "_classification_extras", failing_third)
  batches = threaded.train_batches(data_config(feature_dir, clip_length=2),
                                   batch_size=4, seed=5)
  with pytest.raises(FeatureFormatError, match="no label"):
    for _ in range(5):
      next(batches)
  made = calls[0]
  with pytest.raises(FeatureFormatError, match="no label"):
    next(batches)
  assert calls[0] == made   # no batch was started after the error
  # Nor was any read of the batch that failed: a batch's labels come before its
  # reads, which would write into arrays nobody waits for.
  tasks = at_call[1] - at_call[0]
  assert tasks > 0 and at_call == [0, tasks, 2 * tasks]
  assert submitted[0] == 2 * tasks


@pytest.mark.parametrize("loader", [threaded, pipeline])
def test_a_stream_layout_that_does_not_fit_is_an_error_before_the_first_batch(
    feature_dir, loader):
  with pytest.raises(FeatureFormatError, match="does not split over this host's 3 data"):
    loader.train_batches(data_config(feature_dir, clip_length=2, num_streams=3),
                         batch_size=4)


def test_the_config_picks_the_loader(feature_dir, tmp_path):
  assert loaders.for_config(data_config(feature_dir, loader="tf")) is pipeline
  assert loaders.for_config(data_config(feature_dir, loader="threads")) is threaded
  # auto: threads where they can read what is asked for.
  assert loaders.for_config(data_config(feature_dir)) is threaded
  write_fake_features(tmp_path, frames_jpeg_quality=90)
  assert loaders.for_config(data_config(tmp_path)) is pipeline          # JPEG frames
  assert loaders.for_config(data_config(tmp_path), ["fc7"]) is threaded
  assert loaders.resolve(data_config("gs://bucket/features")) == "tf"
  config = default.get_config()
  config.data.loader = "torch"
  with pytest.raises(ConfigError, match="data.loader='torch'.*auto, threads, tf"):
    config_validation.validate_config(config)


_WITHOUT_TENSORFLOW = """
import importlib.abc, itertools, sys

class Missing(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Missing())
from grurcn_jax.data import threaded
from configs import default
data = default.get_config().data
data.update(dir=sys.argv[1], clip_length=3, loader="threads")
train = list(itertools.islice(threaded.train_batches(data, batch_size=4), 6))
evaluation = list(threaded.eval_batches(data, batch_size=4))
assert "tensorflow" not in sys.modules
print(len(train), len(evaluation), train[0]["features"]["frames"].shape)
"""


def test_it_runs_where_tensorflow_is_not_installed(feature_dir):
  result = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, feature_dir],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["6", "18", "(4,", "3,", "32,", "32,", "3)"]


def test_a_loader_alive_at_the_interpreter_exit_says_nothing(feature_dir):
  """Its pool was shut down from __del__ after the modules that needs were gone:
  "Exception ignored in ... AttributeError: 'NoneType' object has no attribute
  'Empty'" at the end of every program that kept one."""
  program = (
      "import jax\n"   # imported first: the teardown order that showed it
      "from tests.data.fake import data_config\n"
      "from grurcn_jax.data import threaded\n"
      f"batches = threaded.train_batches(data_config({feature_dir!r}, clip_length=2), "
      "batch_size=2, seed=0)\n"
      "kept = [next(batches) for _ in range(3)]\n")
  result = subprocess.run([sys.executable, "-c", program], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "Exception ignored" not in result.stderr, result.stderr
