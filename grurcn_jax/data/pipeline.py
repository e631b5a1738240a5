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
(seed, stream, element number). A run that resumes at step s starts every stream at
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
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from grurcn_jax.data import features as features_lib

_hidden = False


def hide_accelerators_from_tensorflow() -> None:
  """tf.data runs on the host; TensorFlow must not grab GPU/TPU memory JAX needs."""
  global _hidden
  if not _hidden:
    tf.config.set_visible_devices([], "GPU")
    _hidden = True


@dataclasses.dataclass
class PipelineStats:
  """What the pipeline had to skip (only with skip_bad_records=True)."""
  skipped_records: int = 0
  bad_files: List[str] = dataclasses.field(default_factory=list)


class _RecordSource:
  """Python-side record order: files, round-robin interleave, shuffle buffer."""

  def __init__(self, directory: str, shards: Sequence[dict], skip_bad_records: bool,
               stats: PipelineStats):
    self.directory = directory
    self.shards = list(shards)
    self.skip_bad_records = skip_bad_records
    self.stats = stats
    self.error: Optional[Exception] = None

  def _records(self, shard: dict) -> Iterator[bytes]:
    path = features_lib.join(self.directory, shard["file"])
    read = 0
    try:
      for record in features_lib.read_shard(path):
        read += 1
        yield record
    except features_lib.FeatureFormatError as e:
      if not self.skip_bad_records:
        self.error = e
        raise
      lost = max(1, shard.get("num_videos", read + 1) - read)
      self.stats.skipped_records += lost
      self.stats.bad_files.append(path)
      logging.warning("%s; skipped %d record(s) (%d skipped so far)", e, lost,
                      self.stats.skipped_records)

  def interleaved(self, shard_indices: Sequence[int], cycle_length: int) -> Iterator[bytes]:
    pending = list(shard_indices)
    active = []
    while pending or active:
      while pending and len(active) < cycle_length:
        active.append(self._records(self.shards[pending.pop(0)]))
      for reader in list(active):
        record = next(reader, None)
        if record is None:
          active.remove(reader)
        else:
          yield record


def stream_shards(num_shards: int, seed: int, epoch: int, stream: int,
                  num_streams: int) -> List[int]:
  """Shard indices train stream `stream` of `num_streams` reads in `epoch`."""
  order = np.random.default_rng([seed, epoch]).permutation(num_shards)
  return [int(i) for i in order[stream::num_streams]]


def _shuffled(records: Iterator[bytes], buffer_size: int,
              rng: np.random.Generator) -> Iterator[bytes]:
  buffer = []
  for record in records:
    if len(buffer) < buffer_size:
      buffer.append(record)
      continue
    i = rng.integers(len(buffer))
    yield buffer[i]
    buffer[i] = record
  rng.shuffle(buffer)
  yield from buffer


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
    raise features_lib.FeatureFormatError(
        f"level(s) {', '.join(missing)} not in the features; available: "
        f"{', '.join(available)}")
  return {level: available[level]["shape"] for level in levels}


class Batches:
  """An iterator of numpy batches that turns tf.data errors about bad shards into
  FeatureFormatError naming the file."""

  def __init__(self, dataset: tf.data.Dataset, sources: Sequence[_RecordSource],
               num_batches: Optional[int] = None):
    self.dataset = dataset
    self.stats = sources[0].stats
    self.num_batches = num_batches
    self._sources = sources
    self._iterator = None

  def __iter__(self):
    self._iterator = self.dataset.as_numpy_iterator()
    return self

  def __next__(self):
    if self._iterator is None:
      iter(self)
    try:
      return next(self._iterator)
    except tf.errors.OpError:
      for source in self._sources:
        if source.error is not None:
          raise source.error from None
      raise


def train_batches(directory: str, *, split: str, batch_size: int, clip_length: int,
                  frame_stride: int = 1, seed: int = 0,
                  levels: Optional[Sequence[str]] = None, process_index: int = 0,
                  process_count: int = 1, num_streams: Optional[int] = None,
                  start_step: int = 0, shuffle_buffer: int = 16, cycle_length: int = 4,
                  skip_bad_records: bool = False) -> Batches:
  """Endless per-host train batches of `batch_size` clips: {'features': {level:
  [b, T, ...] float16}, 'label': [b] int32, 'video_index': [b] int32, 'mask': [b]}."""
  hide_accelerators_from_tensorflow()
  metadata = features_lib.read_metadata(directory)
  shards = features_lib.split_shards(metadata, split)
  num_streams = num_streams or process_count
  if num_streams % process_count:
    raise features_lib.FeatureFormatError(
        f"{num_streams} data streams cannot be shared by {process_count} hosts: "
        f"num_streams must be a multiple of the host count")
  streams_per_host = num_streams // process_count
  if batch_size % streams_per_host:
    raise features_lib.FeatureFormatError(
        f"the host batch of {batch_size} does not split over this host's "
        f"{streams_per_host} data streams")
  if len(shards) < num_streams:
    raise features_lib.FeatureFormatError(
        f"split {split!r} has {len(shards)} shard(s) for {num_streams} data streams: "
        f"every stream needs at least one; extract with more shards")
  level_shapes = _level_shapes(metadata, levels)
  share = batch_size // streams_per_host
  stats = PipelineStats()
  sources, datasets = [], []
  for stream in range(process_index * streams_per_host,
                      (process_index + 1) * streams_per_host):
    source = _RecordSource(directory, shards, skip_bad_records, stats)
    sources.append(source)
    datasets.append(_stream_dataset(source, stream, num_streams, split, seed,
                                    start_step * share, shuffle_buffer, cycle_length,
                                    level_shapes, clip_length, frame_stride)
                    .batch(share, drop_remainder=True))
  if len(datasets) == 1:
    dataset = datasets[0]
  else:  # this host's part of the global batch: its streams' shares, in order
    dataset = tf.data.Dataset.zip(tuple(datasets)).map(
        lambda *parts: tf.nest.map_structure(lambda *x: tf.concat(x, 0), *parts))
  return Batches(dataset.prefetch(tf.data.AUTOTUNE), sources)


def _stream_dataset(source, stream, num_streams, split, seed, start, shuffle_buffer,
                    cycle_length, level_shapes, clip_length, frame_stride):
  shards = source.shards

  def generator():
    skip = start
    epoch = 0
    while True:
      indices = stream_shards(len(shards), seed, epoch, stream, num_streams)
      epoch_size = sum(shards[i]["num_videos"] for i in indices)
      if epoch_size == 0:
        raise features_lib.FeatureFormatError(
            f"data stream {stream} has no videos in split {split!r} (its shards are empty)")
      if skip >= epoch_size:  # skip whole epochs without reading them
        skip -= epoch_size
        epoch += 1
        continue
      rng = np.random.default_rng([seed, epoch, stream])
      records = _shuffled(source.interleaved(indices, cycle_length), shuffle_buffer, rng)
      for position, record in enumerate(records):
        if position >= skip:
          yield record, np.array([epoch, position], np.int64)
      skip = 0
      epoch += 1

  def make_clip(record, key):
    video = features_lib.parse_video(record, level_shapes)
    span = (clip_length - 1) * frame_stride + 1
    max_start = tf.maximum(video["num_frames"] - span, 0)
    seed_pair = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + key[0],
                          tf.cast(stream, tf.int64) * 1_000_003 + key[1]])
    start_frame = tf.random.stateless_uniform([], seed_pair, 0, max_start + 1, tf.int32)
    return _clip(video, _clip_indices(video["num_frames"], start_frame, clip_length,
                                      frame_stride))

  return tf.data.Dataset.from_generator(
      generator, output_signature=(tf.TensorSpec([], tf.string),
                                   tf.TensorSpec([2], tf.int64))
  ).map(make_clip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def eval_host_shards(num_shards: int, process_index: int, process_count: int) -> List[int]:
  return list(range(process_index, num_shards, process_count))


def eval_batches(directory: str, *, split: str, batch_size: int, clip_length: int,
                 frame_stride: int = 1, eval_clips: int = 1,
                 levels: Optional[Sequence[str]] = None, process_index: int = 0,
                 process_count: int = 1, skip_bad_records: bool = False) -> Batches:
  """Finite, deterministic per-host eval batches; `num_batches` is the same on every
  host and padding elements have mask 0."""
  hide_accelerators_from_tensorflow()
  metadata = features_lib.read_metadata(directory)
  shards = features_lib.split_shards(metadata, split)
  level_shapes = _level_shapes(metadata, levels)
  source = _RecordSource(directory, shards, skip_bad_records, PipelineStats())
  clips_per_host = [
      eval_clips * sum(shards[i]["num_videos"]
                       for i in eval_host_shards(len(shards), p, process_count))
      for p in range(process_count)]
  num_batches = max(math.ceil(c / batch_size) for c in clips_per_host)
  mine = eval_host_shards(len(shards), process_index, process_count)

  def generator():
    yield from source.interleaved(mine, cycle_length=1)

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
  dataset = (tf.data.Dataset.from_generator(
      generator, output_signature=tf.TensorSpec([], tf.string))
             .flat_map(make_clips)
             .concatenate(padding)
             .take(num_batches * batch_size)
             .batch(batch_size)
             .prefetch(tf.data.AUTOTUNE))
  return Batches(dataset, [source], num_batches)


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
