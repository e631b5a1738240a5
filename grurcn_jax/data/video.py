"""Video decoding (PyAV), frame selection and VGG-16 frame preprocessing."""

import math
from typing import Optional, Tuple

from absl import logging
import av
import numpy as np

from grurcn_jax.errors import VideoDecodeError

# The paper (Ballas et al., ICLR 2016) trains on random crops of side 256, 224, 192
# or 168 of a 256 frame, resized to 224; as fractions of the resized frame here so
# any image_size works.
CROP_FRACTIONS = (256 / 256, 224 / 256, 192 / 256, 168 / 256)

# Frames resized at a time (each on its own: the result does not depend on it).
RESIZE_CHUNK = 32

# Which frames decoding gives, recorded with each extraction. 2: a video with
# rotation metadata decodes upright, and --fps takes one frame per 1/fps slot
# (1, unrecorded: neither).
DECODER_VERSION = 2


class FrameSelection:
  """Which decoded frames to keep: every `frame_stride`-th, or with `fps` the first
  frame of each 1/fps slot of time, at most one per slot (after a gap in the
  timestamps the slots it skipped stay empty: counting frames taken instead took a
  burst of adjacent frames until the count caught up)."""

  def __init__(self, *, frame_stride: Optional[int], fps: Optional[float]):
    self._stride, self._fps, self._next_slot = frame_stride or 1, fps, 0

  def take(self, index: int, time_s: float) -> bool:
    """`time_s`: seconds since the first decoded frame."""
    if not self._fps:
      return index % self._stride == 0
    slot = math.floor(time_s * self._fps + 1e-6)
    if slot < self._next_slot:
      return False
    self._next_slot = slot + 1
    return True


def upright(image: np.ndarray, rotation: float) -> np.ndarray:
  """`image` turned as its display matrix says (`rotation`: degrees counter-
  clockwise, PyAV's `frame.rotation`), as players show it: phone videos are
  stored sideways with a rotation tag."""
  turns = int(round(rotation / 90)) % 4
  return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


# The errors a broken file raises while it is read.
_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, IndexError)


def decode(path: str, *, frame_stride: Optional[int] = 1, fps: Optional[float] = None,
           max_frames: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Decoded, selected frames [N, H, W, 3] uint8 RGB, upright, and their source
  indices [N]. A video whose data breaks off keeps the frames decoded before the
  break (with a warning); one with none is a VideoDecodeError."""
  frames, indices = [], []
  start_s, decoded = None, 0
  selection = FrameSelection(frame_stride=frame_stride, fps=fps)
  try:
    with av.open(path) as container:
      stream = _video_stream(container)
      if stream is None:
        raise VideoDecodeError(f"{path}: no video stream")
      try:
        for index, frame in enumerate(container.decode(stream)):
          decoded = index + 1
          time_s = float(frame.time) if frame.time is not None else index / float(
              stream.average_rate or 25)
          # Time since the first frame: a stream may start at any time (--fps on
          # absolute times kept every frame of one starting at 2 s, up to 2 s worth).
          start_s = time_s if start_s is None else start_s
          if selection.take(index, time_s - start_s):
            frames.append(upright(frame.to_ndarray(format="rgb24"), frame.rotation or 0))
            indices.append(index)
            if frames[-1].shape != frames[0].shape:   # streams joined end to end
              raise VideoDecodeError(
                  f"{path}: the frame size changes at frame {index}, from "
                  f"{_size(frames[0])} to {_size(frames[-1])}")
            if max_frames and len(frames) >= max_frames:
              break
      except _DECODE_ERRORS as e:
        if not frames:
          raise
        logging.warning("%s: decoding broke off after %d frames (%s); the %d selected "
                        "among them are kept", path, decoded, e, len(frames))
  except _DECODE_ERRORS as e:
    raise VideoDecodeError(f"{path}: {e}") from None
  if not frames:
    raise VideoDecodeError(f"{path}: no video frames")
  return np.stack(frames), np.array(indices, np.int64)


def _size(frame: np.ndarray) -> str:
  return f"{frame.shape[1]}x{frame.shape[0]}"


def _video_stream(container):
  """The container's video, not a cover picture (an mp4, mkv or mov may carry one
  as a first, one-frame video stream)."""
  streams = [s for s in container.streams.video
             if not s.disposition & av.stream.Disposition.attached_pic]
  return streams[0] if streams else None


def estimate_frames(path: str, *, frame_stride: Optional[int] = 1,
                    fps: Optional[float] = None, max_frames: Optional[int] = None) -> int:
  """Selected-frame count from container metadata (no decoding); 0 if unreadable."""
  try:
    with av.open(path) as container:
      stream = _video_stream(container)
      if stream is None:
        return 0
      rate = float(stream.average_rate or 25)
      total = stream.frames
      if not total and stream.duration and stream.time_base:
        total = int(round(float(stream.duration * stream.time_base) * rate))
      if not total and container.duration:
        total = int(round(container.duration / 1e6 * rate))
  except _DECODE_ERRORS:
    return 0
  # Frames are never repeated: --fps above the video's rate keeps every frame.
  selected = (math.ceil(total * min(fps, rate) / rate) if fps else
              math.ceil(total / (frame_stride or 1)))
  return min(selected, max_frames) if max_frames else selected


def resize_and_crop(frames: np.ndarray, image_size: int,
                    crop: Optional[Tuple[float, float, float]] = None) -> np.ndarray:
  """VGG-style frames: shorter side resized to image_size * 256/224, then a square
  crop resized to image_size. `crop` = (fraction of the short side, y, x in [0, 1])
  for training-time crops; None is the centre crop of side image_size."""
  if len(frames) > RESIZE_CHUNK:
    # TensorFlow resizes in float32 with temporaries: a whole long video at once
    # held about 18x its uint8 frames (7 GB for UCF-101's longest).
    return np.concatenate([resize_and_crop(frames[i:i + RESIZE_CHUNK], image_size, crop)
                           for i in range(0, len(frames), RESIZE_CHUNK)])
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
