"""The on-disk feature format: the only module that knows it.

A feature directory (local or gs://, everything through tf.io.gfile) holds

    metadata.json                  levels and shapes, dtype, per-level scale, class
                                   names, splits with their shards and counts,
                                   backbone and extraction settings
    {split}-{index:05d}.tfrecord   one tf.train.Example per video

Why TFRecord: tf.data reads it natively and fast from local disks and GCS, it needs
no extra dependency, and videos are read whole and in sequence (ArrayRecord's random
access buys nothing here). Each record holds

    video_id (bytes), video_index (int64, position in the split), label (int64),
    frame_indices (int64 list: source frame numbers), num_frames (int64),
    features/{level} (bytes: float16 little-endian [num_frames, *shape])

Stored values are `(activation - mean[level]) / scale[level]`, with a per-channel
mean and one scale per level measured on the first videos extracted (in metadata):
every level is stored near zero mean and unit size, so float16 neither underflows
(randomly initialised VGG-16 activations shrink layer by layer) nor overflows, and
the model sees well-conditioned inputs. `denormalize` gives the activations back.

Writes are atomic per shard (temp file, then rename): an interrupted extraction never
leaves a half shard that reads as valid.
"""

import dataclasses
import json
import os
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from grurcn_jax.errors import FeatureFormatError
from grurcn_jax.host_tf import tf

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
STORAGE_DTYPE = np.float16


@dataclasses.dataclass
class VideoFeatures:
  """One video's record."""
  video_id: str
  video_index: int
  label: int
  frame_indices: np.ndarray                 # [N] int
  features: Dict[str, np.ndarray]           # level -> [N, *shape] float16

  @property
  def num_frames(self) -> int:
    return len(self.frame_indices)


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:05d}.tfrecord"


def join(directory: str, name: str) -> str:
  return os.path.join(directory, name)


def exists(path: str) -> bool:
  """Whether a file (local or gs://) is there."""
  return tf.io.gfile.exists(path)


# ---------------------------------------------------------------------------
# Metadata (per split: {"shards": [{"file", "num_videos", "num_frames",
# "videos": {video_index: video_id}}], "failed": [...], "num_videos", "num_frames"})

def read_metadata(directory: str) -> dict:
  path = join(directory, METADATA_FILE)
  if not exists(path):
    raise FeatureFormatError(f"no feature metadata at {path}: not a feature directory "
                             f"(extract features first)")
  with tf.io.gfile.GFile(path, "r") as f:
    try:
      metadata = json.load(f)
    except json.JSONDecodeError as e:
      raise FeatureFormatError(f"{path} is not valid JSON: {e}") from None
  if metadata.get("format_version") != FORMAT_VERSION:
    raise FeatureFormatError(f"{path} has format_version "
                             f"{metadata.get('format_version')}, expected {FORMAT_VERSION}")
  return metadata


def write_metadata(directory: str, metadata: Mapping) -> None:
  """Atomically (temp file + rename) writes metadata.json."""
  tf.io.gfile.makedirs(directory)
  _atomic_write(join(directory, METADATA_FILE),
                lambda path: _write_text(path, json.dumps(metadata, indent=1)))


def level_stats(activations: np.ndarray) -> dict:
  """Normalisation statistics of one level from sample activations [N, ..., C]."""
  channels = activations.shape[-1]
  flat = activations.reshape(-1, channels).astype(np.float64)
  mean = flat.mean(axis=0)
  scale = float(np.sqrt(np.mean(np.square(flat - mean))))
  return {"mean": [float(m) for m in mean], "scale": scale if scale > 0 else 1.0}


def normalize(activations: np.ndarray, stats: Mapping) -> np.ndarray:
  """Activations -> the stored float16 values."""
  return ((activations - np.asarray(stats["mean"], np.float32))
          / np.float32(stats["scale"])).astype(STORAGE_DTYPE)


def denormalize(stored: np.ndarray, stats: Mapping) -> np.ndarray:
  """Stored values -> activations (float32)."""
  return (stored.astype(np.float32) * np.float32(stats["scale"])
          + np.asarray(stats["mean"], np.float32))


def new_metadata(*, levels: Mapping[str, Sequence[int]], stats: Mapping[str, Mapping],
                 class_names: Sequence[str], backbone: Mapping,
                 extraction: Mapping) -> dict:
  return {
      "format_version": FORMAT_VERSION,
      "dtype": np.dtype(STORAGE_DTYPE).name,
      "levels": {level: {"shape": list(shape), "mean": list(stats[level]["mean"]),
                         "scale": float(stats[level]["scale"])}
                 for level, shape in levels.items()},
      "class_names": list(class_names),
      "splits": {},
      "backbone": dict(backbone),
      "extraction": dict(extraction),
  }


def has_shard(metadata: Mapping, split: str, name: str) -> bool:
  """Whether shard file `name` of `split` is recorded in `metadata`."""
  return any(s["file"] == name
             for s in metadata["splits"].get(split, {}).get("shards", []))


def record_shard(metadata: dict, split: str, name: str, counts: Mapping[str, int], *,
                 videos: Mapping[int, str],
                 failed: Sequence[Tuple[str, str]] = ()) -> None:
  """Records shard file `name` of `split` in `metadata` (in place), replacing an
  entry of the same file, and recomputes the split's totals.

  Args:
    metadata: from `new_metadata` or `read_metadata`.
    split: the split the shard belongs to.
    name: the shard's file name (`shard_name`).
    counts: its {'num_videos', 'num_frames'}, as `write_shard` returns them.
    videos: video_index -> video_id of the videos it holds.
    failed: (video_id, error) of the shard's videos that could not be decoded.
  """
  entries = metadata["splits"].setdefault(split, {"shards": [], "failed": []})
  entries["shards"] = sorted(
      [s for s in entries["shards"] if s["file"] != name]
      + [{"file": name, "num_videos": counts["num_videos"],
          "num_frames": counts["num_frames"],
          "videos": {str(i): v for i, v in videos.items()}}],
      key=lambda s: s["file"])
  # A video retried after a crash must not be listed as failed twice.
  retried = {video_id for video_id, _ in failed}
  entries["failed"] = ([f for f in entries["failed"] if f["video_id"] not in retried]
                       + [{"video_id": v, "error": e} for v, e in failed])
  for key in ("num_videos", "num_frames"):
    entries[key] = sum(s[key] for s in entries["shards"])


def split_shards(metadata: Mapping, split: str) -> List[dict]:
  """[{'file', 'num_videos', 'num_frames'}] of a split, in order."""
  if split not in metadata["splits"]:
    raise FeatureFormatError(f"split {split!r} is not in the features; available: "
                             f"{', '.join(sorted(metadata['splits'])) or 'none'}")
  return metadata["splits"][split]["shards"]


# ---------------------------------------------------------------------------
# Records

def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def encode_video(video: VideoFeatures) -> bytes:
  feature = {
      "video_id": _bytes([video.video_id.encode()]),
      "video_index": _ints([video.video_index]),
      "label": _ints([video.label]),
      "frame_indices": _ints([int(i) for i in video.frame_indices]),
      "num_frames": _ints([video.num_frames]),
  }
  for level, array in video.features.items():
    array = np.ascontiguousarray(array, dtype="<f2")
    if array.shape[0] != video.num_frames:
      raise ValueError(f"{video.video_id}: {level} has {array.shape[0]} frames, "
                       f"expected {video.num_frames}")
    feature[f"features/{level}"] = _bytes([array.tobytes()])
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_video(serialized: tf.Tensor, level_shapes: Mapping[str, Sequence[int]]):
  """In-graph parse of one record -> dict of tensors; features [N, *shape] float16."""
  spec = {
      "video_id": tf.io.FixedLenFeature([], tf.string),
      "video_index": tf.io.FixedLenFeature([], tf.int64),
      "label": tf.io.FixedLenFeature([], tf.int64),
      "frame_indices": tf.io.VarLenFeature(tf.int64),
      "num_frames": tf.io.FixedLenFeature([], tf.int64),
  }
  for level in level_shapes:
    spec[f"features/{level}"] = tf.io.FixedLenFeature([], tf.string)
  parsed = tf.io.parse_single_example(serialized, spec)
  features = {
      level: tf.reshape(tf.io.decode_raw(parsed[f"features/{level}"], tf.float16),
                        [-1, *shape])
      for level, shape in level_shapes.items()}
  return {
      "video_id": parsed["video_id"],
      "video_index": tf.cast(parsed["video_index"], tf.int32),
      "label": tf.cast(parsed["label"], tf.int32),
      "num_frames": tf.cast(parsed["num_frames"], tf.int32),
      "features": features,
  }


def decode_video(serialized: bytes, metadata: Mapping) -> VideoFeatures:
  """Eager parse of one record into numpy (tests, tools)."""
  example = tf.train.Example.FromString(serialized)
  f = example.features.feature
  num_frames = f["num_frames"].int64_list.value[0]
  features = {}
  for level, info in metadata["levels"].items():
    raw = f[f"features/{level}"].bytes_list.value[0]
    features[level] = np.frombuffer(raw, "<f2").reshape([num_frames] + info["shape"])
  return VideoFeatures(
      video_id=f["video_id"].bytes_list.value[0].decode(),
      video_index=f["video_index"].int64_list.value[0],
      label=f["label"].int64_list.value[0],
      frame_indices=np.array(f["frame_indices"].int64_list.value, np.int64),
      features=features)


# ---------------------------------------------------------------------------
# Shards

def _write_text(path: str, text: str) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text)


def _atomic_write(path: str, write) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    write(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)


def write_shard(path: str, videos: Iterable[VideoFeatures]) -> dict:
  """Writes one shard atomically; returns its {'num_videos', 'num_frames'}."""
  counts = {"num_videos": 0, "num_frames": 0}
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")

  def write(tmp):
    with tf.io.TFRecordWriter(tmp) as writer:
      for video in videos:
        writer.write(encode_video(video))
        counts["num_videos"] += 1
        counts["num_frames"] += video.num_frames
  _atomic_write(path, write)
  return counts


def read_shard(path: str) -> Iterable[bytes]:
  """Serialized records of one shard; a corrupt or truncated shard raises
  FeatureFormatError naming it."""
  try:
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      yield record
  except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
    raise FeatureFormatError(
        f"feature shard {path} is corrupt or truncated: {e.message.splitlines()[0]}") from None


def scan_shard(path: str, metadata: Mapping) -> Tuple[dict, Dict[int, str]]:
  """A shard's ({'num_videos', 'num_frames'}, {video_index: video_id}) from its
  contents, for `record_shard` (recovers what a crash between the shard's rename
  and the metadata's update kept out of the metadata)."""
  counts, videos = {"num_videos": 0, "num_frames": 0}, {}
  for record in read_shard(path):
    video = decode_video(record, metadata)
    counts["num_videos"] += 1
    counts["num_frames"] += video.num_frames
    videos[video.video_index] = video.video_id
  return counts, videos


def video_ids(metadata: Mapping, split: str) -> Dict[int, str]:
  """video_index -> video_id of a split."""
  return {int(i): v for shard in split_shards(metadata, split)
          for i, v in shard.get("videos", {}).items()}
