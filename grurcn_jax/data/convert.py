r"""Rewrites a feature directory in the current format, optionally storing some
levels as int8.

  # A format 1 directory (one TFRecord per video) -> the current format:
  python -m grurcn_jax.data.convert --src=/data/ucf101_v1 --dst=/data/ucf101

  # The same features with pool2 (55% of the bytes at 224 px) stored as int8:
  python -m grurcn_jax.data.convert --src=/data/ucf101 --dst=/data/ucf101_int8 \
      --int8_levels=pool2

  # Stored frames (frames mode) re-stored as JPEG of quality 90:
  python -m grurcn_jax.data.convert --src=/data/ucf101 --dst=/data/ucf101_jpeg \
      --frames_jpeg_quality=90

Videos keep their split, index, label, source frame indices and shard; the
normalisation is copied; JPEG frames are copied byte for byte. A level without an int8 step in the source (format 1)
gets one measured on the first videos read, as extraction measures it. Resumable:
shards already in --dst are skipped (a --dst converted from another --src or with
other flags is refused).
"""

import itertools
import os
import sys
from typing import Sequence

from absl import app, flags
import numpy as np

from grurcn_jax import files, flag_parsing
from grurcn_jax.data import features as features_lib
from grurcn_jax.errors import ConfigError, Error

# Videos whose values give a format 1 level its int8 step.
_CALIBRATION_VIDEOS = 8


def convert(src: str, dst: str, int8_levels: Sequence[str] = (),
            progress: bool = True, out=sys.stdout, frames_jpeg_quality: int = 0) -> dict:
  """Writes `src`'s videos into `dst`; returns `dst`'s metadata. Frames stay as
  `src` stores them (JPEG bytes are copied, never re-encoded); raw frames become
  JPEG of `frames_jpeg_quality` when it is given (1-100)."""
  if _absolute(src) == _absolute(dst):
    raise ConfigError("--dst must differ from --src")
  source = features_lib.read_metadata(src, versions=(1, features_lib.FORMAT_VERSION))
  listed = source.get("extraction", {}).get("video_lists", {})
  for split in {**source["splits"], **listed}:
    problem = features_lib.unfinished(source, split)
    if problem:
      raise ConfigError(f"--src {src}: {problem}")
  frames = source["levels"].get(features_lib.FRAMES)
  unknown = sorted(set(int8_levels) - set(source["levels"]) | (
      set(int8_levels) & {features_lib.FRAMES}))
  if unknown:
    raise ConfigError(f"--int8_levels names {', '.join(unknown)}, which {src} does not "
                      f"hold as features; it has "
                      f"{', '.join(l for l in source['levels'] if l != features_lib.FRAMES)}")
  if frames_jpeg_quality and (frames is None or features_lib.is_encoded(frames)):
    raise ConfigError(f"--frames_jpeg_quality: {src} holds "
                      + ("no frames" if frames is None else
                         f"its frames as JPEG already (quality {frames['quality']}); "
                         "they are copied as they are"))
  if frames is not None and features_lib.is_encoded(frames):
    frames_jpeg_quality = frames["quality"]
  stats = {level: dict(info) for level, info in source["levels"].items()
           if level != features_lib.FRAMES}
  missing_steps = [l for l, info in stats.items() if "int8_step" not in info]
  if missing_steps:
    first_split = next(iter(source["splits"]))
    sample = list(itertools.islice(features_lib.read_videos(src, first_split, source),
                                   _CALIBRATION_VIDEOS))
    for level in missing_steps:  # stored values are the normalised ones
      stats[level]["int8_step"] = features_lib.int8_step(
          np.concatenate([v.features[level] for v in sample]))
  extraction = dict(source["extraction"], converted_from=_absolute(src),
                    int8_levels=list(int8_levels),
                    frames_jpeg_quality=frames_jpeg_quality)
  files.ensure_directory(dst, "--dst")
  if features_lib.exists(features_lib.join(dst, features_lib.METADATA_FILE)):
    metadata = features_lib.read_metadata(dst)
    _check_resumable(metadata, extraction, src, dst)
  else:
    metadata = features_lib.new_metadata(
        levels={l: info["shape"] for l, info in source["levels"].items()
                if l != features_lib.FRAMES},
        stats=stats, class_names=source["class_names"], backbone=source["backbone"],
        extraction=extraction, int8_levels=int8_levels,
        frames_shape=None if frames is None else frames["shape"],
        frames_jpeg_quality=frames_jpeg_quality)
  import tqdm
  total = sum(split.get("num_videos", 0) for split in source["splits"].values())
  bar = tqdm.tqdm(total=total, unit="video", disable=not progress, file=out,
                  mininterval=2.0)
  for split, entries in source["splits"].items():
    for index, shard in enumerate(entries["shards"]):
      name = features_lib.shard_name(split, index)
      if features_lib.has_shard(metadata, split, name):
        bar.update(shard["num_videos"])
        continue
      videos = _shard_videos(src, source, split, shard)
      entry = features_lib.write_shard(dst, name, videos, metadata)
      features_lib.record_shard(metadata, split, entry)
      features_lib.write_metadata(dst, metadata)
      bar.update(entry["num_videos"])
    metadata["splits"][split]["failed"] = list(entries.get("failed", []))
  features_lib.mark_complete(metadata)   # every split is there
  features_lib.write_metadata(dst, metadata)
  bar.close()
  print(f"Converted {total} videos from {src} to {dst}"
        + (f" (int8: {', '.join(int8_levels)})" if int8_levels else "") + ".", file=out)
  return metadata


def _absolute(path: str) -> str:
  """`path` as recorded and compared: local paths absolute, no trailing slash."""
  path = path.rstrip("/") or "/"
  return os.path.abspath(path) if files.is_local(path) else path


def _check_resumable(metadata: dict, extraction: dict, src: str, dst: str) -> None:
  """Raises ConfigError unless `dst` holds a conversion of `src` with the same
  flags: a resumed conversion skips the shards already there."""
  previous = metadata["extraction"]
  if "converted_from" not in previous:
    raise ConfigError(f"{dst} holds features that were not converted from {src}; "
                      f"use another --dst")
  if _absolute(previous["converted_from"]) != extraction["converted_from"]:
    raise ConfigError(f"{dst} holds a conversion of {previous['converted_from']}, not "
                      f"of {src}; use another --dst")
  int8 = sorted(l for l, i in metadata["levels"].items() if i["dtype"] == "int8")
  for flag, there, now in (
      ("--int8_levels", ",".join(int8) or "none",
       ",".join(sorted(extraction["int8_levels"])) or "none"),
      ("--frames_jpeg_quality", previous.get("frames_jpeg_quality", 0),
       extraction["frames_jpeg_quality"])):
    if there != now:
      raise ConfigError(f"{dst} already holds a conversion with other {flag} ({there} "
                        f"there, {now} now); use another --dst")
  same = lambda record: {k: v for k, v in record.items()
                         if k not in ("converted_from", "int8_levels")}
  if same(previous) != same(extraction):
    raise ConfigError(f"{dst} holds a conversion of {src} as it was extracted "
                      f"before: its extraction settings changed since; use another --dst")


def _shard_videos(src, source, split, shard):
  if source["format_version"] == 1:
    one = dict(source, splits={split: {"shards": [shard]}})
    return features_lib.read_videos(src, split, one)
  # JPEG frames as their bytes: written back unchanged.
  return features_lib.read_shard(src, shard, source, encoded=True)


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("src", None, "Feature directory to read (format 1 or 2).")
  flags.DEFINE_string("dst", None, "Feature directory to write (local or gs://).")
  flags.DEFINE_list("int8_levels", [], "Levels to store as int8, e.g. pool2.")
  flags.DEFINE_integer("frames_jpeg_quality", 0, "Store raw frames as JPEG of this "
                       "quality (1-100); JPEG frames are always copied as they are.")
  flags.mark_flags_as_required(["src", "dst"])


def main(argv):
  del argv
  try:
    convert(FLAGS.src, FLAGS.dst, tuple(FLAGS.int8_levels),
            frames_jpeg_quality=FLAGS.frames_jpeg_quality)
  except Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print("\nerror: interrupted (Ctrl-C); the shards already written are kept: run "
          "the same command again to go on", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=flag_parsing.parse)
