"""tf.data input pipeline: feature directory -> batches of clips (numpy, per host).

A clip reads only its own frames (`features.ClipReader`): the cost of a clip does
not grow with the length of its video.

Train order is a pure function of (seed, epoch, stream) (`sampling`, which the
threaded loader shares: both give the same batches): the data is read as
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
frame is drawn from (seed, epoch, stream, position). An epoch's plan is one numpy
call per stream; a clip's positioned reads run in numpy (`features.ClipReader`), in
parallel map calls. A run that resumes at step s starts every stream at its element
s * share, skipping whole epochs and positions without reading them, and sees
exactly the batches an uninterrupted run would.

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

import re
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from grurcn_jax.data import captions as captions_lib
from grurcn_jax.data import features as features_lib
from grurcn_jax.data import sampling
from grurcn_jax.data.sampling import InputStats, check_split  # noqa: F401 (the API)
from grurcn_jax.errors import FeatureFormatError
from grurcn_jax.host_tf import tf


class Batches:
  """An iterator of numpy batches (one pass: iter() continues where it is); a
  read that fails raises a FeatureFormatError, not tf.data's error."""

  def __init__(self, dataset: tf.data.Dataset, stats: InputStats,
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
  reader, stats = sampling.open_split(data, data["train_split"], levels)
  table = reader.table()
  clip_length, frame_stride = data["clip_length"], data["frame_stride"]

  def rows(videos, uniforms):
    return sampling.train_clip_rows(videos, uniforms, reader.videos["num_frames"],
                                    clip_length, frame_stride)

  return _train_streams(reader, stats, data, rows, (clip_length,),
                        lambda video, rows: _clip(reader, table, video, rows),
                        batch_size=batch_size, seed=seed, start_step=start_step,
                        process_index=process_index, process_count=process_count)


def _train_streams(reader, stats, data, draws, draw_shape, element, *, batch_size,
                   seed, start_step, process_index, process_count) -> Batches:
  """This host's batches of the streams' elements. `draws(videos, uniforms)` turns
  an epoch's plan (`sampling.stream_epoch`) into int64 values of `draw_shape` per
  element (numpy: a clip's frame rows, a caption's pick); `element(video, draw)`
  makes the element from a video's row in the reader's table and its draw
  (in-graph: the reads)."""
  layout = sampling.stream_layout(
      len(reader.videos["video_index"]), data["train_split"],
      num_streams=data["num_streams"], batch_size=batch_size,
      process_index=process_index, process_count=process_count)
  first_epoch, skip = sampling.resume_point(start_step, layout)
  datasets = [_stream_dataset(layout, stream, seed, first_epoch, skip, draws,
                              draw_shape, element)
              .batch(layout.share, drop_remainder=True) for stream in layout.streams]
  if len(datasets) == 1:
    dataset = datasets[0]
  else:  # this host's part of the global batch: its streams' shares, in order
    dataset = tf.data.Dataset.zip(tuple(datasets)).map(
        lambda *parts: tf.nest.map_structure(lambda *x: tf.concat(x, 0), *parts))
  return Batches(dataset.prefetch(tf.data.AUTOTUNE), stats)


def _stream_dataset(layout, stream, seed, first_epoch, skip, draws, draw_shape,
                    element):
  def plan(epoch):
    videos, uniforms = sampling.stream_epoch(layout.num_videos, seed, int(epoch),
                                             stream, layout.num_streams)
    return videos, np.asarray(draws(videos, uniforms), np.int64)

  def epoch_elements(epoch):
    videos, values = tf.numpy_function(plan, [epoch], [tf.int64, tf.int64],
                                       stateful=False)
    videos = tf.ensure_shape(videos, [layout.epoch_size])
    values = tf.ensure_shape(values, [layout.epoch_size, *draw_shape])
    skipped = tf.where(epoch == first_epoch, tf.constant(skip, tf.int64), 0)
    return tf.data.Dataset.from_tensor_slices((videos, values)).skip(skipped)

  return (tf.data.Dataset.counter(first_epoch, dtype=tf.int64)
          .flat_map(epoch_elements)
          .map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))


def _clip(reader, table, video, rows) -> Dict:
  return {"features": reader.read(tf.gather(table["shard"], video),
                                  tf.gather(table["first_frame"], video), rows),
          "label": tf.cast(tf.gather(table["label"], video), tf.int32),
          "video_index": tf.cast(tf.gather(table["video_index"], video), tf.int32),
          "mask": tf.constant(1.0, tf.float32)}


def eval_batches(data: Mapping, *, batch_size: int,
                 levels: Optional[Sequence[str]] = None, process_index: int = 0,
                 process_count: int = 1) -> Batches:
  """Finite, deterministic per-host eval batches; `num_batches` is the same on every
  host and padding elements have mask 0.

  `data` is the config's data subtree: dir, eval_split, clip_length, frame_stride,
  eval_clips, skip_bad_records.
  """
  reader, stats = sampling.open_split(data, data["eval_split"], levels)
  videos, rows, num_batches = sampling.eval_plan(
      reader, data, batch_size=batch_size, process_index=process_index,
      process_count=process_count)
  table = reader.table()
  padding = tf.data.Dataset.from_tensors(
      _padding_element(reader, data["clip_length"])).repeat()
  dataset = (tf.data.Dataset.from_tensor_slices((videos, rows))
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

def _segments_element(reader, table, segment_rows, video, data, segments):
  """A video's `segments` segments (their frame rows: `segment_rows`, the split's
  `sampling.split_segment_rows`)."""
  frames = data["clip_length"]
  element = _clip(reader, table, video, tf.gather(segment_rows, video))
  element["features"] = {
      level: tf.reshape(x, [segments, frames, *reader.infos[level]["shape"]])
      for level, x in element["features"].items()}
  del element["label"]
  return element


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
  reader, stats = sampling.open_split(data, data["train_split"], levels)
  table = reader.table()
  rows = tf.constant(sampling.split_segment_rows(reader.videos["num_frames"], data,
                                                 segments))
  captions = captions_lib.split_caption_table(reader, data["dir"], data["train_split"],
                                              references, vocabulary, max_length)
  tokens, first = tf.constant(captions.tokens), tf.constant(captions.first)
  bos = tf.constant([vocabulary.bos], tf.int32)

  def picks(videos, uniforms):
    return sampling.uniform_index(uniforms[:, 1], captions.count[videos])

  def element(video, pick):
    out = _segments_element(reader, table, rows, video, data, segments)
    targets = tf.gather(tokens, tf.gather(first, video) + pick)
    out.update(targets=targets, words=tf.concat([bos, targets[:-1]], 0))
    return out

  return _train_streams(reader, stats, data, picks, (), element, batch_size=batch_size,
                        seed=seed, start_step=start_step, process_index=process_index,
                        process_count=process_count)


def caption_eval_batches(data: Mapping, *, segments: int, batch_size: int,
                         levels: Optional[Sequence[str]] = None, process_index: int = 0,
                         process_count: int = 1) -> Batches:
  """Finite per-host eval batches, one element per video of data.eval_split:
  {'features': {level: [b, S, F, ...]}, 'video_index', 'mask'}; hosts take videos
  as `eval_batches` does, and all yield `num_batches` batches (padding: mask 0)."""
  reader, stats = sampling.open_split(data, data["eval_split"], levels)
  table = reader.table()
  rows = tf.constant(sampling.split_segment_rows(reader.videos["num_frames"], data,
                                                 segments))
  num_videos = len(reader.videos["video_index"])
  num_batches = sampling.eval_num_batches(num_videos, 1, batch_size, process_count)
  frames = data["clip_length"]
  padding = {
      "features": {level: tf.zeros([segments, frames, *info["shape"]],
                                   tf.as_dtype(features_lib.storage_dtype(info)))
                   for level, info in reader.infos.items()},
      "video_index": tf.constant(-1, tf.int32), "mask": tf.constant(0.0, tf.float32)}
  mine = tf.constant(sampling.eval_host_videos(num_videos, process_index,
                                               process_count), tf.int64)
  dataset = (tf.data.Dataset.from_tensor_slices(mine)
             .map(lambda video: _segments_element(reader, table, rows, video, data,
                                                  segments),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
             .concatenate(tf.data.Dataset.from_tensors(padding).repeat())
             .take(num_batches * batch_size)
             .batch(batch_size)
             .prefetch(tf.data.AUTOTUNE))
  return Batches(dataset, stats, num_batches)
