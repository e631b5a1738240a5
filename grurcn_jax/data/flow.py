"""Optical flow for the paper's second stream: computed with OpenCV, stored as the
two-stream literature stores it, stacked into the flow network's input.

- Algorithms (`ALGORITHMS`): `dis` (OpenCV's DIS, medium preset), `farneback`, and
  `tvl1` (TV-L1, the two-stream standard; `cv2.optflow`, OpenCV's contrib build).
  One 320x240 pair on one core of an AMD EPYC (OpenCV 5.0): DIS 13 ms, Farneback
  22 ms, TV-L1 620 ms. `opencv-python-headless` has the first two,
  `opencv-contrib-python-headless` all three (install one of them, not both).
- Quantisation: each component clipped to [-bound, bound] pixels and mapped
  linearly to 0..255 (`quantize`), bound 20 by default: what TSN's and the
  two-stream papers' flow JPEGs hold, so flow made elsewhere imports as it is
  (`read_flow_frames`: `flow_x_%05d.jpg` / `flow_y_%05d.jpg`, numbered from 1).
- Stacking (`stack_windows`): the network sees L consecutive flows at once, 2L
  channels ordered x1, y1, ..., xL, yL; a video of n flows gives one window per
  flow, windows past the end repeating its last flow.
"""

import os
import re
from typing import Optional

import numpy as np

from grurcn_jax.errors import ConfigError, VideoDecodeError

ALGORITHMS = ("dis", "farneback", "tvl1")
DEFAULT_BOUND = 20.0
DEFAULT_LENGTH = 10


def _cv2():
  try:
    import cv2
  except ImportError:
    raise ConfigError("optical flow needs OpenCV: pip install opencv-python-headless "
                      "(dis, farneback) or opencv-contrib-python-headless (also tvl1)"
                      ) from None
  return cv2


def available(algorithm: str) -> bool:
  """Whether `algorithm` can run here (OpenCV installed, and for tvl1 its
  contrib build)."""
  try:
    cv2 = _cv2()
  except ConfigError:
    return False
  return algorithm != "tvl1" or hasattr(cv2, "optflow")


def _estimator(algorithm: str):
  """A function (previous, next) gray uint8 [H, W] -> flow [H, W, 2] float32."""
  if algorithm not in ALGORITHMS:
    raise ConfigError(f"--flow={algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
  cv2 = _cv2()
  if algorithm == "dis":
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return lambda a, b: dis.calc(a, b, None)
  if algorithm == "farneback":
    return lambda a, b: cv2.calcOpticalFlowFarneback(
        a, b, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5,
        poly_sigma=1.2, flags=0)
  if not hasattr(cv2, "optflow"):
    raise ConfigError("--flow=tvl1 needs OpenCV's contrib build (cv2.optflow): pip "
                      "uninstall opencv-python-headless; pip install "
                      "opencv-contrib-python-headless")
  tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
  return lambda a, b: tvl1.calc(a, b, None)


def to_gray(frames: np.ndarray) -> np.ndarray:
  """[N, H, W, 3] RGB uint8 -> [N, H, W] uint8 luma (ITU-R 601, as OpenCV's)."""
  luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.clip(np.round(luma), 0, 255).astype(np.uint8)


def video_flow(frames: np.ndarray, algorithm: str,
               steps: Optional[np.ndarray] = None) -> np.ndarray:
  """Flow between consecutive frames: [N, H, W, 3] RGB uint8 -> [N-1, H, W, 2]
  float32 pixels (x: rightwards, y: downwards) from frame t to frame t+1; with
  `steps`, only those flows t ([len(steps), H, W, 2]: TV-L1 took 1.2 s a flow at
  224 px on a 2-core Intel Xeon, so the ones no window uses are not computed)."""
  if len(frames) < 2:
    raise VideoDecodeError(f"optical flow needs at least 2 frames; the video has "
                           f"{len(frames)}")
  estimate = _estimator(algorithm)
  steps = np.arange(len(frames) - 1) if steps is None else np.asarray(steps)
  gray = {}

  def gray_frame(t):
    if t not in gray:
      gray[t] = to_gray(frames[t:t + 1])[0]
    return gray[t]
  return np.stack([estimate(gray_frame(t), gray_frame(t + 1)) for t in steps]
                  ).astype(np.float32)


def quantize(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
  """Flow in pixels -> uint8: clipped to [-bound, bound], 0..255 linearly."""
  scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))
  return np.round(scaled).astype(np.uint8)


def dequantize(stored: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
  """uint8 -> flow in pixels (within bound / 255 of what was quantised)."""
  return stored.astype(np.float32) * (2 * bound / 255.0) - bound


def stack_windows(flows: np.ndarray, length: int,
                  starts: Optional[np.ndarray] = None) -> np.ndarray:
  """[n, H, W, 2] -> [len(starts), H, W, 2 * length]: window t holds flows t ..
  t+length-1, channels x_t, y_t, x_{t+1}, y_{t+1}, ...; past the video's end its
  last flow repeats (wrapping to the start would splice the video's first motion
  onto its last). `starts` (default: every flow) chooses the windows, built alone:
  a long video's unused windows are never stacked."""
  n = len(flows)
  starts = np.arange(n) if starts is None else np.asarray(starts)
  return stack_computed(flows, np.arange(n), n, length, starts)


def window_steps(num_flows: int, length: int, starts: np.ndarray) -> np.ndarray:
  """[k, length] flow indices of the windows starting at `starts` (past the end,
  the last flow)."""
  return np.minimum(np.asarray(starts)[:, None] + np.arange(length)[None, :],
                    num_flows - 1)


class Windows:
  """`stack_computed`'s windows, each stacked when a slice of them is read: a
  video's windows at once are L times its flows (1.8 GB for a UCF-101 video of
  1,776 frames at 224 px, L=10, a window at every step); a batch of them is what
  VGG-16 reads at a time. `np.asarray(windows)` stacks them all."""

  def __init__(self, flows: np.ndarray, steps: np.ndarray, num_flows: int,
               length: int, starts: np.ndarray):
    self._flows, self._steps, self._num_flows, self._length = (
        flows, steps, num_flows, length)
    self._starts = np.asarray(starts)
    self.shape = (len(self._starts), *flows.shape[1:3], 2 * length)
    self.dtype = flows.dtype

  def __len__(self) -> int:
    return len(self._starts)

  def __getitem__(self, index) -> np.ndarray:
    """The windows at `index` (a slice or index array) as one array; one window
    at an integer."""
    starts = self._starts[index]
    windows = stack_computed(self._flows, self._steps, self._num_flows, self._length,
                             np.atleast_1d(starts))
    return windows[0] if np.ndim(starts) == 0 else windows

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    whole = self[:]
    return whole if dtype is None else whole.astype(dtype)


def stack_computed(flows: np.ndarray, steps: np.ndarray, num_flows: int, length: int,
                   starts: np.ndarray) -> np.ndarray:
  """`stack_windows` of a video of `num_flows` flows of which only `steps` (sorted)
  were computed, `flows` holding them in that order; every window's flows must be
  among them (`window_steps`)."""
  rows = np.searchsorted(steps, window_steps(num_flows, length, starts))   # [k, L]
  windows = flows[rows]                                                  # [k, L, H, W, 2]
  return np.ascontiguousarray(np.moveaxis(windows, 1, 3).reshape(
      len(starts), *flows.shape[1:3], 2 * length))


_FLOW_FILE = re.compile(r"flow_([xy])_(\d+)\.jpg$")


def read_flow_frames(directory: str) -> np.ndarray:
  """A TSN-layout folder (`flow_x_00001.jpg`, `flow_y_00001.jpg`, ...) -> [n, H, W, 2]
  uint8, as stored (quantised)."""
  from PIL import Image
  if not os.path.isdir(directory):
    raise VideoDecodeError(f"{directory}: no such flow folder")
  found = {}
  for name in os.listdir(directory):
    match = _FLOW_FILE.match(name)
    if match:
      found[(match.group(1), int(match.group(2)))] = name
  numbers = sorted(n for axis, n in found if axis == "x")
  if not numbers:
    raise VideoDecodeError(f"{directory}: no flow_x_NNNNN.jpg files")
  if numbers != list(range(1, len(numbers) + 1)) or any(
      ("y", n) not in found for n in numbers):
    raise VideoDecodeError(f"{directory}: flow_x/flow_y files must be numbered 1..n "
                           f"in pairs (found x {numbers[0]}..{numbers[-1]}, "
                           f"{sum(a == 'y' for a, _ in found)} y)")
  def read(axis, n):
    with Image.open(os.path.join(directory, found[(axis, n)])) as image:
      return np.asarray(image.convert("L"))
  return np.stack([np.stack([read("x", n), read("y", n)], axis=-1) for n in numbers])


def flow_settings_record(algorithm: str, bound: float, length: int) -> dict:
  return {"modality": "flow", "flow": algorithm, "flow_bound": float(bound),
          "flow_length": int(length)}


def check(algorithm: str, bound: float, length: int) -> None:
  """Raises a ConfigError (one clear line) for a bad flow setting."""
  if algorithm not in ALGORITHMS:
    raise ConfigError(f"--flow={algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
  if not bound > 0:
    raise ConfigError(f"--flow_bound={bound}: give a positive number of pixels")
  if length < 1:
    raise ConfigError(f"--flow_length={length}: give 1 or more flows per window")
