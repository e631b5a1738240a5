"""What a run reads and in which order: the split's checked reader, and the clips
of every batch as pure numpy functions of (seed, epoch, stream, position).

Both loaders take their plan from here, so they give the same batches: the
tf.data pipeline (`pipeline`) and the threaded one without TensorFlow
(`threaded`). Nothing here imports TensorFlow.

Random numbers are the raw 64-bit words of numpy's Philox bit generator (Philox
4x64-10), keyed by (seed, epoch): numpy keeps a bit generator's stream the same
across versions (its Generator methods may change), and the words are turned into
permutations and uniforms here, by rules that do not change either. Words of
counter 0 on permute an epoch; stream s draws from counter (0, 0, s + 1, 0) on,
two words per element (a clip's start frame and, for captioning, its reference).
"""

import dataclasses
import math
from typing import List, Mapping, Sequence, Tuple

from absl import logging
import numpy as np

from grurcn_jax.data import features as features_lib
from grurcn_jax.errors import FeatureFormatError

_DRAWS = 2   # uniforms per element: [start frame, caption reference]


@dataclasses.dataclass
class InputStats:
  """What the input left out (only with skip_bad_records=True)."""
  skipped_records: int = 0          # videos left out
  bad_files: List[str] = dataclasses.field(default_factory=list)


def open_split(data: Mapping, split: str, levels) -> Tuple[features_lib.ClipReader,
                                                           InputStats]:
  """The split's ClipReader, its files checked; bad shards raise or are left out."""
  directory = data["dir"]
  metadata = features_lib.read_metadata(directory)
  reader = features_lib.ClipReader(directory, metadata, split, levels)
  stats = InputStats()
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
  empty = reader.videos["video_index"][reader.videos["num_frames"] < 1]
  if len(empty):
    # Clip rows wrap modulo the frame count: with none, a clip would read the
    # next video's rows under this video's label.
    names = features_lib.video_ids(metadata, split)
    raise FeatureFormatError(
        f"video {names[int(empty[0])]} of split {split!r} of {directory} has no "
        f"frames" + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else "")
        + ": every video needs at least one; write the split again without it")
  return reader, stats


def check_split(data: Mapping, split: str, levels=None) -> InputStats:
  """Opens `split` as the loaders would and checks its files (before a long run
  reaches its first evaluation); returns what skip_bad_records would leave out."""
  return open_split(data, split, levels)[1]


# -- train: streams, epochs, draws ---------------------------------------------

@dataclasses.dataclass(frozen=True)
class StreamLayout:
  """This host's streams and each one's share of its batch."""
  num_videos: int
  num_streams: int
  streams: Tuple[int, ...]     # this host's, in batch order
  share: int                   # elements each stream gives a batch

  @property
  def epoch_size(self) -> int:
    """Videos per stream and epoch: the same for every stream."""
    return epoch_size(self.num_videos, self.num_streams)


def epoch_size(num_videos: int, num_streams: int) -> int:
  return -(-num_videos // num_streams)


def stream_layout(num_videos: int, split: str, *, num_streams: int, batch_size: int,
                  process_index: int, process_count: int) -> StreamLayout:
  """Host p of P owns streams [p*S/P, (p+1)*S/P); errors say what does not fit."""
  num_streams = num_streams or process_count
  if num_streams % process_count:
    raise FeatureFormatError(
        f"{num_streams} data streams cannot be shared by {process_count} hosts: "
        f"num_streams must be a multiple of the host count")
  per_host = num_streams // process_count
  if batch_size % per_host:
    raise FeatureFormatError(
        f"the host batch of {batch_size} does not split over this host's "
        f"{per_host} data streams")
  if num_videos < num_streams:
    raise FeatureFormatError(
        f"split {split!r} has {num_videos} video(s) for {num_streams} "
        f"data streams: every stream needs at least one")
  return StreamLayout(num_videos, num_streams,
                      tuple(range(process_index * per_host, (process_index + 1) * per_host)),
                      batch_size // per_host)


def _philox(seed: int, epoch: int, counter_word: int = 0) -> np.random.Philox:
  counter = [0, 0, counter_word, 0]
  return np.random.Philox(key=[int(seed) % 2**64, int(epoch) % 2**64], counter=counter)


def epoch_order(num_videos: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of all videos that epoch `epoch` reads ([N] int64)."""
  words = _philox(seed, epoch).random_raw(num_videos)
  return np.argsort(words, kind="stable").astype(np.int64)


def stream_epoch(num_videos: int, seed: int, epoch: int, stream: int,
                 num_streams: int) -> Tuple[np.ndarray, np.ndarray]:
  """Stream `stream`'s elements in epoch `epoch`: the videos at positions s, s+S, ...
  of the epoch's permutation (epoch_size of them, wrapping past the end), and
  [epoch_size, 2] uniforms in [0, 1) for each element's draws."""
  size = epoch_size(num_videos, num_streams)
  positions = np.arange(stream, size * num_streams, num_streams) % num_videos
  videos = epoch_order(num_videos, seed, epoch)[positions]
  words = _philox(seed, epoch, stream + 1).random_raw(size * _DRAWS)
  uniforms = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
  return videos, uniforms.reshape(size, _DRAWS)


def uniform_index(uniform, n) -> np.ndarray:
  """floor(uniform * n), an integer in [0, n): a uniform pick among n."""
  n = np.asarray(n, np.int64)
  return np.minimum(np.floor(np.asarray(uniform) * n).astype(np.int64), n - 1)


def train_starts(uniform, num_frames, span: int) -> np.ndarray:
  """Start frames drawn uniformly among those whose clip of `span` frames fits
  (0 for a video shorter than the span: it loops)."""
  return uniform_index(uniform, np.maximum(np.asarray(num_frames) - span, 0) + 1)


def train_clip_rows(videos, uniforms, num_frames, clip_length: int,
                    frame_stride: int) -> np.ndarray:
  """[E, clip_length] frame rows of an epoch's clips (`stream_epoch`'s videos and
  uniforms; `num_frames` of every video of the split)."""
  num_frames = np.asarray(num_frames)[videos]
  starts = train_starts(uniforms[:, 0], num_frames,
                        clip_span(clip_length, frame_stride))
  return clip_rows(num_frames, starts, clip_length, frame_stride)


def clip_span(clip_length: int, frame_stride: int) -> int:
  return (clip_length - 1) * frame_stride + 1


def clip_rows(num_frames, start, clip_length: int, frame_stride: int) -> np.ndarray:
  """[..., clip_length] frame indices; short videos loop (indices wrap around)."""
  offsets = np.arange(clip_length, dtype=np.int64) * frame_stride
  return np.mod(np.asarray(start, np.int64)[..., None] + offsets,
                np.asarray(num_frames, np.int64)[..., None])


# -- eval ---------------------------------------------------------------------

def eval_host_videos(num_videos: int, process_index: int, process_count: int) -> List[int]:
  return list(range(process_index, num_videos, process_count))


def eval_num_batches(num_videos: int, elements_per_video: int, batch_size: int,
                     process_count: int) -> int:
  """Batches every host yields: the most any host needs."""
  return max(math.ceil(elements_per_video * len(eval_host_videos(num_videos, p,
                                                                 process_count))
                       / batch_size) for p in range(process_count))


def eval_starts(num_frames: int, span: int, eval_clips: int) -> np.ndarray:
  """`eval_clips` evenly spaced start frames, the first and last at the video's
  ends (one clip: the middle one)."""
  max_start = float(max(num_frames - span, 0))
  if eval_clips == 1:
    return np.rint(np.array([max_start / 2])).astype(np.int64)
  return np.rint(np.linspace(0.0, max_start, eval_clips)).astype(np.int64)


def eval_plan(reader: features_lib.ClipReader, data: Mapping, *, batch_size: int,
              process_index: int, process_count: int) -> Tuple[np.ndarray, np.ndarray,
                                                                int]:
  """This host's eval elements in order: ([E] video rows, [E, clip_length] frame
  rows), every video's `eval_clips` clips one after another; and the number of
  batches every host yields (the rest is padding)."""
  num_videos = len(reader.videos["video_index"])
  num_batches = eval_num_batches(num_videos, data["eval_clips"], batch_size,
                                 process_count)
  clip_length, frame_stride = data["clip_length"], data["frame_stride"]
  span = clip_span(clip_length, frame_stride)
  eval_clips = data["eval_clips"]
  videos, rows = [], []
  for video in eval_host_videos(num_videos, process_index, process_count):
    n = int(reader.videos["num_frames"][video])
    starts = eval_starts(n, span, eval_clips)
    videos.extend([video] * len(starts))
    rows.append(clip_rows(n, starts, clip_length, frame_stride))
  if not videos:
    return np.zeros([0], np.int64), np.zeros([0, clip_length], np.int64), num_batches
  return np.array(videos, np.int64), np.concatenate(rows), num_batches


# -- captioning ---------------------------------------------------------------

def segment_rows(num_frames: int, segments: int, frames: int,
                 frame_stride: int) -> np.ndarray:
  """[segments * frames] frame indices: segment k starts at frame floor(k * n /
  segments) of the video's n and takes `frames` frames `frame_stride` apart; where
  the last segment would run past the end, the starts are spread evenly from 0 to
  n - span instead (the segments overlap, in order: wrapping would give the last
  segment the video's first frames). Only a video shorter than one segment's span
  wraps around."""
  k = np.arange(segments, dtype=np.int64)
  starts = (k * num_frames) // segments
  span = clip_span(frames, frame_stride)
  if num_frames >= span and starts[-1] + span > num_frames:
    starts = (k * (num_frames - span)) // max(segments - 1, 1)
  offsets = np.arange(frames, dtype=np.int64) * frame_stride
  return np.mod(starts[:, None] + offsets[None], num_frames).reshape(-1)


def split_segment_rows(num_frames: Sequence[int], data: Mapping,
                       segments: int) -> np.ndarray:
  """[N, segments * data.clip_length] segment rows of N videos."""
  return np.stack([segment_rows(int(n), segments, data["clip_length"],
                                data["frame_stride"]) for n in num_frames])


def resume_point(start_step: int, layout: StreamLayout) -> Tuple[int, int]:
  """(epoch, position in it) where a run resuming at `start_step` continues every
  stream: whole epochs and positions are skipped without reading them."""
  return divmod(start_step * layout.share, layout.epoch_size)
