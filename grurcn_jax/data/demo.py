"""The demo dataset: synthetic videos whose classes exist only in time.

A shape moves on a noisy background. Classes come in time-reversed twins:

    right / left, down / up, grow / shrink, clockwise / anticlockwise

Every motion is symmetric about the middle of the clip (the object's state at frame
t is `middle + (t / (T - 1) - 1/2) * extent * direction`, with the middle drawn
uniformly), so a video of one class played backwards is exactly a video of its twin
with the same appearance parameters, and every single frame is equally likely under
both twins. A model that averages per-frame predictions cannot beat chance within a
pair; a temporal model can separate all eight classes.

Videos are rendered deterministically from a seed and go through the same
extraction path as real videos (VGG-16, random weights, small frames) into the same
feature format.
"""

import dataclasses
import json
from typing import Dict, List, Sequence

import numpy as np

CLASS_NAMES = ("right", "left", "down", "up", "grow", "shrink", "clockwise",
               "anticlockwise")
SHAPES = ("square", "disc", "diamond")
SPLITS = {"train": 0, "test": 1}


def twin(label: int) -> int:
  """The class whose videos are this class's videos reversed in time."""
  return label ^ 1


@dataclasses.dataclass(frozen=True)
class VideoParams:
  """Everything that determines one video's frames."""
  label: int
  shape: str
  color: tuple            # RGB of the object
  background: tuple       # RGB of the background
  middle: tuple           # (y, x) of the object at mid-clip, in pixels
  size: float             # half-side / radius at mid-clip, in pixels
  angle: float            # mid-clip orbit angle (rotation classes), radians
  noise_seeds: tuple      # one seed per frame
  image_size: int


# Motion extents over the whole clip.
_SHIFT = 0.45       # fraction of the frame
_GROWTH = 0.6       # the size changes by 60 % of its middle value over the clip
_SWEEP = np.pi      # half a turn
_ORBIT = 0.22       # orbit radius, fraction of the frame
_NOISE = 8.0


def sample_params(rng: np.random.Generator, label: int, num_frames: int,
                  image_size: int) -> VideoParams:
  """Draws a video of class `label`. The draws do not depend on the direction, so a
  class and its twin share one distribution of appearance and middle state."""
  s = image_size
  size = rng.uniform(0.12, 0.17) * s
  margin = size * (1 + _GROWTH / 2) + 1
  kind = label // 2  # 0 horizontal, 1 vertical, 2 scale, 3 rotation
  reach_y = _SHIFT * s / 2 if kind == 1 else 0.0
  reach_x = _SHIFT * s / 2 if kind == 0 else 0.0
  if kind == 3:
    reach_y = reach_x = _ORBIT * s
  middle = (rng.uniform(margin + reach_y, s - margin - reach_y),
            rng.uniform(margin + reach_x, s - margin - reach_x))
  # A bright object on a dark background or the reverse: it must stand out.
  light = rng.uniform() < 0.5
  color = rng.integers(170, 256, size=3) if light else rng.integers(0, 86, size=3)
  background = np.full(3, rng.integers(100, 156))
  return VideoParams(
      label=label, shape=SHAPES[rng.integers(len(SHAPES))],
      color=tuple(int(c) for c in color), background=tuple(int(c) for c in background),
      middle=tuple(float(m) for m in middle), size=float(size),
      angle=float(rng.uniform(0, 2 * np.pi)),
      noise_seeds=tuple(int(x) for x in rng.integers(0, 2**31, size=num_frames)),
      image_size=image_size)


def reversed_params(params: VideoParams) -> VideoParams:
  """The twin-class parameters whose video is `params`' video reversed in time."""
  return dataclasses.replace(params, label=twin(params.label),
                             noise_seeds=tuple(reversed(params.noise_seeds)))


def _state(params: VideoParams, t: int, num_frames: int):
  """Object centre (y, x) and size at frame t."""
  phase = t / max(num_frames - 1, 1) - 0.5          # -1/2 .. 1/2, symmetric
  direction = 1.0 if params.label % 2 == 0 else -1.0
  kind = params.label // 2
  s = params.image_size
  y, x = params.middle
  size = params.size
  if kind == 0:
    x += phase * direction * _SHIFT * s
  elif kind == 1:
    y += phase * direction * _SHIFT * s
  elif kind == 2:
    size *= 1 + phase * direction * _GROWTH
  else:  # clockwise on screen: the angle grows with y pointing down
    angle = params.angle + phase * direction * _SWEEP
    y, x = y + _ORBIT * s * np.sin(angle), x + _ORBIT * s * np.cos(angle)
  return y, x, size


def render(params: VideoParams) -> np.ndarray:
  """Frames [T, S, S, 3] uint8 RGB."""
  s = params.image_size
  num_frames = len(params.noise_seeds)
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
  frames = np.empty((num_frames, s, s, 3), np.uint8)
  for t in range(num_frames):
    y, x, size = _state(params, t, num_frames)
    dy, dx = np.abs(yy - y), np.abs(xx - x)
    if params.shape == "square":
      inside = np.maximum(dy, dx) <= size
    elif params.shape == "disc":
      inside = dy ** 2 + dx ** 2 <= size ** 2
    else:
      inside = dy + dx <= size * 1.3
    image = np.where(inside[..., None], np.float32(params.color),
                     np.float32(params.background))
    noise = np.random.default_rng(params.noise_seeds[t]).normal(0, _NOISE, image.shape)
    frames[t] = np.clip(np.round(image + noise), 0, 255).astype(np.uint8)
  return frames


def video_params(seed: int, split: str, videos_per_class: int, num_frames: int,
                 image_size: int) -> List[VideoParams]:
  """All videos of a split, class by class, deterministic in (seed, split)."""
  out = []
  for label in range(len(CLASS_NAMES)):
    rng = np.random.default_rng([seed, SPLITS[split], label // 2])
    # A pair's two classes take alternate draws from one stream: twins share one
    # distribution, but no video is another's exact reversal.
    draws = [sample_params(rng, label, num_frames, image_size)
             for _ in range(2 * videos_per_class)]
    out.extend(draws[label % 2::2])
  return out


def demo_videos(seed: int, train_per_class: int, test_per_class: int, num_frames: int,
                image_size: int):
  """(class names, extract.Video items) of the whole demo dataset."""
  from grurcn_jax.data import extract
  videos = []
  for split, per_class in (("train", train_per_class), ("test", test_per_class)):
    for i, params in enumerate(video_params(seed, split, per_class, num_frames,
                                            image_size)):
      video_id = f"{CLASS_NAMES[params.label]}/{split}_{i:05d}"
      videos.append(extract.Video(
          video_id, params.label, split,
          load=lambda p=params: (render(p), np.arange(len(p.noise_seeds))),
          estimate_frames=lambda p=params: len(p.noise_seeds)))
  return list(CLASS_NAMES), videos


@dataclasses.dataclass(frozen=True)
class DemoSpec:
  """The demo dataset's size; configs/demo.py sets these from `config.data`."""
  seed: int = 0
  train_per_class: int = 48
  test_per_class: int = 12
  num_frames: int = 8
  image_size: int = 48
  # pool2's 12x12 map carries most of the motion at this frame size.
  levels: Sequence[str] = ("pool2", "pool3", "pool4")
  videos_per_shard: int = 16
  # The frames too (uint8, 7 KB each at 48 px): frames mode trains on them.
  store_frames: bool = True
  # rgb, or flow (configs/demo_flow.py): VGG-16 on windows of flow_length stacked
  # flows between consecutive frames (data/flow.py), 7 windows per 8-frame video.
  modality: str = "rgb"
  flow: str = "dis"
  flow_length: int = 1


def build(directory: str, spec: DemoSpec = DemoSpec(), progress: bool = True) -> Dict:
  """Builds the demo features into `directory` unless they are already complete
  there; returns the metadata."""
  from grurcn_jax.data import features
  class_names, videos = demo_videos(spec.seed, spec.train_per_class,
                                    spec.test_per_class, spec.num_frames,
                                    spec.image_size)
  extract_rendered(directory, videos, class_names, spec, source="demo",
                   store_frames=spec.store_frames, progress=progress)
  return features.read_metadata(directory)


def extract_rendered(directory: str, videos, class_names: Sequence[str], spec, *,
                     source: str, store_frames: bool = False,
                     progress: bool = True) -> None:
  """Rendered videos through the extraction real videos go through: VGG-16 with
  random weights seeded by `spec.seed`, `spec.levels` at `spec.image_size`, every
  frame, resumable."""
  from grurcn_jax.data import extract
  settings = extract.Settings(levels=tuple(spec.levels), image_size=spec.image_size,
                              frame_stride=1, weights="random", seed=spec.seed,
                              videos_per_shard=spec.videos_per_shard,
                              store_frames=store_frames, batch_size=32,
                              modality=getattr(spec, "modality", "rgb"),
                              flow=getattr(spec, "flow", "dis"),
                              flow_length=getattr(spec, "flow_length", 1))
  extract.extract(videos, class_names, directory, settings, source=source,
                  progress=progress)
  record_spec(directory, spec)


def record_spec(directory: str, spec) -> None:
  """Writes `spec` into the directory's metadata (`demo`): a config asking for
  another demo is then told that this one differs, and how
  (`data.prepare.ensure_demo`)."""
  from grurcn_jax.data import features
  metadata = features.read_metadata(directory)
  if metadata.get("demo") != spec_record(spec):
    metadata["demo"] = spec_record(spec)
    features.write_metadata(directory, metadata)


def spec_record(spec) -> Dict:
  """A demo spec as its JSON record reads back (tuples as lists)."""
  return json.loads(json.dumps(dataclasses.asdict(spec)))
