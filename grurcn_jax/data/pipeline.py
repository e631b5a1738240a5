"""tf.data input pipeline: feature shards -> batches of clips (numpy, per host).

Train order is a pure function of (seed, epoch, stream): the data is read as
`num_streams` independent streams (default: one per host). Each epoch the shard files
are permuted by (seed, epoch) and stream s of S takes files s, s+S, ...; so every
video is seen exactly once per epoch. Host p of P owns the streams
[p*S/P, (p+1)*S/P) and its part of every global batch is its streams' equal shares,
in stream order: with a fixed `num_streams`, the global batches are the same for
any number of hosts that divides it (one process or two give the same training).
Within a stream the shards are read round robin (`cycle_length` at a time) through a
small shuffle buffer of whole records (clips are large: shuffling files plus a small
buffer is what keeps memory flat), and each clip's start frame is drawn from
(seed, stream, element number). All of it runs inside tf.data (stateless shard
permutations, seeded shuffles): no Python per record, so a host core delivers
thousands of clips per second. A run that resumes at step s starts every stream at
its element s * share and sees exactly the batches an uninterrupted run would.

Clips are `clip_length` frames `frame_stride` apart. A video shorter than that span
loops (frame indices wrap around), so every video gives a clip of the full length.

Eval is deterministic: each host reads its files in order; every video gives
`eval_clips` evenly spaced clips; the last batch is padded with `mask` 0 elements and
all hosts yield the same number of batches.
"""

import dataclasses
import logging
import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from grurcn_jax.data import features as features_lib
from grurcn_jax.errors import FeatureFormatError
from grurcn_jax.host_tf import tf

@dataclasses.dataclass
class PipelineStats:
  """What the pipeline had to skip (only with skip_bad_records=True)."""
  skipped_records: int = 0
  bad_files: List[str] = dataclasses.field(default_factory=list)


class _ShardReader:
  """Reads feature shards natively in tf.data and accounts for lost records.

  Each shard is read as `TFRecordDataset(path).ignore_errors()`, padded up to the
  record count the metadata lists: a pad stands for a record the shard did not
  deliver (corrupt, truncated or missing file). Pads are counted per shard in a
  variable and dropped with skip_bad_records; otherwise the first one stops the
  pipeline and `error()` names the shard. No Python runs per record.
  """

  def __init__(self, directory: str, shards: Sequence[dict], skip_bad_records: bool):
    self.paths = [features_lib.join(directory, shard["file"]) for shard in shards]
    self.counts = [int(shard["num_videos"]) for shard in shards]
    self.skip_bad_records = skip_bad_records
    self.lost = tf.Variable(tf.zeros([len(shards)], tf.int64), trainable=False)
    # (shard, position) of the first unreadable record, when not skipping.
    self.failure = tf.Variable(tf.constant([-1, -1], tf.int64), trainable=False)
    self._reported = set()

  def stats(self) -> PipelineStats:
    lost = self.lost.numpy()
    return PipelineStats(skipped_records=int(lost.sum()),
                         bad_files=[self.paths[i] for i in np.flatnonzero(lost)])

  def log_new_losses(self) -> None:
    for i in np.flatnonzero(self.lost.numpy()):
      if i not in self._reported:
        self._reported.add(i)
        logging.warning("%s; skipping its unreadable records", self._problem(i, None))

  def error(self) -> Optional[FeatureFormatError]:
    shard, position = (int(v) for v in self.failure.numpy())
    return None if shard < 0 else FeatureFormatError(
        self._problem(shard, position))

  def _problem(self, shard: int, position: Optional[int]) -> str:
    path = self.paths[shard]
    if not tf.io.gfile.exists(path):
      return f"feature shard {path} does not exist"
    if position is None:
      return (f"feature shard {path} is corrupt or truncated: some of its "
              f"{self.counts[shard]} records cannot be read")
    return (f"feature shard {path} is corrupt or truncated: record {position + 1} of "
            f"{self.counts[shard]} cannot be read")

  def _shard_records(self, shard: tf.Tensor, path: tf.Tensor,
                     expected: tf.Tensor) -> tf.data.Dataset:
    # ignore_errors moves on past a bad record but retries a file it cannot open
    # forever, so a missing file is read as empty instead (its records become pads).
    exists = tf.size(tf.io.matching_files(path)) > 0
    found = (tf.data.TFRecordDataset(path)
             .take(tf.where(exists, tf.constant(-1, tf.int64), 0))
             .ignore_errors().map(lambda r: (r, True)))
    pad = tf.data.Dataset.from_tensors((tf.constant(b""), False)).repeat()

    def count_loss(position):
      if self.skip_bad_records:
        update = self.lost.scatter_add(tf.IndexedSlices(
            tf.ones([1], tf.int64), tf.reshape(shard, [1])))
        with tf.control_dependencies([update]):
          return tf.constant(False)
      update = self.failure.assign(tf.stack([shard, position]))
      with tf.control_dependencies([update]):
        check = tf.debugging.Assert(False, ["unreadable feature record"])
      with tf.control_dependencies([check]):
        return tf.constant(False)

    def readable(position, element):
      _, ok = element
      return tf.cond(ok, lambda: tf.constant(True), lambda: count_loss(position))

    return (found.concatenate(pad).take(expected).enumerate()
            .filter(readable).map(lambda _, element: element[0]))

  def records(self, shard_indices: tf.Tensor, cycle_length: int) -> tf.data.Dataset:
    """Records of the given shards, round robin over `cycle_length` at a time, in
    an order fixed by `shard_indices` (parallel reads, deterministic output)."""
    paths = tf.gather(tf.constant(self.paths), shard_indices)
    counts = tf.gather(tf.constant(self.counts, tf.int64), shard_indices)
    return tf.data.Dataset.from_tensor_slices((shard_indices, paths, counts)).interleave(
        self._shard_records, cycle_length=cycle_length, block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# Shards a train stream reads at once, round robin.
_CYCLE_LENGTH = 4


def _stream_plan(num_shards: int, seed: int, stream: int, num_streams: int):
  """epoch -> the shard indices stream `stream` of `num_streams` reads in it: stream
  s takes files s, s+S, ... of a permutation of all shards seeded by (seed, epoch).
  In-graph (stateless Philox) so the plan runs inside tf.data with no Python."""
  def plan(epoch):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(num_shards, dtype=tf.int64),
        seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]),
        alg="philox")
    return order[stream::num_streams]
  return plan


def stream_shards(num_shards: int, seed: int, epoch: int, stream: int,
                  num_streams: int) -> List[int]:
  """Shard indices train stream `stream` of `num_streams` reads in `epoch`."""
  plan = _stream_plan(num_shards, seed, stream, num_streams)
  return [int(i) for i in plan(tf.constant(epoch, tf.int64)).numpy()]


def _clip_indices(num_frames: tf.Tensor, start: tf.Tensor, clip_length: int,
                  frame_stride: int) -> tf.Tensor:
  # Short videos loop: indices wrap around the video.
  return tf.math.floormod(start + tf.range(clip_length) * frame_stride, num_frames)


def _clip(video: Mapping, indices: tf.Tensor, mask: float = 1.0) -> Dict:
  return {
      "features": {level: tf.gather(x, indices) for level, x in video["features"].items()},
      "label": video["label"],
      "video_index": video["video_index"],
      "mask": tf.constant(mask, tf.float32),
  }


def _level_shapes(metadata: Mapping, levels: Optional[Sequence[str]]) -> Dict:
  available = metadata["levels"]
  levels = list(levels) if levels else list(available)
  missing = [level for level in levels if level not in available]
  if missing:
    raise FeatureFormatError(
        f"level(s) {', '.join(missing)} not in the features; available: "
        f"{', '.join(available)}")
  return {level: available[level]["shape"] for level in levels}


class Batches:
  """An iterator of numpy batches; a shard that cannot be read raises the
  FeatureFormatError naming it, not tf.data's error."""

  def __init__(self, dataset: tf.data.Dataset, reader: _ShardReader,
               num_batches: Optional[int] = None):
    self.dataset = dataset
    self.num_batches = num_batches
    self._reader = reader
    self._iterator = None

  @property
  def stats(self) -> PipelineStats:
    """Records skipped so far (with skip_bad_records) and the shards they were in."""
    return self._reader.stats()

  def __iter__(self):
    # One pass: iter() again continues where it is (a second pass would need a
    # second Batches; tf.data's restart would silently repeat the stream).
    return self

  def __next__(self):
    if self._iterator is None:
      self._iterator = self.dataset.as_numpy_iterator()
    try:
      batch = next(self._iterator)
    except tf.errors.OpError:
      error = self._reader.error()
      if error is not None:
        raise error from None
      raise
    if self._reader.skip_bad_records:
      self._reader.log_new_losses()
    return batch


def train_batches(data: Mapping, *, batch_size: int, seed: int = 0,
                  levels: Optional[Sequence[str]] = None, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Batches:
  """Endless per-host train batches of `batch_size` clips: {'features': {level:
  [b, T, ...] float16}, 'label': [b] int32, 'video_index': [b] int32, 'mask': [b]}.

  `data` is the config's data subtree (configs/default.py): dir, train_split,
  clip_length, frame_stride, shuffle_buffer, num_streams, skip_bad_records.
  `levels` (default: all in the directory) are the levels read.
  """
  directory, split = data["dir"], data["train_split"]
  metadata = features_lib.read_metadata(directory)
  shards = features_lib.split_shards(metadata, split)
  num_streams = data["num_streams"] or process_count
  if num_streams % process_count:
    raise FeatureFormatError(
        f"{num_streams} data streams cannot be shared by {process_count} hosts: "
        f"num_streams must be a multiple of the host count")
  streams_per_host = num_streams // process_count
  if batch_size % streams_per_host:
    raise FeatureFormatError(
        f"the host batch of {batch_size} does not split over this host's "
        f"{streams_per_host} data streams")
  if len(shards) < num_streams:
    raise FeatureFormatError(
        f"split {split!r} has {len(shards)} shard(s) for {num_streams} data streams: "
        f"every stream needs at least one; extract with more shards")
  level_shapes = _level_shapes(metadata, levels)
  share = batch_size // streams_per_host
  reader = _ShardReader(directory, shards, data["skip_bad_records"])
  datasets = [
      _stream_dataset(reader, stream, num_streams, split, seed, start_step * share,
                      data["shuffle_buffer"], _CYCLE_LENGTH, level_shapes,
                      data["clip_length"], data["frame_stride"]
                      ).batch(share, drop_remainder=True)
      for stream in range(process_index * streams_per_host,
                          (process_index + 1) * streams_per_host)]
  if len(datasets) == 1:
    dataset = datasets[0]
  else:  # this host's part of the global batch: its streams' shares, in order
    dataset = tf.data.Dataset.zip(tuple(datasets)).map(
        lambda *parts: tf.nest.map_structure(lambda *x: tf.concat(x, 0), *parts))
  return Batches(dataset.prefetch(tf.data.AUTOTUNE), reader)


def _stream_dataset(reader, stream, num_streams, split, seed, start, shuffle_buffer,
                    cycle_length, level_shapes, clip_length, frame_stride):
  counts = reader.counts
  plan = _stream_plan(len(counts), seed, stream, num_streams)
  # Whole epochs before `start` are skipped without reading them.
  first_epoch, skip = 0, start
  while True:
    epoch_size = sum(counts[i] for i in stream_shards(len(counts), seed, first_epoch,
                                                      stream, num_streams))
    if epoch_size == 0:
      raise FeatureFormatError(
          f"data stream {stream} has no videos in split {split!r} (its shards are empty)")
    if skip < epoch_size:
      break
    skip -= epoch_size
    first_epoch += 1

  def epoch_records(epoch):
    # The shuffle buffer's seed is fixed by (seed, epoch, stream): the same order on
    # every run, and after a resume.
    shuffle_seed = (tf.constant(seed, tf.int64) * 1_000_003 + epoch) * 1_000_003 + stream
    records = reader.records(plan(epoch), cycle_length).shuffle(shuffle_buffer,
                                                                 seed=shuffle_seed)
    skipped = tf.where(epoch == first_epoch, tf.constant(skip, tf.int64), 0)
    return records.enumerate().skip(skipped).map(
        lambda position, record: (record, tf.stack([epoch, position])))

  def make_clip(record, key):
    video = features_lib.parse_video(record, level_shapes)
    span = (clip_length - 1) * frame_stride + 1
    max_start = tf.maximum(video["num_frames"] - span, 0)
    seed_pair = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + key[0],
                          tf.cast(stream, tf.int64) * 1_000_003 + key[1]])
    start_frame = tf.random.stateless_uniform([], seed_pair, 0, max_start + 1, tf.int32)
    return _clip(video, _clip_indices(video["num_frames"], start_frame, clip_length,
                                      frame_stride))

  # Not Dataset.from_generator: a Python source makes the whole stream ~3x slower.
  return (tf.data.Dataset.counter(first_epoch, dtype=tf.int64)
          .flat_map(epoch_records)
          .map(make_clip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


def eval_host_shards(num_shards: int, process_index: int, process_count: int) -> List[int]:
  return list(range(process_index, num_shards, process_count))


def eval_batches(data: Mapping, *, batch_size: int,
                 levels: Optional[Sequence[str]] = None, process_index: int = 0,
                 process_count: int = 1) -> Batches:
  """Finite, deterministic per-host eval batches; `num_batches` is the same on every
  host and padding elements have mask 0.

  `data` is the config's data subtree: dir, eval_split, clip_length, frame_stride,
  eval_clips, skip_bad_records.
  """
  directory = data["dir"]
  clip_length, frame_stride, eval_clips = (data["clip_length"], data["frame_stride"],
                                           data["eval_clips"])
  metadata = features_lib.read_metadata(directory)
  shards = features_lib.split_shards(metadata, data["eval_split"])
  level_shapes = _level_shapes(metadata, levels)
  reader = _ShardReader(directory, shards, data["skip_bad_records"])
  clips_per_host = [
      eval_clips * sum(shards[i]["num_videos"]
                       for i in eval_host_shards(len(shards), p, process_count))
      for p in range(process_count)]
  num_batches = max(math.ceil(c / batch_size) for c in clips_per_host)
  mine = eval_host_shards(len(shards), process_index, process_count)

  def make_clips(record):
    video = features_lib.parse_video(record, level_shapes)
    span = (clip_length - 1) * frame_stride + 1
    max_start = tf.cast(tf.maximum(video["num_frames"] - span, 0), tf.float64)
    starts = tf.cast(tf.round(tf.linspace(tf.constant(0, tf.float64), max_start,
                                          eval_clips)), tf.int32)
    clips = tf.map_fn(
        lambda s: _clip(video, _clip_indices(video["num_frames"], s, clip_length,
                                             frame_stride)),
        starts, fn_output_signature=_clip_signature(level_shapes, clip_length))
    return tf.data.Dataset.from_tensor_slices(clips)

  padding = tf.data.Dataset.from_tensors(
      _padding_element(level_shapes, clip_length)).repeat()
  dataset = (reader.records(tf.constant(mine, tf.int64), cycle_length=1)
             .flat_map(make_clips)
             .concatenate(padding)
             .take(num_batches * batch_size)
             .batch(batch_size)
             .prefetch(tf.data.AUTOTUNE))
  return Batches(dataset, reader, num_batches)


def _clip_signature(level_shapes, clip_length):
  return {
      "features": {level: tf.TensorSpec([clip_length, *shape], tf.float16)
                   for level, shape in level_shapes.items()},
      "label": tf.TensorSpec([], tf.int32),
      "video_index": tf.TensorSpec([], tf.int32),
      "mask": tf.TensorSpec([], tf.float32),
  }


def _padding_element(level_shapes, clip_length):
  return {
      "features": {level: tf.zeros([clip_length, *shape], tf.float16)
                   for level, shape in level_shapes.items()},
      "label": tf.constant(0, tf.int32),
      "video_index": tf.constant(-1, tf.int32),
      "mask": tf.constant(0.0, tf.float32),
  }
