"""The on-disk feature format: the only module that knows it.

A feature directory (local, read with the standard library, or gs:// and other
remote file systems, through tf.io.gfile) holds

    metadata.json                 levels (shape, dtype, normalisation, int8 step),
                                  class names, splits with their shards and video
                                  tables, backbone and extraction settings, and
                                  `complete` once an extraction has written every
                                  shard (the file itself exists from the first on)
    {split}-{index:05d}.{level}   the shard's frames of one level: raw little-endian
                                  rows [frames, *shape], float16 or int8, the
                                  videos' frames one after another
    {split}-{index:05d}.json      the shard's video table (written last: a shard
                                  without it is not there)

Frames stored as JPEG (`encoding: jpeg` in their level's metadata; extraction's
--frames_jpeg_quality) are one JPEG per frame, one after another, in
`{split}-{index:05d}.frames`, with `{split}-{index:05d}.frames.index` holding
their byte offsets (little-endian int64, one more than the frames): a clip still
reads only its own frames (one ranged read per run of consecutive frames), and
tf.data decodes them.

A video is (video_index, video_id, label, first_frame, num_frames): rows
first_frame .. first_frame + num_frames - 1 of its shard's level files. Every row
of a level has the same size, so a clip reads exactly the rows it needs, at a
computed offset (`ClipReader`): a 10-frame clip of a 186-frame video reads 10 rows,
not 186. There is no record framing or protocol buffer to parse, the rows land in
the clip's array as they are read, and a model that uses fewer levels reads fewer
files. Why not TFRecord (format 1) or ArrayRecord: TFRecord cannot seek, so a clip
read its whole video; ArrayRecord seeks, but through an index and a record layer
that rows of fixed size do not need.

Stored values are `(activation - mean[level]) / scale[level]`, with a per-channel
mean and one scale per level measured on the first videos extracted: every level is
stored near zero mean and unit size, so float16 neither underflows (randomly
initialised VGG-16 activations shrink layer by layer) nor overflows. A level stored
as int8 holds `round(value / int8_step)` clipped to [-127, 127], `int8_step` being
the level's 99.99th percentile of |value| / 127 on the same videos; it is
dequantised on the accelerator, inside the step (`data.prepare.FeatureSpec`).
`denormalize` gives the activations back.

Every file is written to a temporary name and renamed; the video table comes last,
so an interrupted extraction never leaves a shard that reads as complete. Files
carry no checksums: `ClipReader.check` compares every file's size with the table
before training starts (a truncated or missing file is named then).

Format 1 directories (one TFRecord per video) are read only to convert them:
`python -m grurcn_jax.data.convert --src=OLD --dst=NEW`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from grurcn_jax import files, levels as levels_lib
from grurcn_jax.errors import FeatureFormatError


class _TensorFlowOnUse:
  """TensorFlow (set up by `host_tf`), imported at its first use: reading a local
  directory with numpy (`ClipReader.read_numpy`, the threaded loader) needs none,
  so a machine without TensorFlow can train from one."""

  def __getattr__(self, name):
    from grurcn_jax.host_tf import tf as module
    return getattr(module, name)


tf = _TensorFlowOnUse()

FORMAT_VERSION = 2
METADATA_FILE = "metadata.json"
STORAGE_DTYPES = {"float16": np.dtype("<f2"), "int8": np.dtype(np.int8),
                  "uint8": np.dtype(np.uint8)}
FRAMES = levels_lib.FRAMES
JPEG = "jpeg"
# Values outside +-127 steps are clipped: the step covers the 99.99th percentile.
_INT8_QUANTILE = 0.9999
_CONVERT = "python -m grurcn_jax.data.convert --src={src} --dst=NEW_DIR"


@dataclasses.dataclass
class VideoFeatures:
  """One video: its frames' features, as stored (normalised) values."""
  video_id: str
  video_index: int
  label: int
  frame_indices: np.ndarray                 # [N] int: source frame numbers
  features: Dict[str, np.ndarray]           # level -> [N, *shape] float16

  @property
  def num_frames(self) -> int:
    return len(self.frame_indices)


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:05d}"


def join(directory: str, name: str) -> str:
  return os.path.join(directory, name)


def exists(path: str) -> bool:
  """Whether a file (local or gs://) is there."""
  return files.exists(path)


def level_file(name: str, level: str) -> str:
  return f"{name}.{level}"


def table_file(name: str) -> str:
  return f"{name}.json"


def shard_written(directory: str, name: str) -> bool:
  """Whether shard `name` is complete in `directory` (its table is written last)."""
  return exists(join(directory, table_file(name)))


# ---------------------------------------------------------------------------
# Metadata (per split: {"shards": [{"name", "num_videos", "num_frames", "videos":
# [[video_index, video_id, label, first_frame, num_frames], ...]}], "failed": [...],
# "num_videos", "num_frames"})

def read_metadata(directory: str, versions: Sequence[int] = (FORMAT_VERSION,)) -> dict:
  path = join(directory, METADATA_FILE)
  metadata = read_json(path, f"no feature metadata at {path}: not a feature directory "
                             f"(extract features first)")
  version = metadata.get("format_version")
  if version not in versions:
    hint = (f"; convert it once with: {_CONVERT.format(src=directory)}"
            if version == 1 else "")
    raise FeatureFormatError(f"{path} has format_version {version}, expected "
                             f"{' or '.join(map(str, versions))}{hint}")
  missing = [k for k in ("levels", "class_names", "splits") if k not in metadata]
  if missing:
    raise FeatureFormatError(f"{path} lacks {', '.join(missing)}: it is damaged or "
                             f"was not written by this package's extraction")
  return metadata


def write_metadata(directory: str, metadata: Mapping) -> None:
  """Atomically (temp file + rename) writes metadata.json."""
  write_json(join(directory, METADATA_FILE), metadata)


def write_json(path: str, document: Mapping) -> None:
  """Atomically (temp file + rename) writes a JSON file of the directory."""
  files.makedirs(os.path.dirname(path))
  data = json.dumps(document, indent=1).encode()
  files.write_atomically(path, lambda tmp: files.write_bytes(tmp, data))


def read_json(path: str, missing: str) -> dict:
  """A JSON file of the directory; FeatureFormatError(`missing`) when absent."""
  if not exists(path):
    raise FeatureFormatError(missing)
  try:
    document = json.loads(files.read_bytes(path).decode("utf-8"))
  except OSError as e:
    raise FeatureFormatError(f"cannot read {path}: {e.strerror or e}") from None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise FeatureFormatError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(document, dict):
    raise FeatureFormatError(f"{path} is not valid: a JSON object was expected, "
                             f"found a {type(document).__name__}")
  return document


def level_stats(activations: np.ndarray) -> dict:
  """Normalisation statistics of one level from sample activations [N, ..., C],
  and the int8 step of the normalised values."""
  channels = activations.shape[-1]
  flat = activations.reshape(-1, channels).astype(np.float64)
  mean = flat.mean(axis=0)
  scale = float(np.sqrt(np.mean(np.square(flat - mean))))
  scale = scale if scale > 0 else 1.0
  return {"mean": [float(m) for m in mean], "scale": scale,
          "int8_step": int8_step((flat - mean) / scale)}


def int8_step(normalised: np.ndarray) -> float:
  """The int8 step of a level from sample normalised values: 127 steps reach their
  99.99th percentile of |value| (the rarer tail is clipped)."""
  top = float(np.quantile(np.abs(np.asarray(normalised, np.float64)), _INT8_QUANTILE))
  return (top if top > 0 else 1.0) / 127


def normalize(activations: np.ndarray, stats: Mapping, dtype=np.float16) -> np.ndarray:
  """Activations -> the stored (normalised) float16 values (in `dtype`: before the
  cast to float16, with np.float32)."""
  return ((activations - np.asarray(stats["mean"], np.float32))
          / np.float32(stats["scale"])).astype(dtype)


def denormalize(stored: np.ndarray, stats: Mapping) -> np.ndarray:
  """Stored (normalised) values -> activations (float32)."""
  return (stored.astype(np.float32) * np.float32(stats["scale"])
          + np.asarray(stats["mean"], np.float32))


# Rows quantised at a time: float32 temporaries of a whole video's level were 4x
# its float16 bytes (5.7 GB for pool2 of a 1,776-frame UCF-101 video).
_QUANTIZE_ROWS = 64


def quantize(values: np.ndarray, step: float) -> np.ndarray:
  """Normalised values [N, ...] -> int8 steps (what an int8 level stores)."""
  out = np.empty(values.shape, np.int8)
  for start in range(0, len(values), _QUANTIZE_ROWS):
    rows = slice(start, start + _QUANTIZE_ROWS)
    scaled = values[rows].astype(np.float32)
    scaled /= np.float32(step)
    out[rows] = np.clip(np.round(scaled, out=scaled), -127, 127, out=scaled)
    del scaled   # before the next rows' temporary
  return out


def dequantize(steps: np.ndarray, step: float) -> np.ndarray:
  """int8 steps -> float16 values, as the accelerator computes them
  (`data.prepare.FeatureSpec.dequantize`): a float16 product, rounded once."""
  return steps.astype(np.float16) * np.float16(step)


def storage_dtype(info: Mapping) -> np.dtype:
  """The numpy dtype of a level's rows (little-endian)."""
  return STORAGE_DTYPES[info["dtype"]]


def new_metadata(*, levels: Mapping[str, Sequence[int]], stats: Mapping[str, Mapping],
                 class_names: Sequence[str], backbone: Mapping, extraction: Mapping,
                 int8_levels: Sequence[str] = (),
                 frames_shape: Optional[Sequence[int]] = None,
                 frames_jpeg_quality: int = 0) -> dict:
  """Metadata of a new directory; with `frames_shape` ([S, S, 3]) it also holds
  the frames (level `FRAMES`, uint8): raw, or as JPEG of `frames_jpeg_quality`
  (1-100; 0: raw)."""
  if not 0 <= frames_jpeg_quality <= 100:
    raise FeatureFormatError(f"JPEG quality {frames_jpeg_quality} is not in 1..100 "
                             f"(0: raw frames)")
  unknown = sorted(set(int8_levels) - set(levels))
  if unknown:
    raise FeatureFormatError(f"int8 level(s) {', '.join(unknown)} are not among the "
                             f"levels {', '.join(levels)}")
  metadata = {
      "format_version": FORMAT_VERSION,
      "levels": {level: {"shape": list(shape),
                         "dtype": "int8" if level in int8_levels else "float16",
                         "mean": list(stats[level]["mean"]),
                         "scale": float(stats[level]["scale"]),
                         "int8_step": float(stats[level]["int8_step"])}
                 for level, shape in levels.items()},
      "class_names": list(class_names),
      "splits": {},
      "backbone": dict(backbone),
      "extraction": dict(extraction),
  }
  if frames_shape is not None:
    metadata["levels"][FRAMES] = {"shape": list(frames_shape), "dtype": "uint8"}
    if frames_jpeg_quality:
      metadata["levels"][FRAMES].update(encoding=JPEG, quality=frames_jpeg_quality)
  return metadata


def is_complete(metadata: Mapping) -> bool:
  """Whether the extraction that wrote `metadata` finished: metadata.json is
  written from its first shard on, so only this says every split is there."""
  return bool(metadata.get("complete"))


def mark_complete(metadata: dict) -> None:
  """Marks `metadata` (in place) as written by a finished extraction."""
  metadata["complete"] = True


def has_shard(metadata: Mapping, split: str, name: str) -> bool:
  """Whether shard `name` of `split` is recorded in `metadata`."""
  return any(s["name"] == name
             for s in metadata["splits"].get(split, {}).get("shards", []))


def record_shard(metadata: dict, split: str, entry: Mapping, *,
                 failed: Sequence[Tuple[str, str]] = ()) -> None:
  """Records a shard's table `entry` (from `write_shard` or `read_shard_table`)
  in `metadata`'s `split` (in place), replacing an entry of the same shard, and
  recomputes the split's totals. `failed`: (video_id, error) of the shard's videos
  that could not be decoded."""
  entry = {k: entry[k] for k in ("name", "num_videos", "num_frames", "videos")}
  entries = metadata["splits"].setdefault(split, {"shards": [], "failed": []})
  entries["shards"] = sorted(
      [s for s in entries["shards"] if s["name"] != entry["name"]] + [entry],
      key=lambda s: s["name"])
  # A video retried after a crash must not be listed as failed twice.
  retried = {video_id for video_id, _ in failed}
  entries["failed"] = ([f for f in entries["failed"] if f["video_id"] not in retried]
                       + [{"video_id": v, "error": e} for v, e in failed])
  for key in ("num_videos", "num_frames"):
    entries[key] = sum(s[key] for s in entries["shards"])


def unfinished(metadata: Mapping, split: str) -> Optional[str]:
  """Why `split` is not all there, or None: an extraction (or conversion) that
  is still running or was stopped has written only some of the videos it listed
  (metadata.json exists from its first shard on). A finished extraction is marked
  complete; without the mark, the videos written and those recorded as
  undecodable must add up to the listed count (directories from before the lists
  were recorded are taken as they are)."""
  if is_complete(metadata):
    return None
  listed = metadata.get("extraction", {}).get("video_lists", {}).get(split)
  if listed is None:
    return None
  entries = metadata["splits"].get(split, {})
  written, failed = entries.get("num_videos", 0), len(entries.get("failed", []))
  if written + failed >= listed["num_videos"]:
    return None
  work = ("conversion" if "converted_from" in metadata.get("extraction", {})
          else "extraction")
  return (f"split {split!r} holds {written} of the {listed['num_videos']} videos its "
          f"extraction listed{f' ({failed} undecodable)' if failed else ''}: the "
          f"{work} is still running or was stopped; rerun the same command to "
          f"finish it (it resumes)")


def split_shards(metadata: Mapping, split: str) -> List[dict]:
  """[{'name', 'num_videos', 'num_frames', 'videos'}] of a split, in order; a split
  whose extraction has not finished is an error."""
  problem = unfinished(metadata, split)
  if problem:
    raise FeatureFormatError(problem)
  if split not in metadata["splits"]:
    raise FeatureFormatError(f"split {split!r} is not in the features; available: "
                             f"{', '.join(sorted(metadata['splits'])) or 'none'}")
  return metadata["splits"][split]["shards"]


def video_ids(metadata: Mapping, split: str) -> Dict[int, str]:
  """video_index -> video_id of a split."""
  return {int(v[0]): v[1] for shard in split_shards(metadata, split)
          for v in shard["videos"]}


def _row_bytes(info: Mapping) -> int:
  return int(np.prod(info["shape"])) * storage_dtype(info).itemsize


def is_encoded(info: Mapping) -> bool:
  """Whether a level's frames are stored encoded (JPEG), with an offsets index,
  rather than as raw rows."""
  return info.get("encoding") == JPEG


def index_file(name: str, level: str) -> str:
  return f"{level_file(name, level)}.index"


def encode_jpeg(frames: np.ndarray, quality: int) -> List[bytes]:
  """[N, H, W, 3] uint8 -> one JPEG per frame."""
  return [tf.io.encode_jpeg(frame, quality=quality).numpy() for frame in frames]


def decode_jpeg(encoded: Sequence[bytes], shape: Sequence[int]) -> np.ndarray:
  """JPEGs -> [N, *shape] uint8, decoded as the pipeline decodes them."""
  out = np.empty((len(encoded), *shape), np.uint8)
  for i, data in enumerate(encoded):
    out[i] = tf.io.decode_jpeg(data, channels=3).numpy()
  return out


# ---------------------------------------------------------------------------
# Writing

# Rows converted to bytes and written at a time (write_shard).
_WRITE_ROWS = 64


def _stored(level: str, array: np.ndarray, info: Mapping) -> bytes:
  if info["dtype"] == "int8":
    return quantize(array, info["int8_step"]).tobytes()
  if info["dtype"] == "uint8" and array.dtype != np.uint8:
    raise ValueError(f"{level} holds uint8 frames, got {array.dtype}")
  return np.ascontiguousarray(array, dtype=storage_dtype(info)).tobytes()


def write_shard(directory: str, name: str, videos: Iterable[VideoFeatures],
                metadata: Mapping) -> dict:
  """Writes shard `name` of `videos` (each level in the dtype `metadata` gives it)
  and returns its table entry, for `record_shard`. Streams: each video is written as
  it comes (extraction holds about a batch of frames' videos at a time). The table
  is renamed into place last."""
  files.makedirs(directory)
  levels = metadata["levels"]
  pid = os.getpid()
  tmp = {level: join(directory, f"{level_file(name, level)}.tmp-{pid}") for level in levels}
  outputs = {level: files.open_file(path, "wb") for level, path in tmp.items()}
  for f in outputs.values():
    f.write(b"")  # a GFile creates its file at the first write: shards may be empty
  # Encoded levels: each frame's byte offset in its file, and the end.
  offsets = {level: [0] for level, info in levels.items() if is_encoded(info)}
  table, frame_indices, rows = [], {}, 0
  try:
    for video in videos:
      if not video.num_frames:
        # Clips loop over a video's rows modulo its frame count: with none, they
        # would read the next video's rows under this video's label.
        raise FeatureFormatError(f"video {video.video_id} of shard {name} has no "
                                 f"frames: a video needs at least one")
      for level, info in levels.items():
        array = video.features[level]
        shape = (video.num_frames,) if array.dtype == object else (
            video.num_frames, *info["shape"])
        if array.dtype == object and level not in offsets:
          raise ValueError(f"{video.video_id}: {level} is stored raw, got encoded "
                           f"frames")
        if array.shape != shape:
          raise ValueError(f"{video.video_id}: {level} has shape {array.shape}, expected "
                           f"{shape}")
        if level in offsets:
          # Frames already encoded (bytes, e.g. copied by conversion) stay as
          # they are: no second JPEG generation.
          encoded = (list(array) if array.dtype == object
                     else encode_jpeg(array, info["quality"]))
          for data in encoded:
            outputs[level].write(data)
            offsets[level].append(offsets[level][-1] + len(data))
        else:
          # A few rows at a time: the whole level's bytes at once were another
          # copy of it (2.6 GB for a 1,776-frame UCF-101 video's float16 levels).
          for start in range(0, len(array), _WRITE_ROWS):
            outputs[level].write(_stored(level, array[start:start + _WRITE_ROWS], info))
      table.append([int(video.video_index), video.video_id, int(video.label), rows,
                    video.num_frames])
      frame_indices[str(video.video_index)] = [int(i) for i in video.frame_indices]
      rows += video.num_frames
    for f in outputs.values():
      f.close()
    for level, path in tmp.items():
      files.rename(path, join(directory, level_file(name, level)))
    for level, ends in offsets.items():
      data = np.asarray(ends, "<i8").tobytes()
      files.write_atomically(join(directory, index_file(name, level)),
                             lambda path, data=data: files.write_bytes(path, data))
  finally:
    for level, path in tmp.items():
      outputs[level].close()
      if exists(path):
        files.remove(path)
  entry = {"name": name, "num_videos": len(table), "num_frames": rows, "videos": table}
  data = json.dumps(dict(entry, frame_indices=frame_indices)).encode()
  files.write_atomically(join(directory, table_file(name)),
                         lambda path: files.write_bytes(path, data))
  return entry


# ---------------------------------------------------------------------------
# Reading with numpy (tools, conversion, tests)

def read_shard_table(directory: str, name: str) -> dict:
  """A written shard's table entry (with the videos' source frame indices)."""
  path = join(directory, table_file(name))
  if not exists(path):
    raise FeatureFormatError(f"feature shard table {path} cannot be read: it does "
                             f"not exist")
  try:
    with files.open_file(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise FeatureFormatError(f"feature shard table {path} cannot be read: {e}") from None


def read_shard(directory: str, entry: Mapping, metadata: Mapping,
               levels: Optional[Sequence[str]] = None, *,
               encoded: bool = False) -> Iterator[VideoFeatures]:
  """The videos of shard `entry` (from `split_shards`), with every (or `levels`')
  features as normalised float16 values (int8 levels dequantised) and frames as
  uint8 (JPEG frames decoded; with `encoded`, as their JPEG bytes, an object
  array, which `write_shard` writes back unchanged). Read a video at a time: a
  shard's files whole were 3-16 GB at UCF-101's paper shapes (conversion)."""
  levels = list(levels or metadata["levels"])
  table = read_shard_table(directory, entry["name"])
  paths, ends = {}, {}
  for level in levels:
    info = metadata["levels"][level]
    paths[level] = join(directory, level_file(entry["name"], level))
    if is_encoded(info):
      ends[level] = _read_index(directory, entry["name"], level, entry["num_frames"])
      expected = int(ends[level][-1])
    else:
      expected = entry["num_frames"] * _row_bytes(info)
    size = files.size(paths[level])
    if size != expected:
      raise FeatureFormatError(_size_problem(paths[level], size, expected))
  for video_index, video_id, label, first, count in table["videos"]:
    values = {}
    for level in levels:
      info = metadata["levels"][level]
      if level in ends:
        bounds = ends[level][first:first + count + 1]
        data = _read_span(paths[level], int(bounds[0]), int(bounds[-1] - bounds[0]))
        frames = [bytes(data[a:b]) for a, b in zip(bounds[:-1] - bounds[0],
                                                   bounds[1:] - bounds[0])]
        if encoded:
          values[level] = np.empty(len(frames), object)
          values[level][:] = frames
        else:
          values[level] = decode_jpeg(frames, info["shape"])
        continue
      row_bytes = _row_bytes(info)
      data = _read_span(paths[level], first * row_bytes, count * row_bytes)
      rows = np.frombuffer(data, storage_dtype(info)).reshape([count, *info["shape"]])
      values[level] = (dequantize(rows, info["int8_step"]) if info["dtype"] == "int8"
                       else rows)
    yield VideoFeatures(
        video_id=video_id, video_index=int(video_index), label=int(label),
        frame_indices=np.array(table["frame_indices"][str(video_index)], np.int64),
        features=values)


def _read_span(path: str, offset: int, size: int) -> bytearray:
  """`size` bytes of the file at `offset`."""
  data = bytearray(size)
  read = _read_local if files.is_local(path) else _read_remote
  read(path, [(offset, memoryview(data))])
  return data


def read_videos(directory: str, split: str,
                metadata: Optional[Mapping] = None) -> Iterator[VideoFeatures]:
  """Every video of `split`, shard by shard; reads format 1 directories too (for
  conversion)."""
  metadata = metadata or read_metadata(directory, versions=(1, FORMAT_VERSION))
  if metadata["format_version"] == 1:
    yield from _read_format1_split(directory, split, metadata)
    return
  for entry in split_shards(metadata, split):
    yield from read_shard(directory, entry, metadata)


def _read_index(directory: str, name: str, level: str, num_frames: int) -> np.ndarray:
  """An encoded level's frame offsets in shard `name` ([num_frames + 1] int64),
  checked."""
  path = join(directory, index_file(name, level))
  raw = files.read_bytes(path) if exists(path) else None
  expected = (num_frames + 1) * 8
  if raw is None or len(raw) != expected:
    raise FeatureFormatError(_size_problem(path, None if raw is None else len(raw),
                                           expected))
  ends = np.frombuffer(raw, "<i8")
  if ends[0] != 0 or np.any(np.diff(ends) <= 0):
    raise FeatureFormatError(f"feature index {path} is corrupt: its offsets do not "
                             f"increase from 0")
  return ends


def _size_problem(path: str, size: Optional[int], expected: int) -> str:
  if size is None:
    return f"feature file {path} does not exist"
  return (f"feature file {path} is truncated or corrupt: {size} bytes, its table "
          f"needs {expected}")


# ---------------------------------------------------------------------------
# Reading clips in tf.data

class ClipReader:
  """Reads clips of one split's videos: only their frames' rows.

  `videos` is the split's video table as numpy arrays (video_index, label, shard,
  first_frame, num_frames), in shard order. `read(shard, first_frame, rows)` is,
  in a tf.data graph, the clip's features {level: [len(rows), *shape]} in their
  stored dtype. Each run of consecutive rows is one positioned read (`os.preadv`
  straight into the clip's array on local disks, a ranged read through
  tf.io.gfile elsewhere), inside `tf.numpy_function`: the reads release the GIL, so
  parallel map calls overlap. (tf.data's FixedLengthRecordDataset, with the clip's
  offset as its header, reads the same bytes ten times slower: 0.5 GB/s against
  6 GB/s from the page cache on a 2-core AMD EPYC.)
  """

  def __init__(self, directory: str, metadata: Mapping, split: str,
               levels: Optional[Sequence[str]] = None):
    available = metadata["levels"]
    self.levels = list(levels) if levels else list(available)
    missing = [level for level in self.levels if level not in available]
    if missing:
      raise FeatureFormatError(
          f"level(s) {', '.join(missing)} not in the features; available: "
          f"{', '.join(available)}")
    self.directory = directory
    self.shards = split_shards(metadata, split)
    self.infos = {level: available[level] for level in self.levels}
    self.row_bytes = {level: _row_bytes(info) for level, info in self.infos.items()}
    self.paths = {level: [join(directory, level_file(s["name"], level))
                          for s in self.shards] for level in self.levels}
    # Encoded levels: each shard's frame offsets, read by `check`.
    self.offsets: Dict[str, Dict[int, np.ndarray]] = {
        level: {} for level, info in self.infos.items() if is_encoded(info)}
    self._local = files.is_local(directory)
    rows = [(v[0], v[2], shard, v[3], v[4]) for shard, s in enumerate(self.shards)
            for v in s["videos"]]
    columns = list(zip(*rows)) if rows else [()] * 5
    self.videos = {name: np.array(column, np.int64) for name, column in zip(
        ("video_index", "label", "shard", "first_frame", "num_frames"), columns)}

  def check(self) -> List[Tuple[int, str, str]]:
    """(shard, path, problem) of every level file that is missing or of the wrong
    size."""
    problems = []
    for level in self.levels:
      for shard, (path, entry) in enumerate(zip(self.paths[level], self.shards)):
        if level in self.offsets:
          try:
            ends = _read_index(self.directory, entry["name"], level,
                               entry["num_frames"])
          except FeatureFormatError as e:
            problems.append((shard, join(self.directory,
                                         index_file(entry["name"], level)), str(e)))
            continue
          self.offsets[level][shard] = ends
          expected = int(ends[-1])
        else:
          expected = entry["num_frames"] * self.row_bytes[level]
        size = files.size(path)
        if size != expected:
          problems.append((shard, path, _size_problem(path, size, expected)))
    return problems

  def drop_shards(self, shards: Iterable[int]) -> int:
    """Leaves the videos of `shards` out of `videos`; returns how many."""
    keep = ~np.isin(self.videos["shard"], list(shards))
    dropped = int((~keep).sum())
    self.videos = {k: v[keep] for k, v in self.videos.items()}
    return dropped

  def table(self) -> Dict[str, tf.Tensor]:
    return {k: tf.constant(v) for k, v in self.videos.items()}

  def dtype(self, level: str) -> np.dtype:
    return storage_dtype(self.infos[level])

  def read(self, shard: tf.Tensor, first_frame: tf.Tensor,
           rows: tf.Tensor) -> Dict[str, tf.Tensor]:
    """{level: [len(rows), *shape]} of a video's `rows` (in-graph); JPEG frames
    are read as bytes and decoded here."""
    outputs = tf.numpy_function(
        lambda *args: tuple(self.read_numpy(*args)), [shard, first_frame, rows],
        [tf.string if level in self.offsets else tf.as_dtype(self.dtype(level))
         for level in self.levels], stateful=False)
    if not isinstance(outputs, (list, tuple)):
      outputs = [outputs]
    clip = {}
    for level, x in zip(self.levels, outputs):
      shape = [rows.shape[0], *self.infos[level]["shape"]]
      if level in self.offsets:
        x = tf.map_fn(lambda data: tf.io.decode_jpeg(data, channels=3),
                      tf.ensure_shape(x, shape[:1]),
                      fn_output_signature=tf.TensorSpec(shape[1:], tf.uint8))
      clip[level] = tf.ensure_shape(x, shape)
    return clip

  def read_numpy(self, shard, first_frame, rows) -> List[np.ndarray]:
    """The same read in numpy: one array per level."""
    runs = _runs(rows)
    out = []
    for level in self.levels:
      if level in self.offsets:
        out.append(self._read_encoded(level, int(shard), int(first_frame), runs))
        continue
      clip = np.empty((len(rows), *self.infos[level]["shape"]), self.dtype(level))
      self._read_rows(level, int(shard), int(first_frame), runs, clip)
      out.append(clip)
    return out

  def read_into(self, clip: Mapping[str, np.ndarray], shard: int, first_frame: int,
                rows) -> None:
    """Reads a video's `rows` of every level into `clip[level]` ([len(rows),
    *shape] arrays of the stored dtype, e.g. a batch's slot): no copy after the
    read. Raw rows only (JPEG frames are decoded by tf.data)."""
    runs = _runs(rows)
    for level in self.levels:
      if level in self.offsets:
        raise FeatureFormatError(f"{level} is stored as JPEG: read_into reads raw rows")
      self._read_rows(level, int(shard), int(first_frame), runs, clip[level])

  def _read_rows(self, level, shard, first_frame, runs, clip) -> None:
    path, row_bytes = self.paths[level][shard], self.row_bytes[level]
    reads = [((first_frame + row) * row_bytes,
              memoryview(clip[position:position + count]).cast("B"))
             for position, row, count in runs]
    if self._local:
      _read_local(path, reads)
    else:
      _read_remote(path, reads)

  def _read_encoded(self, level, shard, first_frame, runs) -> np.ndarray:
    """[len(rows)] bytes: each row's JPEG, one ranged read per run of rows."""
    ends = self.offsets[level][shard]
    count = sum(n for _, _, n in runs)
    out = np.empty(count, object)
    buffers = []
    for position, row, n in runs:
      a, b = first_frame + row, first_frame + row + n
      buffers.append((position, ends[a:b + 1] - ends[a],
                      bytearray(int(ends[b] - ends[a])), int(ends[a])))
    reads = [(offset, memoryview(buffer)) for _, _, buffer, offset in buffers]
    path = self.paths[level][shard]
    if self._local:
      _read_local(path, reads)
    else:
      _read_remote(path, reads)
    for position, bounds, buffer, _ in buffers:
      for i in range(len(bounds) - 1):
        out[position + i] = bytes(buffer[bounds[i]:bounds[i + 1]])
    return out


def _runs(rows) -> List[Tuple[int, int, int]]:
  """Runs of consecutive rows: (position in the clip, first row, count)."""
  rows = np.asarray(rows, np.int64)
  breaks = np.flatnonzero(np.diff(rows) != 1) + 1
  return [(int(k[0]), int(rows[k[0]]), len(k))
          for k in np.split(np.arange(len(rows)), breaks) if len(k)]


def _read_local(path: str, reads) -> None:
  """Positioned reads (offset, target) of one file, each until its target is full
  (a read may return less than asked on network file systems)."""
  fd = os.open(path, os.O_RDONLY)
  try:
    for offset, target in reads:
      done = 0
      while done < len(target):
        got = os.preadv(fd, [target[done:]], offset + done)
        if got == 0:
          raise FeatureFormatError(_end_problem(path, os.fstat(fd).st_size, offset,
                                                len(target)))
        done += got
  finally:
    os.close(fd)


def _read_remote(path: str, reads) -> None:
  """The same through tf.io.gfile (gs:// and other remote file systems)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    for offset, target in reads:
      f.seek(offset)
      data = f.read(len(target))
      if len(data) != len(target):
        raise FeatureFormatError(_end_problem(path, f.size(), offset, len(target)))
      target[:] = data


def _end_problem(path: str, size: int, offset: int, wanted: int) -> str:
  # The file's size, not where the read stopped: a read that starts past the end
  # stops where it starts.
  return (f"feature file {path} ends at byte {size}, before the {wanted} bytes "
          f"read at {offset}: truncated")


# ---------------------------------------------------------------------------
# Format 1 (one tf.train.Example per video), read for conversion only

def _read_format1_split(directory: str, split: str,
                        metadata: Mapping) -> Iterator[VideoFeatures]:
  for shard in split_shards(metadata, split):
    path = join(directory, shard["file"])
    try:
      for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        example = tf.train.Example.FromString(record).features.feature
        num_frames = example["num_frames"].int64_list.value[0]
        yield VideoFeatures(
            video_id=example["video_id"].bytes_list.value[0].decode(),
            video_index=example["video_index"].int64_list.value[0],
            label=example["label"].int64_list.value[0],
            frame_indices=np.array(example["frame_indices"].int64_list.value, np.int64),
            features={level: np.frombuffer(
                example[f"features/{level}"].bytes_list.value[0], "<f2").reshape(
                    [num_frames] + info["shape"])
                      for level, info in metadata["levels"].items()})
    except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
      raise FeatureFormatError(f"feature shard {path} is corrupt or truncated: "
                               f"{e.message.splitlines()[0]}") from None
