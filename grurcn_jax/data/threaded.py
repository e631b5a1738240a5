"""The input pipeline without TensorFlow: `pipeline`'s batches, read by threads.

`data.loader='threads'` selects it. For machines without TensorFlow (a GPU image
with JAX and PyTorch only) and feature directories of raw rows (float16 or int8
levels, uint8 frames; JPEG frames need tf.data's decoder; remote paths need
TensorFlow's file systems). The plan (order, streams, draws, resume, eval clips
and padding) is `sampling`'s, the one the tf.data pipeline follows, so both give
a run the same batches (tests/data/test_threaded.py compares them).

Each clip's rows are read straight into its slot of the batch's arrays, one
positioned read per run of rows and level (`ClipReader.read_into`): no per-clip
array, no copy into the batch. The reads release the GIL, so the threads overlap.
A batch's arrays are reused once nothing else holds them (no view, no jax array
made from them, no reference): a fresh batch-sized array is zeroed page by page by
the kernel at first touch (about 1.3 GB/s on a 2-core AMD EPYC), which would
bound the input. A batch's clips are dealt to as many tasks as this process may
use cores (a task per clip cost about 10% of the frames' rate on one core: futures
and thread switches per 1.5 MB clip).

A failed read fails the iterator for good: every later `next` raises the same
error, after the failed batch's other reads have finished (its arrays are not
handed out again while a thread still writes into them).
"""

import collections
import concurrent.futures
import itertools
import os
import sys
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence,
                    Tuple)

import numpy as np

from grurcn_jax.data import captions as captions_lib
from grurcn_jax.data import features as features_lib
from grurcn_jax.data import sampling
from grurcn_jax.data.sampling import InputStats, check_split  # noqa: F401 (the API)
from grurcn_jax.errors import FeatureFormatError

# An element of a batch: (video row in the reader's table, or -1 for padding; its
# frame rows; the element's draw: a caption's reference, or unused).
Element = Tuple[int, np.ndarray, Any]


class _Buffers:
  """Sets of batch arrays of fixed shapes; a set is handed out again once nothing
  but this pool holds any of its arrays (sys.getrefcount, calibrated on a set
  nobody else holds: a jax array made from a numpy array keeps a reference to it
  while it may read it)."""

  def __init__(self, shapes: Mapping[str, Tuple[Tuple[int, ...], np.dtype]],
               keep: int):
    self._shapes = dict(shapes)
    self._keep = keep
    first = self._new()
    self._free_count = self._count(first)   # nothing else holds it yet
    self._sets: List[Dict[str, np.ndarray]] = [first]

  def _new(self) -> Dict[str, np.ndarray]:
    return {name: np.empty(shape, dtype) for name, (shape, dtype) in self._shapes.items()}

  @staticmethod
  def _count(arrays: Dict[str, np.ndarray]) -> int:
    return max(sys.getrefcount(array) for array in arrays.values())

  def take(self) -> Dict[str, np.ndarray]:
    for arrays in self._sets:
      if self._count(arrays) <= self._free_count:
        return arrays
    arrays = self._new()
    if len(self._sets) < self._keep:
      self._sets.append(arrays)
    return arrays


class ThreadedBatches:
  """An iterator of numpy batches, like `pipeline.Batches` (one pass; `stats`,
  `num_batches`); a read that fails raises a FeatureFormatError."""

  def __init__(self, reader: features_lib.ClipReader, stats: InputStats,
               plan: Iterator[List[Element]], *, batch_size: int,
               element_shape: Tuple[int, ...],
               extras: Callable[[List[Element]], Dict[str, np.ndarray]],
               num_batches: Optional[int] = None, prefetch: int = 2,
               workers: Optional[int] = None):
    self.reader = reader
    self.stats = stats
    self.num_batches = num_batches
    self._plan = plan
    self._extras = extras
    self._element_shape = element_shape
    self._prefetch = prefetch
    self._buffers = _Buffers(
        {level: ((batch_size, *element_shape, *reader.infos[level]["shape"]),
                 reader.dtype(level)) for level in reader.levels}, keep=prefetch + 4)
    self._pool = concurrent.futures.ThreadPoolExecutor(
        workers or min(32, (os.cpu_count() or 1) + 4),
        thread_name_prefix="grurcn-input")
    self._tasks_per_batch = max(1, min(batch_size, _usable_cores()))
    self._pending = collections.deque()
    self._done = False
    self._error: Optional[BaseException] = None

  def __iter__(self):
    return self

  def __next__(self):
    if self._error is not None:
      # Not `raise self._error`: each raise of one object adds to its traceback.
      raise self._error.with_traceback(None)
    while not self._done and len(self._pending) <= self._prefetch:
      try:
        self._start_next()
      except Exception as e:  # the plan's or a batch's extras: fails it for good too
        self._fail(e)
    if not self._pending:
      raise StopIteration
    batch, reads = self._pending.popleft()
    concurrent.futures.wait(reads)
    for read in reads:
      if read.exception() is not None:
        self._fail(read.exception())
    return batch

  def _fail(self, error: BaseException):
    """Stops reading: queued reads are cancelled, running ones finish first."""
    self._error = error
    self._done = True
    pending = [read for _, reads in self._pending for read in reads]
    self._pending.clear()
    for read in pending:
      read.cancel()
    concurrent.futures.wait(pending)
    self._pool.shutdown(wait=False)
    raise error

  def _start_next(self) -> None:
    elements = next(self._plan, None)
    if elements is None:
      self._done = True
      self._pool.shutdown(wait=False)
      return
    extras = self._extras(elements)   # before any read: if it fails, none runs on
    arrays = self._buffers.take()
    chunk = -(-len(elements) // self._tasks_per_batch)
    reads = [self._pool.submit(self._read_clips, arrays, start,
                               elements[start:start + chunk])
             for start in range(0, len(elements), chunk)]
    batch = {"features": dict(arrays), **extras}
    self._pending.append((batch, reads))

  def _read_clips(self, arrays, start, elements) -> None:
    for i, element in enumerate(elements, start):
      self._read(arrays, i, element)

  def _read(self, arrays, i, element) -> None:
    video, rows, _ = element
    slots = {level: a[i].reshape(len(rows), *a.shape[1 + len(self._element_shape):])
             for level, a in arrays.items()}
    if video < 0:
      for slot in slots.values():
        slot.fill(0)
      return
    videos = self.reader.videos
    try:
      self.reader.read_into(slots, videos["shard"][video], videos["first_frame"][video],
                            rows)
    except OSError as e:
      raise FeatureFormatError(f"reading features failed: {e}") from None

  def __del__(self, _finalizing=sys.is_finalizing):   # (sys may be gone by then)
    pool = getattr(self, "_pool", None)
    # At the interpreter's exit the modules the shutdown needs are gone already
    # (an "Exception ignored" message); the exit stops the pool's threads itself.
    if pool is not None and not _finalizing():
      pool.shutdown(wait=False, cancel_futures=True)


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))   # what taskset or a container allows
  except AttributeError:                  # not on every platform
    return os.cpu_count() or 1


def _open(data: Mapping, split: str, levels) -> Tuple[features_lib.ClipReader,
                                                      InputStats]:
  reader, stats = sampling.open_split(data, split, levels)
  encoded = [level for level in reader.levels if level in reader.offsets]
  if encoded:
    raise FeatureFormatError(
        f"{', '.join(encoded)} of {data['dir']} stored as JPEG: the threaded loader "
        f"reads raw rows; use data.loader='tf' (tf.data decodes JPEG)")
  return reader, stats


def _classification_extras(reader) -> Callable[[List[Element]], Dict[str, np.ndarray]]:
  videos = reader.videos

  def extras(elements):
    rows = np.array([video for video, _, _ in elements], np.int64)
    real = rows >= 0
    return {"label": np.where(real, videos["label"][rows], 0).astype(np.int32),
            "video_index": np.where(real, videos["video_index"][rows], -1).astype(
                np.int32),
            "mask": real.astype(np.float32)}
  return extras


def _stream_elements(layout: sampling.StreamLayout, stream: int, seed: int,
                     first_epoch: int, skip: int, draws) -> Iterator[Tuple[int, Any]]:
  """(video row, draw) of one stream from (first_epoch, skip) on: `sampling`'s plan."""
  for epoch in itertools.count(first_epoch):
    videos, uniforms = sampling.stream_epoch(layout.num_videos, seed, epoch, stream,
                                             layout.num_streams)
    values = np.asarray(draws(videos, uniforms), np.int64)
    for position in range(skip if epoch == first_epoch else 0, layout.epoch_size):
      yield int(videos[position]), values[position]


def _train_plan(reader, data, *, batch_size, seed, start_step, process_index,
                process_count, draws, rows_of) -> Iterator[List[Element]]:
  """This host's batches of elements: its streams' shares, in stream order. The
  layout is checked now, as tf.data's loader checks it, not at the first batch."""
  layout = sampling.stream_layout(
      len(reader.videos["video_index"]), data["train_split"],
      num_streams=data["num_streams"], batch_size=batch_size,
      process_index=process_index, process_count=process_count)
  first_epoch, skip = sampling.resume_point(start_step, layout)
  streams = [_stream_elements(layout, stream, seed, first_epoch, skip, draws)
             for stream in layout.streams]

  def batches():
    while True:
      yield [(video, rows_of(video, draw), draw) for stream in streams
             for video, draw in itertools.islice(stream, layout.share)]
  return batches()


def train_batches(data: Mapping, *, batch_size: int, seed: int = 0,
                  levels: Optional[Sequence[str]] = None, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> ThreadedBatches:
  """`pipeline.train_batches`' batches, without TensorFlow."""
  reader, stats = _open(data, data["train_split"], levels)
  clip_length, frame_stride = data["clip_length"], data["frame_stride"]
  plan = _train_plan(
      reader, data, batch_size=batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count,
      draws=lambda videos, u: sampling.train_clip_rows(
          videos, u, reader.videos["num_frames"], clip_length, frame_stride),
      rows_of=lambda video, rows: rows)
  return ThreadedBatches(reader, stats, plan, batch_size=batch_size,
                         element_shape=(clip_length,),
                         extras=_classification_extras(reader))


def eval_batches(data: Mapping, *, batch_size: int,
                 levels: Optional[Sequence[str]] = None, process_index: int = 0,
                 process_count: int = 1) -> ThreadedBatches:
  """`pipeline.eval_batches`' batches, without TensorFlow."""
  reader, stats = _open(data, data["eval_split"], levels)
  videos, rows, num_batches = sampling.eval_plan(
      reader, data, batch_size=batch_size, process_index=process_index,
      process_count=process_count)
  return ThreadedBatches(reader, stats,
                         _padded(list(zip(videos.tolist(), rows, itertools.repeat(0))),
                                 rows.shape[1:], batch_size, num_batches),
                         batch_size=batch_size, element_shape=(data["clip_length"],),
                         extras=_classification_extras(reader), num_batches=num_batches)


def _padded(elements: List[Element], rows_shape, batch_size: int,
            num_batches: int) -> Iterator[List[Element]]:
  """`num_batches` batches of the elements, then padding (video -1)."""
  padding = (-1, np.zeros(rows_shape, np.int64), 0)
  elements = elements + [padding] * (num_batches * batch_size - len(elements))
  for b in range(num_batches):
    yield elements[b * batch_size:(b + 1) * batch_size]


# -- captioning ---------------------------------------------------------------

def caption_train_batches(data: Mapping, *, segments: int, references, vocabulary,
                          max_length: int, batch_size: int, seed: int = 0,
                          levels: Optional[Sequence[str]] = None, start_step: int = 0,
                          process_index: int = 0,
                          process_count: int = 1) -> ThreadedBatches:
  """`pipeline.caption_train_batches`' batches, without TensorFlow."""
  reader, stats = _open(data, data["train_split"], levels)
  rows = sampling.split_segment_rows(reader.videos["num_frames"], data, segments)
  captions = captions_lib.split_caption_table(reader, data["dir"], data["train_split"],
                                              references, vocabulary, max_length)
  plan = _train_plan(
      reader, data, batch_size=batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count,
      draws=lambda videos, u: sampling.uniform_index(u[:, 1], captions.count[videos]),
      rows_of=lambda video, pick: rows[video])
  videos = reader.videos

  def extras(elements):
    targets = np.stack([captions.tokens[captions.first[video] + pick]
                        for video, _, pick in elements])
    bos = np.full([len(elements), 1], vocabulary.bos, np.int32)
    return {"video_index": videos["video_index"][[v for v, _, _ in elements]].astype(
                np.int32),
            "mask": np.ones([len(elements)], np.float32),
            "targets": targets,
            "words": np.concatenate([bos, targets[:, :-1]], 1)}

  return ThreadedBatches(reader, stats, plan, batch_size=batch_size,
                         element_shape=(segments, data["clip_length"]), extras=extras)


def caption_eval_batches(data: Mapping, *, segments: int, batch_size: int,
                         levels: Optional[Sequence[str]] = None, process_index: int = 0,
                         process_count: int = 1) -> ThreadedBatches:
  """`pipeline.caption_eval_batches`' batches, without TensorFlow."""
  reader, stats = _open(data, data["eval_split"], levels)
  rows = sampling.split_segment_rows(reader.videos["num_frames"], data, segments)
  num_videos = len(reader.videos["video_index"])
  num_batches = sampling.eval_num_batches(num_videos, 1, batch_size, process_count)
  mine = sampling.eval_host_videos(num_videos, process_index, process_count)
  plan = _padded([(video, rows[video], 0) for video in mine], rows.shape[1:],
                 batch_size, num_batches)
  extras = _classification_extras(reader)

  def caption_extras(elements):
    out = extras(elements)
    del out["label"]
    return out

  return ThreadedBatches(reader, stats, plan, batch_size=batch_size,
                         element_shape=(segments, data["clip_length"]),
                         extras=caption_extras, num_batches=num_batches)
