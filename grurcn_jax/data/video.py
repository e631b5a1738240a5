"""Video decoding (PyAV), frame selection and VGG-16 frame preprocessing."""

import math
from typing import Optional, Tuple

import av
import numpy as np

from grurcn_jax.errors import VideoDecodeError

# The paper (Ballas et al., ICLR 2016) trains on random crops of side 256, 224, 192
# or 168 of a 256 frame, resized to 224; as fractions of the resized frame here so
# any image_size works.
CROP_FRACTIONS = (256 / 256, 224 / 256, 192 / 256, 168 / 256)


def select_frame(index: int, time_s: float, *, frame_stride: Optional[int],
                 fps: Optional[float], taken: int) -> bool:
  """Keep every `frame_stride`-th frame, or frames nearest a rate of `fps`
  (`time_s`: seconds since the first decoded frame)."""
  if fps:
    return time_s + 1e-6 >= taken / fps
  return index % (frame_stride or 1) == 0


def decode(path: str, *, frame_stride: Optional[int] = 1, fps: Optional[float] = None,
           max_frames: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Decoded, selected frames [N, H, W, 3] uint8 RGB and their source indices [N]."""
  frames, indices = [], []
  start_s = None
  try:
    with av.open(path) as container:
      stream = container.streams.video[0]
      for index, frame in enumerate(container.decode(stream)):
        time_s = float(frame.time) if frame.time is not None else index / float(
            stream.average_rate or 25)
        # Time since the first frame: a stream may start at any time (--fps on
        # absolute times kept every frame of one starting at 2 s, up to 2 s worth).
        start_s = time_s if start_s is None else start_s
        if select_frame(index, time_s - start_s, frame_stride=frame_stride, fps=fps,
                        taken=len(frames)):
          frames.append(frame.to_ndarray(format="rgb24"))
          indices.append(index)
          if max_frames and len(frames) >= max_frames:
            break
  except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
    raise VideoDecodeError(f"{path}: {e}") from None
  if not frames:
    raise VideoDecodeError(f"{path}: no video frames")
  return np.stack(frames), np.array(indices, np.int64)


def estimate_frames(path: str, *, frame_stride: Optional[int] = 1,
                    fps: Optional[float] = None, max_frames: Optional[int] = None) -> int:
  """Selected-frame count from container metadata (no decoding); 0 if unreadable."""
  try:
    with av.open(path) as container:
      stream = container.streams.video[0]
      rate = float(stream.average_rate or 25)
      total = stream.frames
      if not total and stream.duration and stream.time_base:
        total = int(round(float(stream.duration * stream.time_base) * rate))
      if not total and container.duration:
        total = int(round(container.duration / 1e6 * rate))
  except (av.error.FFmpegError, OSError, ValueError, IndexError):
    return 0
  selected = (math.ceil(total * fps / rate) if fps else
              math.ceil(total / (frame_stride or 1)))
  return min(selected, max_frames) if max_frames else selected


def resize_and_crop(frames: np.ndarray, image_size: int,
                    crop: Optional[Tuple[float, float, float]] = None) -> np.ndarray:
  """VGG-style frames: shorter side resized to image_size * 256/224, then a square
  crop resized to image_size. `crop` = (fraction of the short side, y, x in [0, 1])
  for training-time crops; None is the centre crop of side image_size."""
  # TensorFlow (seconds to import) only once frames are resized: the extraction
  # program checks its flags and the videos before that.
  from grurcn_jax.host_tf import tf
  h, w = frames.shape[1:3]
  short = round(image_size * 256 / 224)
  new_h, new_w = (short, max(short, round(w * short / h))) if h <= w else (
      max(short, round(h * short / w)), short)
  resized = tf.image.resize(frames, (new_h, new_w), antialias=True)
  side = image_size if crop is None else max(1, round(crop[0] * short))
  fy, fx = (0.5, 0.5) if crop is None else crop[1:]
  top, left = round((new_h - side) * fy), round((new_w - side) * fx)
  out = resized[:, top:top + side, left:left + side]
  if side != image_size:
    out = tf.image.resize(out, (image_size, image_size), antialias=True)
  return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)


def random_crop(rng: np.random.Generator) -> Tuple[float, float, float]:
  """One training crop per video (all frames alike): a side from CROP_FRACTIONS at a
  random position, the paper's multi-scale augmentation."""
  return (float(rng.choice(CROP_FRACTIONS)), float(rng.uniform()), float(rng.uniform()))
