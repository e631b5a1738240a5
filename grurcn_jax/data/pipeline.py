"""tf.data input pipeline: feature directory -> batches of clips (numpy, per host).

A clip reads only its own frames (`features.ClipReader`): the cost of a clip does
not grow with the length of its video.

Train order is a pure function of (seed, epoch, stream): the data is read as
`num_streams` independent streams (default: one per host). Each epoch every video
of the split is permuted by (seed, epoch) and stream s of S takes positions s, s+S,
...; so every video is seen once per epoch, in an order that mixes all shards (no
shuffle buffer: nothing but the clips in flight is held in memory). When S does not
divide the N videos, every stream still takes ceil(N/S) per epoch, positions past
the end wrapping to the permutation's start (S - N mod S videos seen twice), so the
streams stay in the same epoch instead of the shorter ones drifting ahead. Host
p of P owns the streams [p*S/P, (p+1)*S/P) and its part of every global batch is
its streams' equal shares, in stream order: with a fixed `num_streams`, the global
batches are the same for any number of hosts that divides it. Each clip's start
frame is drawn from (seed, epoch, stream, position). All of it runs inside tf.data
(stateless Philox permutations and draws); only a clip's positioned reads run in
numpy (`features.ClipReader`), in parallel. A run that resumes at step s starts every stream at its element s * share,
skipping whole epochs and positions without reading them, and sees exactly the
batches an uninterrupted run would.

Clips are `clip_length` frames `frame_stride` apart. A video shorter than that span
loops (frame indices wrap around), so every video gives a clip of the full length.

Eval is deterministic: host p takes the videos p, p+P, ... of the split; every video
gives `eval_clips` evenly spaced clips, the first and last at its ends (one clip: the
middle one); the last batch is padded with `mask` 0
elements and all hosts yield the same number of batches.

Before anything is read, every file's size is checked against its table: a missing
or truncated file is a FeatureFormatError naming it, or, with
`data.skip_bad_records`, its shard's videos are left out and counted.
"""

import dataclasses
import math
import re
from typing import Dict, List, Mapping, Optional, Sequence

from absl import logging
import numpy as np

from grurcn_jax.data import features as features_lib
from grurcn_jax.errors import FeatureFormatError
from grurcn_jax.host_tf import tf



@dataclasses.dataclass
class PipelineStats:
  """What the pipeline left out (only with skip_bad_records=True)."""
  skipped_records: int = 0          # videos left out
  bad_files: List[str] = dataclasses.field(default_factory=list)


class Batches:
  """An iterator of numpy batches (one pass: iter() continues where it is); a
  read that fails raises a FeatureFormatError, not tf.data's error."""

  def __init__(self, dataset: tf.data.Dataset, stats: PipelineStats,
               num_batches: Optional[int] = None):
    self.dataset = dataset
    self.stats = stats
    self.num_batches = num_batches
    self._iterator = None

  def __iter__(self):
    # A second pass would need a second Batches; tf.data's restart would silently
    # repeat the stream.
    return self

  def __next__(self):
    if self._iterator is None:
      self._iterator = self.dataset.as_numpy_iterator()
    try:
      return next(self._iterator)
    except tf.errors.OpError as e:
      # The message starts with TensorFlow's "{{function_node ...}}" prefix.
      message = re.sub(r"^\{\{[^}]*\}\}\s*", "", e.message.splitlines()[0])
      raise FeatureFormatError(f"reading features failed: {message}") from None


def check_split(data: Mapping, split: str, levels=None) -> PipelineStats:
  """Opens `split` as the pipeline would and checks its files (before a long run
  reaches its first evaluation); returns what skip_bad_records would leave out."""
  return _open(data, split, levels)[1]


def _open(data: Mapping, split: str, levels) -> tuple:
  """The split's ClipReader, its files checked; bad shards raise or are left out."""
  directory = data["dir"]
  metadata = features_lib.read_metadata(directory)
  reader = features_lib.ClipReader(directory, metadata, split, levels)
  stats = PipelineStats()
  problems = reader.check()
  if problems:
    if not data["skip_bad_records"]:
      raise FeatureFormatError(problems[0][2] + (
          f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else "")
          + "; set data.skip_bad_records=True to leave such shards out")
    stats.skipped_records = reader.drop_shards({shard for shard, _, _ in problems})
    stats.bad_files = sorted({path for _, path, _ in problems})
    for _, _, problem in problems:
      logging.warning("%s; its shard's videos are left out", problem)
  if not len(reader.videos["video_index"]):
    raise FeatureFormatError(f"split {split!r} of {directory} has no readable videos")
  return reader, stats


def _clip_rows(num_frames: tf.Tensor, start: tf.Tensor, clip_length: int,
               frame_stride: int) -> tf.Tensor:
  # Short videos loop: indices wrap around the video.
  return tf.math.floormod(start + tf.range(clip_length, dtype=tf.int64) * frame_stride,
                          num_frames)


def _stream_plan(num_videos: int, seed: int, stream: int, num_streams: int):
  """epoch -> the video positions stream `stream` of `num_streams` reads in it:
  positions s, s+S, ... (ceil(N/S) of them, wrapping past the end) of a
  permutation of all N videos seeded by (seed, epoch)."""
  positions = np.arange(stream, _epoch_size(num_videos, num_streams) * num_streams,
                        num_streams) % num_videos
  def plan(epoch):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(num_videos, dtype=tf.int64),
        seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]),
        alg="philox")
    return tf.gather(order, positions)
  return plan


def _epoch_size(num_videos: int, num_streams: int) -> int:
  """Videos per stream and epoch: the same for every stream."""
  return -(-num_videos // num_streams)


def train_batches(data: Mapping, *, batch_size: int, seed: int = 0,
                  levels: Optional[Sequence[str]] = None, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Batches:
  """Endless per-host train batches of `batch_size` clips: {'features': {level:
  [b, T, ...] float16 or int8}, 'label': [b] int32, 'video_index': [b] int32,
  'mask': [b]}.

  `data` is the config's data subtree (configs/default.py): dir, train_split,
  clip_length, frame_stride, num_streams, skip_bad_records. `levels` (default: all
  in the directory) are the levels read.
  """
  reader, stats = _open(data, data["train_split"], levels)
  table = reader.table()
  clip_length, frame_stride = data["clip_length"], data["frame_stride"]
  span = (clip_length - 1) * frame_stride + 1

  def clip(video, draw_seed):
    num_frames = tf.gather(table["num_frames"], video)
    max_start = tf.maximum(num_frames - span, 0)
    start_frame = tf.random.stateless_uniform([], draw_seed, 0, max_start + 1, tf.int64)
    return _clip(reader, table, video,
                 _clip_rows(num_frames, start_frame, clip_length, frame_stride))

  return _train_streams(reader, stats, data, clip, batch_size=batch_size, seed=seed,
                        start_step=start_step, process_index=process_index,
                        process_count=process_count)


def _train_streams(reader, stats, data, element, *, batch_size, seed, start_step,
                   process_index, process_count) -> Batches:
  """This host's batches of the streams' elements; `element(video, draw_seed)`
  makes one from a video's row in the reader's table and a seed for its draws."""
  num_videos = len(reader.videos["video_index"])
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
  if num_videos < num_streams:
    raise FeatureFormatError(
        f"split {data['train_split']!r} has {num_videos} video(s) for {num_streams} "
        f"data streams: every stream needs at least one")
  share = batch_size // streams_per_host
  datasets = [
      _stream_dataset(num_videos, stream, num_streams, seed, start_step * share, element)
      .batch(share, drop_remainder=True)
      for stream in range(process_index * streams_per_host,
                          (process_index + 1) * streams_per_host)]
  if len(datasets) == 1:
    dataset = datasets[0]
  else:  # this host's part of the global batch: its streams' shares, in order
    dataset = tf.data.Dataset.zip(tuple(datasets)).map(
        lambda *parts: tf.nest.map_structure(lambda *x: tf.concat(x, 0), *parts))
  return Batches(dataset.prefetch(tf.data.AUTOTUNE), stats)


def _stream_dataset(num_videos, stream, num_streams, seed, start, element):
  plan = _stream_plan(num_videos, seed, stream, num_streams)
  epoch_size = _epoch_size(num_videos, num_streams)
  first_epoch, skip = divmod(start, epoch_size)   # skipped without reading

  def epoch_positions(epoch):
    skipped = tf.where(epoch == first_epoch, tf.constant(skip, tf.int64), 0)
    return (tf.data.Dataset.from_tensor_slices(plan(epoch)).enumerate()
            .skip(skipped).map(lambda position, video: (epoch, position, video)))

  def read(epoch, position, video):
    draw_seed = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + epoch,
                          tf.cast(stream, tf.int64) * 1_000_003 + position])
    return element(video, draw_seed)

  return (tf.data.Dataset.counter(first_epoch, dtype=tf.int64)
          .flat_map(epoch_positions)
          .map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


def _clip(reader, table, video, rows) -> Dict:
  return {"features": reader.read(tf.gather(table["shard"], video),
                                  tf.gather(table["first_frame"], video), rows),
          "label": tf.cast(tf.gather(table["label"], video), tf.int32),
          "video_index": tf.cast(tf.gather(table["video_index"], video), tf.int32),
          "mask": tf.constant(1.0, tf.float32)}


def eval_host_videos(num_videos: int, process_index: int, process_count: int) -> List[int]:
  return list(range(process_index, num_videos, process_count))


def eval_batches(data: Mapping, *, batch_size: int,
                 levels: Optional[Sequence[str]] = None, process_index: int = 0,
                 process_count: int = 1) -> Batches:
  """Finite, deterministic per-host eval batches; `num_batches` is the same on every
  host and padding elements have mask 0.

  `data` is the config's data subtree: dir, eval_split, clip_length, frame_stride,
  eval_clips, skip_bad_records.
  """
  reader, stats = _open(data, data["eval_split"], levels)
  clip_length, frame_stride, eval_clips = (data["clip_length"], data["frame_stride"],
                                           data["eval_clips"])
  num_videos = len(reader.videos["video_index"])
  num_batches = max(math.ceil(eval_clips * len(eval_host_videos(num_videos, p,
                                                                 process_count))
                              / batch_size) for p in range(process_count))
  table = reader.table()
  span = (clip_length - 1) * frame_stride + 1

  def clip_plans(video):
    num_frames = tf.gather(table["num_frames"], video)
    max_start = tf.cast(tf.maximum(num_frames - span, 0), tf.float64)
    if eval_clips == 1:   # the middle of the video, not its first frames
      starts = tf.reshape(tf.cast(tf.round(max_start / 2), tf.int64), [1])
    else:
      starts = tf.cast(tf.round(tf.linspace(tf.constant(0, tf.float64), max_start,
                                            eval_clips)), tf.int64)
    return tf.data.Dataset.from_tensor_slices(starts).map(
        lambda start: (video, _clip_rows(num_frames, start, clip_length, frame_stride)))

  mine = tf.constant(eval_host_videos(num_videos, process_index, process_count),
                     tf.int64)
  padding = tf.data.Dataset.from_tensors(_padding_element(reader, clip_length)).repeat()
  dataset = (tf.data.Dataset.from_tensor_slices(mine)
             .flat_map(clip_plans)
             .map(lambda video, rows: _clip(reader, table, video, rows),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
             .concatenate(padding)
             .take(num_batches * batch_size)
             .batch(batch_size)
             .prefetch(tf.data.AUTOTUNE))
  return Batches(dataset, stats, num_batches)


def _padding_element(reader, clip_length):
  return {
      "features": {level: tf.zeros([clip_length, *info["shape"]],
                                   tf.as_dtype(features_lib.storage_dtype(info)))
                   for level, info in reader.infos.items()},
      "label": tf.constant(0, tf.int32),
      "video_index": tf.constant(-1, tf.int32),
      "mask": tf.constant(0.0, tf.float32),
  }


# -- captioning: a video's segments and one of its captions --------------------

@dataclasses.dataclass(frozen=True)
class CaptionTable:
  """A split's captions as word ids, aligned with a reader's videos: video row v
  has the captions tokens[first[v] : first[v] + count[v]] ([N, max_length] int32:
  words, <eos>, then <pad> 0)."""
  tokens: np.ndarray
  first: np.ndarray
  count: np.ndarray


def caption_table(video_indices: Sequence[int], video_ids: Mapping[int, str],
                  references: Mapping[str, Sequence[str]], vocabulary,
                  max_length: int) -> CaptionTable:
  """The CaptionTable of the videos `video_indices` (a reader's order); a video
  without references is a FeatureFormatError."""
  tokens, first, count = [], [], []
  for index in video_indices:
    video_id = video_ids.get(int(index), str(index))
    captions = references.get(video_id)
    if not captions:
      raise FeatureFormatError(f"video {video_id!r} has no reference captions")
    first.append(len(tokens))
    count.append(len(captions))
    tokens.extend(vocabulary.encode(c, max_length) for c in captions)
  return CaptionTable(np.stack(tokens).astype(np.int32), np.array(first, np.int64),
                      np.array(count, np.int64))


def segment_rows(num_frames: tf.Tensor, segments: int, frames: int,
                 frame_stride: int) -> tf.Tensor:
  """[segments * frames] frame indices: segment k starts at frame floor(k * n /
  segments) of the video's n and takes `frames` frames `frame_stride` apart
  (wrapping around a short video)."""
  starts = (tf.range(segments, dtype=tf.int64) * num_frames) // segments
  offsets = tf.range(frames, dtype=tf.int64) * frame_stride
  return tf.reshape(tf.math.floormod(starts[:, None] + offsets[None], num_frames), [-1])


def _segments_element(reader, table, video, data, segments):
  frames = data["clip_length"]
  rows = segment_rows(tf.gather(table["num_frames"], video), segments, frames,
                      data["frame_stride"])
  element = _clip(reader, table, video, rows)
  element["features"] = {
      level: tf.reshape(x, [segments, frames, *reader.infos[level]["shape"]])
      for level, x in element["features"].items()}
  del element["label"]
  return element


def _split_captions(reader, data, split, references, vocabulary, max_length):
  metadata = features_lib.read_metadata(data["dir"])
  return caption_table(reader.videos["video_index"],
                       features_lib.video_ids(metadata, split), references,
                       vocabulary, max_length)


def caption_train_batches(data: Mapping, *, segments: int, references, vocabulary,
                          max_length: int, batch_size: int, seed: int = 0,
                          levels: Optional[Sequence[str]] = None, start_step: int = 0,
                          process_index: int = 0, process_count: int = 1) -> Batches:
  """Endless per-host captioning batches: {'features': {level: [b, S, F, ...]}
  (`segments` segments of data.clip_length frames), 'words': [b, L] (the decoder's
  inputs: <bos> and the caption shifted right), 'targets': [b, L] (the caption's
  ids, <eos>, <pad> 0), 'video_index', 'mask'}. Each element is one video of the
  stream (order, streams and resume as `train_batches`) with one of its references
  drawn from (seed, epoch, stream, position)."""
  reader, stats = _open(data, data["train_split"], levels)
  table = reader.table()
  captions = _split_captions(reader, data, data["train_split"], references,
                             vocabulary, max_length)
  tokens, first, count = (tf.constant(captions.tokens), tf.constant(captions.first),
                          tf.constant(captions.count))
  bos = tf.constant([vocabulary.bos], tf.int32)

  def element(video, draw_seed):
    out = _segments_element(reader, table, video, data, segments)
    pick = tf.random.stateless_uniform([], draw_seed, 0, tf.gather(count, video),
                                       tf.int64)
    targets = tf.gather(tokens, tf.gather(first, video) + pick)
    out.update(targets=targets, words=tf.concat([bos, targets[:-1]], 0))
    return out

  return _train_streams(reader, stats, data, element, batch_size=batch_size, seed=seed,
                        start_step=start_step, process_index=process_index,
                        process_count=process_count)


def caption_eval_batches(data: Mapping, *, segments: int, batch_size: int,
                         levels: Optional[Sequence[str]] = None, process_index: int = 0,
                         process_count: int = 1) -> Batches:
  """Finite per-host eval batches, one element per video of data.eval_split:
  {'features': {level: [b, S, F, ...]}, 'video_index', 'mask'}; hosts take videos
  as `eval_batches` does, and all yield `num_batches` batches (padding: mask 0)."""
  reader, stats = _open(data, data["eval_split"], levels)
  table = reader.table()
  num_videos = len(reader.videos["video_index"])
  num_batches = max(math.ceil(len(eval_host_videos(num_videos, p, process_count))
                              / batch_size) for p in range(process_count))
  frames = data["clip_length"]
  padding = {
      "features": {level: tf.zeros([segments, frames, *info["shape"]],
                                   tf.as_dtype(features_lib.storage_dtype(info)))
                   for level, info in reader.infos.items()},
      "video_index": tf.constant(-1, tf.int32), "mask": tf.constant(0.0, tf.float32)}
  mine = tf.constant(eval_host_videos(num_videos, process_index, process_count),
                     tf.int64)
  dataset = (tf.data.Dataset.from_tensor_slices(mine)
             .map(lambda video: _segments_element(reader, table, video, data, segments),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
             .concatenate(tf.data.Dataset.from_tensors(padding).repeat())
             .take(num_batches * batch_size)
             .batch(batch_size)
             .prefetch(tf.data.AUTOTUNE))
  return Batches(dataset, stats, num_batches)
