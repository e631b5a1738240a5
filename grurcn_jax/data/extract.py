r"""VGG-16 feature extraction: videos -> feature shards (data/features.py format).

  python -m grurcn_jax.data.extract --source=ucf101 --videos=UCF-101/ \
      --splits=ucfTrainTestlist/ --split=1 --out=/data/ucf101_feats \
      --levels=pool2,pool3,pool4,pool5 --frame_stride=5 --weights=imagenet

For captioning, MSVD's clips with their references (data/msvd.py) go into the same
format, plus `captions.json` (data/captions.py: references and vocabulary):

  python -m grurcn_jax.data.extract --source=msvd --videos=YouTubeClips/ \
      --captions=AllVideoDescriptions.txt --mapping=youtube_mapping.txt \
      --out=/data/msvd_feats --levels=pool2,pool3,pool4,pool5 --weights=imagenet

It prints the estimated output size per level first (`--dry_run` prints only that),
shows progress with videos/s, frames/s and ETA, and is resumable: shards already
written are skipped, so re-running the same command after an interruption finishes
the job. Videos PyAV cannot decode are listed, skipped and counted in the summary.
Problems the user can fix (bad flags, split files, other settings in --out) print
one line, `error: ...`, and exit with status 1.
"""

import dataclasses
import hashlib
import os
import sys
import time
import zlib
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app, flags, logging
import numpy as np

from grurcn_jax import errors, files, flag_parsing
from grurcn_jax import levels as levels_lib
from grurcn_jax.data import features as features_lib
from grurcn_jax.data import captions as captions_lib
from grurcn_jax.data import flow as flow_lib
from grurcn_jax.data import msvd, ucf101, video as video_lib
from grurcn_jax.errors import (ConfigError, ExtractionError, SplitFileError,
                               VideoDecodeError)

SOURCES = ("ucf101", "folders", "tfds", "msvd", "flow_frames")
# Sources whose listing is in a shuffled order already (tfds shuffles a split when
# it prepares it), which extraction keeps: their videos are read in that order.
SHUFFLED_SOURCES = ("tfds",)
# Bytes of a shard's table per video (id, label, rows) and per frame (its source
# frame index): generous.
_RECORD_OVERHEAD = 200
_INDEX_BYTES = 4


@dataclasses.dataclass
class Video:
  """One video to extract. `load` returns (frames [N, H, W, 3] uint8 RGB, source
  frame indices [N]) already subsampled; it may raise VideoDecodeError."""
  video_id: str
  label: int
  split: str
  load: Callable[[], Tuple[np.ndarray, np.ndarray]]
  estimate_frames: Callable[[], int]
  # What `load` gives: rgb frames, or flow (stored flow [N, H, W, 2] uint8,
  # data/flow.py, imported from flow frames made elsewhere).
  content: str = "rgb"


@dataclasses.dataclass
class Settings:
  levels: Tuple[str, ...] = ("pool2", "pool3", "pool4", "pool5")
  image_size: int = 224
  frame_stride: Optional[int] = 1
  fps: Optional[float] = None
  max_frames: Optional[int] = None
  # random | imagenet | path to Keras VGG16 weights | checkpoint:DIR[@STEP] (a
  # frames-mode run's VGG-16, e.g. stage 1's fine-tuned one; pinned to its step)
  weights: str = "random"
  seed: int = 0
  augment: bool = False            # the paper's multi-scale random crop, train videos
  videos_per_shard: int = 64
  int8_levels: Tuple[str, ...] = ()  # levels stored as int8 (half of float16's bytes)
  store_frames: bool = False         # also the frames (uint8), for frames mode
  frames_jpeg_quality: int = 0       # frames as JPEG of this quality (0: raw rows)
  batch_size: int = 64             # frames per VGG-16 forward pass
  # rgb, or flow: the paper's second stream, VGG-16 on windows of flow_length
  # stacked flows (data/flow.py), its first convolution cross-modality initialised.
  modality: str = "rgb"
  flow: str = "dis"                # dis | farneback | tvl1
  flow_bound: float = flow_lib.DEFAULT_BOUND
  flow_length: int = flow_lib.DEFAULT_LENGTH
  # UCF-101's split (--split; sources ucf101 and flow_frames): recorded, so
  # resuming into a directory of another split is refused.
  split: Optional[int] = None

  def record(self) -> dict:
    """What must match for a resumed extraction to continue the same dataset."""
    record = {"levels": list(self.levels), "image_size": self.image_size,
              "frame_stride": self.frame_stride, "fps": self.fps,
              "max_frames": self.max_frames, "weights": self.weights, "seed": self.seed,
              "augment": self.augment, "videos_per_shard": self.videos_per_shard,
              "int8_levels": list(self.int8_levels), "store_frames": self.store_frames,
              "frames_jpeg_quality": self.frames_jpeg_quality}
    if self.modality == "flow":   # RGB records stay as they were: old runs resume
      record.update(flow_lib.flow_settings_record(self.flow, self.flow_bound,
                                                  self.flow_length))
    if self.split is not None:
      record["split"] = self.split
    return record

  @property
  def input_channels(self) -> int:
    return 2 * self.flow_length if self.modality == "flow" else 3


@dataclasses.dataclass
class Summary:
  written_videos: int = 0
  written_frames: int = 0
  written_shards: int = 0
  skipped_shards: int = 0
  failed: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
  estimated_bytes: Dict[str, int] = dataclasses.field(default_factory=dict)


class FeatureExtractor:
  """VGG-16 forward, jit-compiled, in fixed-size batches (one compilation)."""

  def __init__(self, settings: Settings):
    import jax  # deferred so --help and --dry_run stay fast
    from grurcn_jax.models import vgg16
    self._jax = jax
    self.settings = settings
    self.levels = tuple(settings.levels)
    if settings.weights == "random":
      params = vgg16.init_params(self.levels, settings.seed, settings.image_size)
    else:
      params = vgg16.load_weights(settings.weights, self.levels)
    preprocess = vgg16.preprocess
    if settings.modality == "flow":
      params = vgg16.cross_modality(params, settings.input_channels)
      preprocess = vgg16.preprocess_flow
    model = vgg16.VGG16(levels=self.levels)
    self._params = params
    self._forward = jax.jit(
        lambda p, frames: model.apply({"params": p}, preprocess(frames)))

  def __call__(self, frames) -> Dict[str, np.ndarray]:
    """[N, S, S, 3] uint8 frames (or [N, S, S, 2L] flow windows; anything that
    has a length and gives arrays when sliced) -> level -> float32 [N, *shape]."""
    outputs: Dict[str, List[np.ndarray]] = {level: [] for level in self.levels}
    for _, result in self._batches(frames):
      for level in self.levels:
        outputs[level].append(result[level])
    return {level: np.concatenate(v) for level, v in outputs.items()}

  def normalized(self, frames, stats: Mapping[str, Mapping],
                 name_of_row: Callable[[int], str] = lambda row: f"frame row {row}"
                 ) -> Dict[str, np.ndarray]:
    """The stored values (`features.normalize` with each level's `stats`): float16
    [N, *shape], filled batch by batch. A video's float32 activations are never
    whole: at 224 px they are 2.9 MB a frame, 5 GB for a UCF-101 video of all
    its 1,776 frames, twice that while concatenated. Values that would be stored
    as NaN or infinity raise an ExtractionError naming `name_of_row(row)`."""
    out = {level: np.empty((len(frames), *shape), np.float16)
           for level, shape in level_shapes(self.settings).items()}
    for start, result in self._batches(frames):
      for level in self.levels:
        activations = result[level]
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
          stored = features_lib.normalize(activations, stats[level])
        finite = np.isfinite(stored).reshape(len(stored), -1).all(axis=1)
        if not finite.all():
          row = int(np.argmin(finite))
          raise ExtractionError(self._unstorable(
              level, activations[row], stats[level], name_of_row(start + row)))
        out[level][start:start + len(stored)] = stored
    return out

  def _unstorable(self, level: str, activations: np.ndarray, stats: Mapping,
                  where: str) -> str:
    if not np.isfinite(activations).all():
      return (f"{where}: VGG-16 (--weights={self.settings.weights}) gave NaN or "
              f"infinite {level} activations: the weights are broken (a fine-tune "
              f"that diverged?)")
    largest = float(np.max(np.abs(features_lib.normalize(activations, stats,
                                                         np.float32))))
    return (f"{where}: {level} values {largest:.3g} scales from the calibration mean, "
            f"beyond float16's range (65504): the calibration videos' statistics do "
            f"not fit this video (a corrupt one?); the shards written so far are kept")

  def _batches(self, frames: np.ndarray):
    """(first row, level -> float32 activations) of each batch of `frames`."""
    n, b = len(frames), self.settings.batch_size
    for start in range(0, n, b):
      chunk = frames[start:start + b]
      # Pad to a power of two (at least 8): a handful of compilations, little waste.
      size = min(b, max(8, 1 << (len(chunk) - 1).bit_length()))
      padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:],
                                               chunk.dtype)]) if len(chunk) < size else chunk
      result = self._jax.device_get(self._forward(self._params, padded))
      yield start, {level: np.asarray(result[level][:len(chunk)], np.float32)
                    for level in self.levels}


class _Rows:
  """The rows of several videos' network inputs (arrays, or flow windows stacked
  when sliced) read as one: a batch is taken across them without joining them
  whole first."""

  def __init__(self, parts: Sequence):
    self._parts = parts
    self._ends = np.cumsum([len(p) for p in parts])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._parts) else 0

  def __getitem__(self, rows: slice) -> np.ndarray:
    start, stop, step = rows.indices(len(self))
    assert step == 1, rows
    pieces, begin = [], 0
    for part, end in zip(self._parts, self._ends):
      low, high = max(start, begin), min(stop, end)
      if low < high:
        pieces.append(np.asarray(part[low - begin:high - begin]))
      begin = end
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def level_shapes(settings: Settings) -> Dict[str, Tuple[int, ...]]:
  return {level: levels_lib.feature_shape(level, settings.image_size)
          for level in settings.levels}


# Raw frames' bytes over their JPEG's, for camera frames at quality 90.
JPEG_RATIO = 10
# The estimate's frame count (beside its bytes per level, the frames' included).
_NUM_FRAMES = "num_frames"


def estimate_bytes(videos: Sequence[Video], settings: Settings) -> Dict[str, int]:
  """Estimated bytes written per level (the frames' too), 'total', and the frame
  count ('num_frames'), from container metadata."""
  frames = [v.estimate_frames() for v in videos]
  total_frames = sum(frames)
  out = {level: int(np.prod(shape)) * (1 if level in settings.int8_levels else 2)
         * total_frames for level, shape in level_shapes(settings).items()}
  if settings.store_frames:
    raw = settings.image_size ** 2 * 3 * total_frames
    # JPEG's size depends on the content: camera frames at quality 90 take about a
    # tenth of their raw bytes (README, "Features").
    out[features_lib.FRAMES] = raw // JPEG_RATIO if settings.frames_jpeg_quality else raw
  out["total"] = (sum(out.values()) + len(videos) * _RECORD_OVERHEAD
                  + total_frames * _INDEX_BYTES)
  out[_NUM_FRAMES] = total_frames
  return out


def _human(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if n < 1024 or unit == "TB":
      return f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TB"


def print_estimate(estimate: Dict[str, int], num_videos: int, out=None,
                   jpeg: bool = False) -> None:
  out = out or sys.stdout   # looked up at the call: a redirected stdout is used
  print(f"Estimated output for {num_videos} videos, {estimate[_NUM_FRAMES]} frames:",
        file=out)
  for level, n in estimate.items():
    if level not in ("total", _NUM_FRAMES):
      print(f"  {level:6s} {_human(n):>10s}", file=out)
  if jpeg:
    print(f"  (frames as JPEG: about 1/{JPEG_RATIO} of their raw size; it depends on "
          f"the content)", file=out)
  print(f"  {'total':6s} {_human(estimate['total']):>10s}", file=out)


# Record keys named as the flag that sets them; what a record lacks reads as
# the flag's default (RGB records carry no modality: old RGB runs resume).
_FLAG_KEYS = {f.name for f in dataclasses.fields(Settings)} | {"source"}
_ABSENT = {"modality": "rgb"}
_FLOW_KEYS = ("flow", "flow_bound", "flow_length")
# Recorded since resuming checks the video lists: a directory written before
# has neither key, and resumes without those checks.
_LATER_KEYS = ("split", "video_lists")


def _video_lists(splits: Dict[str, Sequence[Video]]) -> Dict[str, dict]:
  """Per split, its video count and a fingerprint of its videos (ids and labels)
  in shard order: resuming over another list would leave the written shards
  holding the old videos (duplicates and gaps)."""
  return {split: {"num_videos": len(videos), "sha256": hashlib.sha256("\n".join(
      f"{v.video_id}\t{v.label}" for v in videos).encode()).hexdigest()}
          for split, videos in splits.items()}


def _shown(value) -> str:
  if isinstance(value, (list, tuple)):
    return ",".join(map(str, value)) or "none"
  return "none" if value is None else str(value)


def _check_compatible(metadata: dict, record: dict, class_names, out_dir: str) -> None:
  """Raises ConfigError unless `metadata` was written with the same settings
  (`record`: the extraction record this run would write) and videos."""
  previous = dict(metadata["extraction"])
  now = dict(record)
  if "video_lists" not in previous:
    logging.warning("%s predates the recorded --split and video lists: resumed "
                    "without checking them", out_dir)
    for key in _LATER_KEYS:
      previous.pop(key, None)
      now.pop(key, None)
  # Another decoder gives other frames for some videos only (rotated ones, --fps
  # on uneven timestamps): said, not refused.
  decoder, _ = previous.pop("decoder", 1), now.pop("decoder", None)
  if decoder != video_lib.DECODER_VERSION:
    logging.warning(
        "%s was begun by decoder version %s, this is version %s: videos with rotation "
        "metadata now decode upright and --fps takes one frame per 1/fps slot. The "
        "shards written keep their frames, the rest get the new ones; for one "
        "decoder throughout, extract into a new --out", out_dir, decoder,
        video_lib.DECODER_VERSION)
  from grurcn_jax.models import vgg16  # deferred: jax and flax only past the flags
  if vgg16.is_weights_file(previous.get("weights", "")):
    # A weights file recorded as typed (before paths were made absolute): the same
    # file if it resolves to it from here, as a resume from where it began does.
    previous["weights"] = files.absolute(previous["weights"])
  get = lambda r, k: r.get(k, _ABSENT.get(k))
  keys = [k for k in dict.fromkeys([*previous, *now]) if k != "video_lists"]
  if get(previous, "modality") != get(now, "modality"):
    keys = [k for k in keys if k not in _FLOW_KEYS]  # they follow the modality
  differ = [f"{'--' * (k in _FLAG_KEYS)}{k}: {_shown(get(previous, k))} there, "
            f"{_shown(get(now, k))} now" for k in keys if get(previous, k) != get(now, k)]
  if metadata["class_names"] != list(class_names):
    differ.append(f"class names: {len(metadata['class_names'])} there, "
                  f"{len(class_names)} now")
  if differ:
    raise ConfigError(f"the output directory holds features extracted with other "
                      f"settings ({'; '.join(differ)}); use another --out or the same "
                      f"settings to resume")
  before, after = previous.get("video_lists", {}), now.get("video_lists", {})
  for split in dict.fromkeys([*before, *after]):
    there, here = before.get(split, {}), after.get(split, {})
    if there != here:
      raise ConfigError(
          f"the {split!r} videos differ from those {out_dir} was extracted from "
          f"({there.get('num_videos', 0)} there, {here.get('num_videos', 0)} now: a "
          f"video added, removed or renamed); its shards hold the old list: use a "
          f"new --out")


# Frames of each calibration video the statistics are taken from, evenly spaced:
# all of 8 long videos' pool2 maps, in the float64 the statistics are computed in,
# were tens of GB (8 UCF-101 videos of 186 frames: 4.8 GB an array, several alive).
CALIBRATION_FRAMES = 16


def _calibrate(videos: Sequence[Video], extractor: FeatureExtractor, settings: Settings,
               max_videos: int = 8) -> Dict[str, dict]:
  """Per-level normalisation statistics from the first decodable videos (the
  shards' hashed order makes them a mix of classes), CALIBRATION_FRAMES of each."""
  samples: Dict[str, List[np.ndarray]] = {level: [] for level in settings.levels}
  for video in videos:
    try:
      frames, indices = video.load()
      frames, _ = network_input(
          video, video_lib.resize_and_crop(frames, settings.image_size, None),
          indices, settings, at_most=CALIBRATION_FRAMES)
    except VideoDecodeError:
      continue
    if not len(frames):
      continue
    for level, a in extractor(frames).items():
      samples[level].append(a)
    if len(samples[settings.levels[0]]) >= max_videos:
      break
  if not samples[settings.levels[0]]:
    raise VideoDecodeError("none of the first videos could be decoded: nothing to "
                           "calibrate the feature scales on")
  stats = {}
  for level, a in samples.items():
    activations = np.concatenate(a)
    # Broken weights give NaN, or where max() drops NaN (XLA:CPU's ReLU) zeros.
    constant = activations.size and np.all(activations == activations.flat[0])
    if constant or not np.isfinite(activations).all():
      raise ExtractionError(
          f"VGG-16 (--weights={settings.weights}) gave "
          f"{'constant' if constant else 'NaN or infinite'} {level} activations on "
          f"the calibration frames: the weights are broken (a fine-tune that "
          f"diverged?); no features were written")
    stats[level] = features_lib.level_stats(activations)
  return stats


def evenly_spaced(count: int, at_most: int) -> np.ndarray:
  """Indices of `at_most` evenly spaced items of `count` (all of them if fewer)."""
  if count <= at_most:
    return np.arange(count)
  return np.round(np.linspace(0, count - 1, at_most)).astype(np.int64)


def network_input(video: Video, frames: np.ndarray, indices: np.ndarray,
                  settings: Settings, at_most: Optional[int] = None
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """What VGG-16 reads, with the source frame index of each: the frames (rgb), or
  (flow) windows of flow_length stacked flows (`flow.Windows`, stacked a batch at
  a time), the flow computed between
  consecutive decoded frames here or imported as stored, a window starting at
  every flow step --frame_stride selects (at most --max_frames of them).
  `at_most`: only that many of them, evenly spaced (calibration). Flow is
  computed only where a window takes it."""
  if settings.modality != "flow":
    if video.content != "rgb":
      raise ConfigError(f"{video.video_id}: imported flow needs --modality=flow")
    if at_most:
      chosen = evenly_spaced(len(frames), at_most)
      return frames[chosen], indices[chosen]
    return frames, indices
  num_flows = len(frames) - 1 if video.content == "rgb" else len(frames)
  keep = _select_indices(max(num_flows, 0), settings)
  if at_most:
    keep = keep[evenly_spaced(len(keep), at_most)]
  if video.content != "rgb":
    return (flow_lib.Windows(frames, np.arange(num_flows), num_flows,
                             settings.flow_length, keep), indices[keep])
  steps = np.unique(flow_lib.window_steps(num_flows, settings.flow_length, keep))
  flows = flow_lib.quantize(flow_lib.video_flow(frames, settings.flow, steps),
                            settings.flow_bound)
  # Flow t goes from frame t to frame t+1: its index is frame t's.
  return (flow_lib.Windows(flows, steps, num_flows, settings.flow_length, keep),
          indices[:-1][keep])


def _crop_for(video: Video, settings: Settings):
  if settings.augment and video.split == "train":
    rng = np.random.default_rng([settings.seed, zlib.crc32(video.video_id.encode())])
    return video_lib.random_crop(rng)
  return None


def extract(videos: Sequence[Video], class_names: Sequence[str], out_dir: str,
            settings: Settings, *, source: str, dry_run: bool = False,
            progress: bool = True, out=None) -> Summary:
  """Extracts `videos` into `out_dir`; resumable; returns what was done (printed
  to `out`, default the current sys.stdout)."""
  out = out or sys.stdout
  if settings.modality == "flow" and settings.store_frames:
    raise ConfigError("store_frames keeps RGB frames for frames mode; it does not "
                      "apply to the flow modality")
  summary = Summary()
  summary.estimated_bytes = estimate_bytes(videos, settings)
  print_estimate(summary.estimated_bytes, len(videos), out,
                 jpeg=settings.store_frames and bool(settings.frames_jpeg_quality))
  if dry_run:
    return summary
  files.ensure_directory(out_dir, "--out")

  shapes = level_shapes(settings)
  # Shards get videos in hashed order: real datasets are listed class by class, and
  # shards of one class each would make any subset of shards a biased sample. A
  # source listed shuffled already (tfds) keeps its order: it is read forward.
  splits: Dict[str, List[Video]] = {}
  for v in (videos if source in SHUFFLED_SOURCES else sorted(
      videos, key=lambda v: (zlib.crc32(v.video_id.encode()), v.video_id))):
    splits.setdefault(v.split, []).append(v)
  record = {**settings.record(), "source": source, "video_lists": _video_lists(splits),
            "decoder": video_lib.DECODER_VERSION}
  if features_lib.exists(features_lib.join(out_dir, features_lib.METADATA_FILE)):
    metadata = features_lib.read_metadata(out_dir)
    _check_compatible(metadata, record, class_names, out_dir)
    if "video_lists" not in metadata["extraction"]:
      # A directory from before the lists were recorded gets them now: the
      # resumes after this one check them.
      metadata["extraction"].update({k: record[k] for k in _LATER_KEYS if k in record})
      features_lib.write_metadata(out_dir, metadata)
  else:
    metadata = None
  extractor = FeatureExtractor(settings)  # after the check: it is the slow part

  import tqdm  # progress bar with rate and ETA
  bar = tqdm.tqdm(total=len(videos), unit="video", disable=not progress, file=out,
                  mininterval=2.0, dynamic_ncols=True)
  frames_done, started = 0, time.time()
  for split, split_videos in splits.items():
    chunks = [split_videos[i:i + settings.videos_per_shard]
              for i in range(0, len(split_videos), settings.videos_per_shard)]
    for shard_index, chunk in enumerate(chunks):
      name = features_lib.shard_name(split, shard_index)
      if metadata is not None and features_lib.shard_written(out_dir, name):
        summary.skipped_shards += 1
        bar.update(len(chunk))
        if features_lib.has_shard(metadata, split, name):
          continue
        # Written, but a crash before the metadata update kept it out: recover its
        # entry from its table (its failed videos are not known any more).
        entry = features_lib.read_shard_table(out_dir, name)
        failed = []
      else:
        if metadata is None:
          metadata = features_lib.new_metadata(
              # Scales from training videos only, whichever split is written
              # first: the test videos stay unseen.
              levels=shapes, stats=_calibrate(splits.get("train", split_videos),
                                              extractor, settings),
              class_names=class_names,
              backbone={"name": "vgg16", "weights": settings.weights,
                        "seed": settings.seed, "image_size": settings.image_size,
                        **({"input": "flow", "channels": settings.input_channels}
                           if settings.modality == "flow" else {})},
              extraction=record,
              int8_levels=settings.int8_levels,
              frames_shape=((settings.image_size,) * 2 + (3,)
                            if settings.store_frames else None),
              frames_jpeg_quality=settings.frames_jpeg_quality)
        failed = []

        def shard_videos():
          # Videos are loaded until their frames fill a batch and go through the
          # network together: alone, short videos (the demos' 4 to 8 frames) were
          # each a forward pass padded to at least 8 frames.
          pending, pending_frames = [], 0

          def run_pending():
            nonlocal frames_done
            ends = np.cumsum([len(p[2]) for p in pending])
            normalized = extractor.normalized(
                _Rows([p[2] for p in pending]), metadata["levels"],
                name_of_row=lambda row: pending[int(np.searchsorted(
                    ends, row, side="right"))][1].video_id)
            start = 0
            for video_index, video, frames, indices in pending:
              stored = {level: a[start:start + len(frames)]
                        for level, a in normalized.items()}
              start += len(frames)
              if settings.store_frames:
                stored[features_lib.FRAMES] = frames
              frames_done += len(frames)
              bar.update(1)
              elapsed = max(time.time() - started, 1e-9)
              bar.set_postfix(frames_per_s=f"{frames_done / elapsed:.1f}", refresh=False)
              yield features_lib.VideoFeatures(
                  video_id=video.video_id,
                  video_index=video_index,
                  label=video.label, frame_indices=indices, features=stored)
            pending.clear()

          for offset, video in enumerate(chunk):
            video_index = shard_index * settings.videos_per_shard + offset
            try:
              frames, indices = video.load()
              frames = video_lib.resize_and_crop(frames, settings.image_size,
                                                 _crop_for(video, settings))
              frames, indices = network_input(video, frames, indices, settings)
              if not len(frames):
                raise VideoDecodeError(f"{video.video_id}: no frames to extract")
            except VideoDecodeError as e:
              failed.append((video.video_id, str(e)))
              logging.warning("skipping undecodable video %s", e)
              bar.update(1)
              continue
            pending.append((video_index, video, frames, indices))
            pending_frames += len(frames)
            if pending_frames >= settings.batch_size:
              yield from run_pending()
              pending_frames = 0
          if pending:
            yield from run_pending()

        entry = features_lib.write_shard(out_dir, name, shard_videos(), metadata)
        summary.written_shards += 1
        summary.written_videos += entry["num_videos"]
        summary.written_frames += entry["num_frames"]
        summary.failed.extend(failed)
      features_lib.record_shard(metadata, split, entry, failed=failed)
      features_lib.write_metadata(out_dir, metadata)
  if metadata is not None and not features_lib.is_complete(metadata):
    # Only now: metadata.json exists from the first shard on.
    features_lib.mark_complete(metadata)
    features_lib.write_metadata(out_dir, metadata)
  bar.close()

  print(f"Wrote {summary.written_videos} videos ({summary.written_frames} frames) in "
        f"{summary.written_shards} shard(s) to {out_dir}; {summary.skipped_shards} "
        f"shard(s) already there were skipped.", file=out)
  if summary.failed:
    print(f"{len(summary.failed)} video(s) could not be decoded and were skipped:", file=out)
    for video_id, error in summary.failed:
      print(f"  {video_id}: {error}", file=out)
  return summary


# ---------------------------------------------------------------------------
# Sources

def _decode_settings(settings: Settings) -> Settings:
  """What to decode of a video: the selected frames, or for flow every frame
  (flow is between consecutive frames; windows are then selected from the flow,
  `network_input`), enough for max_frames windows that do not run past the end."""
  if settings.modality != "flow":
    return settings
  return dataclasses.replace(settings, frame_stride=1, fps=None, max_frames=(
      settings.max_frames and settings.max_frames * (settings.frame_stride or 1)
      + settings.flow_length))


def _file_videos(entries, settings: Settings) -> List[Video]:
  estimate = dict(frame_stride=settings.frame_stride, fps=settings.fps,
                  max_frames=settings.max_frames)
  selection = _decode_settings(settings)
  decode = dict(frame_stride=selection.frame_stride, fps=selection.fps,
                max_frames=selection.max_frames)
  return [Video(e.video_id, e.label, e.split,
                load=lambda e=e: video_lib.decode(e.path, **decode),
                estimate_frames=lambda e=e: video_lib.estimate_frames(e.path, **estimate))
          for e in entries]


def flow_frames_videos(entries, settings: Settings) -> List[Video]:
  """Videos whose flow was made elsewhere, in TSN's layout: a folder per video,
  named as the video file without its extension (ROOT/v_X_g01_c01/ or
  ROOT/Class/v_X_g01_c01/), holding flow_x_00001.jpg, flow_y_00001.jpg, ..."""
  def folder(e):
    stem = os.path.splitext(e.path)[0]
    flat = os.path.join(os.path.dirname(os.path.dirname(stem)), os.path.basename(stem))
    return stem if os.path.isdir(stem) else flat

  def load(e):
    flows = flow_lib.read_flow_frames(folder(e))
    return flows, np.arange(len(flows))

  def estimate(e):
    try:
      count = sum(n.startswith("flow_x_") for n in os.listdir(folder(e)))
    except OSError:
      return 0
    return len(_select_indices(count, settings))
  return [Video(e.video_id, e.label, e.split, load=lambda e=e: load(e),
                estimate_frames=lambda e=e: estimate(e), content="flow")
          for e in entries]


def _tfds_examples(builder, split: str):
  """The examples of `split` (a slice too), videos encoded, in the order of the
  split's indices. tfds otherwise interleaves its files 16 examples at a time, so
  the i-th example read was not example i of a slice: a listing's labels went to
  other videos' frames."""
  import tensorflow_datasets as tfds
  return iter(tfds.as_numpy(builder.as_dataset(
      split=split, shuffle_files=False, decoders={"video": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(interleave_cycle_length=1))))


class _ForwardReader:
  """A split's examples, encoded, read forward from where the last one was. A
  `split[i:i+1]` slice per video re-read its tfds file from the start up to the
  example (quadratic in the file's size); extraction loads a tfds split's videos
  in order (`SHUFFLED_SOURCES`), so here each is the next record. Asking for any
  other example (a resumed run's first video) starts a read at it."""

  def __init__(self, builder, split: str):
    self._builder, self._split = builder, split
    self._examples, self._next = None, 0

  def example(self, index: int):
    if self._examples is None or index != self._next:
      self._examples = _tfds_examples(self._builder, f"{self._split}[{index}:]")
      self._next = index
    self._next += 1
    return next(self._examples)


def tfds_videos(name: str, data_dir: Optional[str], settings: Settings):
  """UCF-101 through TensorFlow Datasets (downloads on first use: opt-in). Videos
  are decoded one at a time, when extraction loads them, and of each only the
  frames kept (--frame_stride, --fps, --max_frames): listing them reads only
  labels and frame counts (all decoded UCF-101 videos would be ~490 GB)."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare()
  class_names = builder.info.features["label"].names
  frame_feature = builder.info.features["video"].feature   # tfds.features.Image
  selection = _decode_settings(settings)
  readers = {}

  def load(split, i):
    encoded = readers.setdefault(split, _ForwardReader(builder, split)).example(i)["video"]
    keep = _select_indices(len(encoded), selection)
    if not len(keep):
      raise VideoDecodeError(f"{split}/{i:06d}: no frames")
    return np.stack([frame_feature.decode_example(encoded[k]).numpy() for k in keep]), keep

  videos = []
  for split in ("train", "test"):
    for i, example in enumerate(_tfds_examples(builder, split)):
      count = len(example["video"])   # encoded frames: nothing decoded
      videos.append(Video(f"{split}/{i:06d}", int(example["label"]), split,
                          load=lambda s=split, i=i: load(s, i),
                          estimate_frames=lambda n=count: len(
                              _select_indices(n, settings))))
  return class_names, videos


def _select_indices(num_frames: int, settings: Settings, rate: float = 25.0) -> np.ndarray:
  """Indices of decoded frames kept by --frame_stride / --fps / --max_frames."""
  keep = []
  selection = video_lib.FrameSelection(frame_stride=settings.frame_stride, fps=settings.fps)
  for i in range(num_frames):
    if selection.take(i, i / rate):
      keep.append(i)
      if settings.max_frames and len(keep) >= settings.max_frames:
        break
  return np.array(keep, np.int64)


# ---------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS):
  """Command-line flags (defined only when run as a program, so importing this
  module next to other CLIs defines nothing; tests define them in their own
  FlagValues)."""
  def define(kind, *args, **kwargs):
    getattr(flags, f"DEFINE_{kind}")(*args, flag_values=flag_values, **kwargs)

  define("enum", "source", "ucf101", SOURCES, "Where the videos come from.")
  define("string", "videos", None, "Video root: UCF-101's ClassName/*.avi tree, any "
         "class-per-folder tree (optionally with train/ and test/), MSVD's "
         "clips, or (--source=flow_frames) a folder of per-video flow "
         "folders in TSN's layout.")
  define("string", "splits", None, "Directory with classInd.txt, trainlist0N.txt, "
         "testlist0N.txt (--source=ucf101).")
  define("integer", "split", 1, "UCF-101 split: 1, 2 or 3.")
  define("string", "captions", None, "MSVD's AllVideoDescriptions.txt: '<clip> "
         "<caption>' lines (--source=msvd).")
  define("string", "mapping", None, "MSVD's youtube_mapping.txt: '<clip> vidN' "
         "lines, the order the split follows (--source=msvd).")
  define("list", "msvd_split", [str(n) for n in msvd.SPLIT_SIZES],
         "train,val,test clip counts, in vidN order (--source=msvd).")
  define("integer", "min_word_count", 1, "Words of the training references seen "
         "fewer times are <unk> in the vocabulary (--source=msvd).")
  define("string", "tfds_name", "ucf101", "TFDS dataset name (--source=tfds).")
  define("string", "tfds_data_dir", None, "TFDS data_dir (--source=tfds).")
  define("string", "out", None, "Output feature directory (local or gs://).")
  define("list", "levels", ["pool2", "pool3", "pool4", "pool5"],
         f"Levels to store, from {', '.join(levels_lib.LEVELS)}.")
  define("integer", "image_size", 224, "Frame side fed to VGG-16.")
  define("integer", "frame_stride", 1, "Keep every N-th frame (ignored with --fps).")
  define("float", "fps", None, "Keep the first frame of each 1/fps s instead of "
         "--frame_stride (a video slower than that keeps every frame).")
  define("integer", "max_frames", None, "At most this many frames per video.")
  define("string", "weights", "random", "random (seeded, no network) | imagenet "
         "(Keras' standard file, downloaded once by Keras) | path to a Keras "
         "VGG16 weights file | checkpoint:DIR[@STEP] (the VGG-16 of a "
         "frames-mode run, e.g. configs/ucf101_vgg16_finetune.py; DIR its "
         "workdir, newest step by default).")
  define("integer", "seed", 0, "Seed of random weights and of training crops.")
  define("bool", "augment", False, "The paper's multi-scale random crop (side 256, 224, "
         "192 or 168 of 256, resized), one per train video.")
  define("integer", "videos_per_shard", 64, "Videos per shard.")
  define("list", "int8_levels", [], "Levels stored as int8 instead of float16 "
         "(half the bytes; dequantised on the accelerator), e.g. pool2.")
  define("bool", "store_frames", False, "Also store the resized frames (uint8), "
         "which frames mode (data.input=frames) trains on.")
  define("integer", "frames_jpeg_quality", 0, "With --store_frames: store the "
         "frames as JPEG of this quality, 1-100 (about 10x smaller at 90; "
         "tf.data decodes them), instead of raw rows (0).")
  define("integer", "batch_size", 64, "Frames per VGG-16 forward pass.")
  define("enum", "modality", "rgb", ("rgb", "flow"), "rgb frames, or optical flow "
         "(the second stream): VGG-16 on --flow_length stacked flows.")
  define("enum", "flow", "dis", flow_lib.ALGORITHMS, "Flow algorithm (OpenCV): dis "
         "(fast), farneback, or tvl1 (opencv-contrib-python-headless).")
  define("float", "flow_bound", flow_lib.DEFAULT_BOUND, "Flow is clipped to "
         "[-bound, bound] pixels and stored as 0..255.")
  define("integer", "flow_length", flow_lib.DEFAULT_LENGTH, "Flows stacked per "
         "network input (2L channels: x1, y1, ..., xL, yL).")
  define("bool", "dry_run", False, "Print the size estimate only.")


def _pinned(weights: str) -> str:
  """The weights as the record keeps them (vgg16.pin_weights): a file as an
  absolute path, a checkpoint as an absolute directory at a fixed step, so the
  record names exactly the weights the features were made with, and frames mode
  finds them from any working directory."""
  from grurcn_jax.models import vgg16  # deferred: jax and flax only past the flags
  pinned = vgg16.pin_weights(weights)
  if vgg16.is_weights_file(pinned) and not files.exists(pinned):
    # Now, not after the size estimate has opened every video (nor never, with
    # --dry_run).
    raise ConfigError(f"--weights={weights}: no such VGG-16 weights file ({pinned})")
  return pinned


def settings_from_flags(values: flags.FlagValues = FLAGS) -> Settings:
  """Settings from the flags; an unknown --levels name is a ConfigError."""
  if values.frames_jpeg_quality and not values.store_frames:
    raise ConfigError("--frames_jpeg_quality sets how --store_frames stores the "
                      "frames: give --store_frames too")
  if not 0 <= values.frames_jpeg_quality <= 100:
    raise ConfigError(f"--frames_jpeg_quality={values.frames_jpeg_quality}: give 1-100 "
                      f"(0: raw frames)")
  for flag, minimum in (("frame_stride", 1), ("max_frames", 1), ("videos_per_shard", 1),
                        ("batch_size", 1), ("min_word_count", 1)):
    value = values[flag].value
    if value is not None and value < minimum:
      raise ConfigError(f"--{flag}={value}: give {minimum} or more")
  if values.fps is not None and not values.fps > 0:
    raise ConfigError(f"--fps={values.fps}: give a rate above 0 frames a second")
  if not values.levels:
    raise ConfigError(f"--levels is empty: give one or more of "
                      f"{', '.join(levels_lib.LEVELS)}")
  for level in values.levels:
    if level not in levels_lib.LEVELS:
      raise ConfigError(f"--levels: unknown level {level!r}; valid: "
                        f"{', '.join(levels_lib.LEVELS)}")
  for level in values.int8_levels:
    if level not in values.levels:
      raise ConfigError(f"--int8_levels: {level!r} is not in --levels "
                        f"({', '.join(values.levels)})")
  if values.source == "flow_frames" and values.modality != "flow":
    raise ConfigError("--source=flow_frames imports flow: give --modality=flow")
  if values.modality == "flow":
    flow_lib.check(values.flow, values.flow_bound, values.flow_length)
    if values.fps:
      raise ConfigError("--fps with --modality=flow: flow windows are selected by "
                        "--frame_stride over the flow steps")
    if values.source == "flow_frames" and values.augment:
      raise ConfigError("--augment crops decoded frames; imported flow frames are "
                        "used as they are")
  return Settings(levels=tuple(values.levels), image_size=values.image_size,
                  frame_stride=None if values.fps else values.frame_stride, fps=values.fps,
                  max_frames=values.max_frames, weights=_pinned(values.weights),
                  seed=values.seed,
                  augment=values.augment, videos_per_shard=values.videos_per_shard,
                  int8_levels=tuple(values.int8_levels), store_frames=values.store_frames,
                  frames_jpeg_quality=values.frames_jpeg_quality,
                  batch_size=values.batch_size, modality=values.modality,
                  flow=values.flow, flow_bound=values.flow_bound,
                  flow_length=values.flow_length,
                  split=(values.split if values.source in ("ucf101", "flow_frames")
                         else None))


def _check_required_flags(values: flags.FlagValues = FLAGS) -> None:
  # Which flags are required depends on --source, so absl's
  # mark_flag_as_required cannot say it. One line each: as absl's usage errors,
  # they came after a hundred lines of help.
  if not values.out:
    raise ConfigError("--out is required (pass --help for the flags)")
  if values.source != "tfds" and not values.videos:
    raise ConfigError(f"--videos is required with --source={values.source}")
  if values.source in ("ucf101", "flow_frames") and not values.splits:
    raise ConfigError(f"--splits is required with --source={values.source}")
  if values.source == "msvd" and not (values.captions and values.mapping):
    raise ConfigError("--captions and --mapping are required with --source=msvd")


def run(values: flags.FlagValues = FLAGS) -> Summary:
  """The extraction the flags ask for; user errors raise grurcn_jax.errors.Error."""
  settings = settings_from_flags(values)
  references = None
  if values.source == "tfds":
    class_names, videos = tfds_videos(values.tfds_name, values.tfds_data_dir, settings)
  else:
    if values.source == "msvd":
      class_names, (entries, references) = [], msvd.msvd_entries(
          values.videos, values.captions, values.mapping, _split_sizes(values))
    elif values.source in ("ucf101", "flow_frames"):
      class_names, entries = ucf101.ucf101_entries(values.videos, values.splits, values.split)
      if not entries:
        raise SplitFileError(f"the split files in {values.splits} list no videos for "
                             f"--split={values.split}")
      if values.source == "ucf101" and not any(os.path.exists(e.path) for e in entries):
        raise SplitFileError(
            f"none of the {len(entries)} videos the split files list is under "
            f"--videos={values.videos} (the first: {entries[0].path}): --videos is "
            f"the folder that holds UCF-101's class folders")
    else:
      class_names, entries = ucf101.folder_entries(values.videos)
    videos = (flow_frames_videos(entries, settings) if values.source == "flow_frames"
              else _file_videos(entries, settings))
  summary = extract(videos, class_names, values.out, settings, source=values.source,
                    dry_run=values.dry_run)
  if summary.failed and not summary.written_videos and not summary.skipped_shards:
    raise VideoDecodeError("no video could be decoded")
  if references is not None and not values.dry_run:
    # After the features: its presence says the directory is complete.
    vocabulary = captions_lib.write_captions(
        values.out, references, [v.video_id for v in videos if v.split == "train"],
        values.min_word_count)
    print(f"Wrote the references of {len(references)} clips and a vocabulary of "
          f"{vocabulary.size} words (min count {values.min_word_count}) to "
          f"{features_lib.join(values.out, captions_lib.CAPTIONS_FILE)}")
  return summary


def _split_sizes(values: flags.FlagValues) -> Tuple[int, ...]:
  if not all(n.strip().isdigit() for n in values.msvd_split):
    raise ConfigError(f"--msvd_split={','.join(values.msvd_split)}: give three clip "
                      f"counts, train,val,test")
  return tuple(int(n) for n in values.msvd_split)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    _check_required_flags()
    run()
  except errors.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print("\nerror: interrupted (Ctrl-C); the shards already written are kept: run "
          "the same command again to go on", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=flag_parsing.parse)
