"""The captioning demo: synthetic videos whose captions name two motions in order.

A shape moves on a noisy background in two phases of equal length, one motion
each, of two different kinds (a shift, a change of size, a turn):

    "a red square moves left and then grows"

The colour and the shape can be read from any frame; the motions and their order
only from time. Played backwards, a video is a video of the reversed motions in the
reversed order ("a red square shrinks and then moves right"), drawn from the same
distribution: a video and its reversal have the same frames, so an encoder that
ignores frame order cannot tell their captions' motion words apart.
"""

import dataclasses
import re
from typing import Dict, List, Tuple

import numpy as np

from grurcn_jax.data import demo

# The demo's eight motions, as caption phrases.
PHRASES = {"right": "moves right", "left": "moves left", "down": "moves down",
           "up": "moves up", "grow": "grows", "shrink": "shrinks",
           "clockwise": "turns clockwise", "anticlockwise": "turns anticlockwise"}
MOTIONS = demo.CLASS_NAMES            # twins: index ^ 1
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230),
          "yellow": (235, 220, 40), "white": (245, 245, 245), "black": (15, 15, 15)}

# A turn sweeps half a circle per phase, as in the classification demo: with a
# quarter, turn directions over 4 frames were most of a trained model's errors.
_SHIFT, _GROWTH, _SWEEP, _ORBIT, _NOISE = 0.3, 0.5, np.pi, 0.18, 8.0


@dataclasses.dataclass(frozen=True)
class CaptionedVideo:
  """Everything that determines one video's frames and its caption."""
  motions: Tuple[int, int]         # indices into MOTIONS, in order
  color: str
  shape: str
  start: Tuple[float, float]       # (y, x) of the object at the first frame
  size: float
  angle: float
  noise_seeds: Tuple[int, ...]     # one per frame; 2 phases of len/2 frames
  image_size: int

  @property
  def caption(self) -> str:
    first, second = (PHRASES[MOTIONS[m]] for m in self.motions)
    return f"a {self.color} {self.shape} {first} and then {second}"


def motion_phrases(caption: str) -> Tuple[str, ...]:
  """The motion phrases of a caption, in the order they appear in it."""
  words = " ".join(caption.lower().split())
  found = []
  for phrase in PHRASES.values():
    for match in re.finditer(rf"\b{phrase}\b", words):
      found.append((match.start(), phrase))
  return tuple(phrase for _, phrase in sorted(found))


def motion_accuracy(generated: Dict[str, str], references: Dict[str, List[str]]) -> float:
  """The share of videos whose generated caption names the reference's motions,
  in the reference's order, and no others: what only time can tell."""
  right = [motion_phrases(generated[v]) == motion_phrases(references[v][0])
           for v in generated]
  return float(np.mean(right)) if right else 0.0


def reversed_video(video: CaptionedVideo) -> CaptionedVideo:
  """The video whose frames are `video`'s in reverse order."""
  states = _states(video)
  y, x, size, angle = states[-1]
  return dataclasses.replace(
      video, motions=(video.motions[1] ^ 1, video.motions[0] ^ 1), start=(y, x),
      size=size, angle=angle, noise_seeds=tuple(reversed(video.noise_seeds)))


def _states(video: CaptionedVideo) -> List[Tuple[float, float, float, float]]:
  """(y, x, size, orbit angle) at every frame; each phase moves for len/2 - 1
  steps, and the second starts where the first ended."""
  s = video.image_size
  y, x = video.start
  size, angle = video.size, video.angle
  phase = len(video.noise_seeds) // 2
  states = []
  for m in video.motions:
    kind, sign = m // 2, (1.0 if m % 2 == 0 else -1.0)
    for t in range(phase):
      states.append((y, x, size, angle))
      if t == phase - 1:
        break
      step = 1.0 / (phase - 1)
      if kind == 0:
        x += sign * _SHIFT * s * step
      elif kind == 1:
        y += sign * _SHIFT * s * step
      elif kind == 2:
        size *= (1 + _GROWTH) ** (sign * step)
      else:  # the centre orbits a point _ORBIT * s away, clockwise on screen
        cy, cx = y - _ORBIT * s * np.sin(angle), x - _ORBIT * s * np.cos(angle)
        angle += sign * _SWEEP * step
        y, x = cy + _ORBIT * s * np.sin(angle), cx + _ORBIT * s * np.cos(angle)
  return states


def render(video: CaptionedVideo) -> np.ndarray:
  """Frames [T, S, S, 3] uint8 RGB."""
  s = video.image_size
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
  color = np.float32(COLORS[video.color])
  frames = np.empty((len(video.noise_seeds), s, s, 3), np.uint8)
  for t, (y, x, size, _) in enumerate(_states(video)):
    dy, dx = np.abs(yy - y), np.abs(xx - x)
    if video.shape == "square":
      inside = np.maximum(dy, dx) <= size
    elif video.shape == "disc":
      inside = dy ** 2 + dx ** 2 <= size ** 2
    else:
      inside = dy + dx <= size * 1.3
    image = np.where(inside[..., None], color, np.float32(128))
    noise = np.random.default_rng(video.noise_seeds[t]).normal(0, _NOISE, image.shape)
    frames[t] = np.clip(np.round(image + noise), 0, 255).astype(np.uint8)
  return frames


def sample(rng: np.random.Generator, num_frames: int, image_size: int) -> CaptionedVideo:
  """A video with two motions of different kinds, every draw independent of the
  motions' direction, placed so that the object stays inside the frame."""
  if num_frames % 2 or num_frames < 4:
    raise ValueError(f"a captioned demo video has two phases of >= 2 frames: "
                     f"num_frames={num_frames}")
  first = int(rng.integers(len(MOTIONS)))
  second = int(rng.choice([m for m in range(len(MOTIONS)) if m // 2 != first // 2]))
  video = CaptionedVideo(
      motions=(first, second), color=str(rng.choice(list(COLORS))),
      shape=str(rng.choice(demo.SHAPES)), start=(0.0, 0.0),
      size=float(rng.uniform(0.08, 0.11) * image_size),
      angle=float(rng.uniform(0, 2 * np.pi)),
      noise_seeds=tuple(int(x) for x in rng.integers(0, 2 ** 31, num_frames)),
      image_size=image_size)
  states = np.array(_states(video))
  reach = states[:, 2].max() * 1.3 + 1      # the diamond's half diagonal
  low = reach - states[:, :2].min(axis=0)
  high = image_size - reach - states[:, :2].max(axis=0)
  start = rng.uniform(low, np.maximum(high, low))
  return dataclasses.replace(video, start=(float(start[0]), float(start[1])))


def demo_videos(seed: int, num_train: int, num_test: int, num_frames: int,
                image_size: int) -> Tuple[List, Dict[str, List[str]]]:
  """(extract.Video items, video id -> [caption]) of the whole captioned set; the
  label of each video is its first motion."""
  from grurcn_jax.data import extract
  videos, references = [], {}
  for split, count in (("train", num_train), ("test", num_test)):
    rng = np.random.default_rng([seed, demo.SPLITS[split]])
    for i in range(count):
      video = sample(rng, num_frames, image_size)
      video_id = f"{split}_{i:05d}"
      references[video_id] = [video.caption]
      videos.append(extract.Video(
          video_id, video.motions[0], split,
          load=lambda v=video: (render(v), np.arange(len(v.noise_seeds))),
          estimate_frames=lambda v=video: len(v.noise_seeds)))
  return videos, references


@dataclasses.dataclass(frozen=True)
class CaptionDemoSpec:
  """The captioned demo set's size."""
  seed: int = 0
  num_train: int = 384
  num_test: int = 96
  num_frames: int = 8
  image_size: int = 48
  levels: Tuple[str, ...] = ("pool2", "pool3", "pool4")
  videos_per_shard: int = 16


def build(directory: str, spec: CaptionDemoSpec = CaptionDemoSpec(),
          progress: bool = True) -> None:
  """Extracts the captioned demo videos (random VGG-16, as the classification
  demo) and writes their captions beside the features; a complete directory is
  left as it is."""
  from grurcn_jax.data import captions, features
  if features.exists(features.join(directory, captions.CAPTIONS_FILE)):
    return
  videos, references = demo_videos(spec.seed, spec.num_train, spec.num_test,
                                   spec.num_frames, spec.image_size)
  demo.extract_rendered(directory, videos, list(MOTIONS), spec,
                        source="demo_captions", progress=progress)
  # Written last: its presence means the directory is complete.
  captions.write_captions(directory, references,
                          [v.video_id for v in videos if v.split == "train"])
