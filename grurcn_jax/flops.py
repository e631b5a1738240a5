"""Analytic FLOPs of a training step (convolutions and classifiers; the elementwise
gate arithmetic is left out). A multiply-add counts 2; backward = 2x forward."""

from typing import Mapping, Sequence

import numpy as np

from grurcn_jax import levels as levels_lib


def _conv(positions: int, taps: int, c_in: int, c_out: int) -> int:
  return 2 * positions * taps * c_in * c_out


def forward_flops(model_cfg: Mapping, level_shapes: Mapping[str, Sequence[int]],
                  batch: int, clip_length: int) -> int:
  """Forward FLOPs of `batch` clips; `level_shapes` maps level -> per-frame shape."""
  frames = batch * clip_length
  k = model_cfg["num_classes"]
  total = 0
  lower = None
  for index, level in enumerate(model_cfg["levels"]):
    shape = tuple(level_shapes[level])
    c = shape[-1]
    positions = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    if model_cfg["name"] == "vgg_frames":
      total += frames * 2 * c * k
      continue
    f = model_cfg["hidden"][index]
    spatial = model_cfg["name"] == "grurcn" and not levels_lib.is_vector_level(level)
    if model_cfg["name"] == "vgg_rnn":
      positions = 1
    taps = model_cfg["kernel_size"] ** 2 if spatial else 1
    per_frame = _conv(positions, taps, c, 3 * f) + _conv(positions, taps, f, 3 * f)
    width = f
    if model_cfg["name"] == "grurcn" and model_cfg["variant"] == "bi":
      per_frame *= 2
      width = 2 * f if model_cfg["bi_merge"] == "concat" else f
    if model_cfg["name"] == "grurcn" and model_cfg["variant"] == "stacked" and lower:
      per_frame += _conv(positions, taps, lower, 2 * f)
    lower = f
    total += frames * per_frame + batch * 2 * width * k
  return total


def train_step_flops(model_cfg, level_shapes, batch, clip_length) -> int:
  return 3 * forward_flops(model_cfg, level_shapes, batch, clip_length)
