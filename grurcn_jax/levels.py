"""The VGG-16 feature levels GRU-RCN reads, and their shapes.

One table shared by the models, the feature extractor and the configs, so a level
name means the same thing everywhere.
"""

from typing import Tuple

# Order matters: fine to coarse. The stacked variant feeds level l-1 into level l.
LEVELS: Tuple[str, ...] = ("pool2", "pool3", "pool4", "pool5", "fc7")

# Spatial downsampling of each pooling level relative to the input frame.
_STRIDES = {"pool2": 4, "pool3": 8, "pool4": 16, "pool5": 32}
_CHANNELS = {"pool2": 128, "pool3": 256, "pool4": 512, "pool5": 512, "fc7": 4096}


def feature_shape(level: str, image_size: int = 224) -> Tuple[int, ...]:
  """Per-frame feature shape of `level` for square frames of side `image_size`.

  Pooling levels are (H, W, C) maps; fc7 is a (4096,) vector.
  """
  if level not in LEVELS:
    raise ValueError(f"unknown level {level!r}; valid levels: {', '.join(LEVELS)}")
  if level == "fc7":
    return (_CHANNELS["fc7"],)
  side = image_size // _STRIDES[level]
  if side < 1:
    raise ValueError(f"image_size {image_size} is too small for level {level}")
  return (side, side, _CHANNELS[level])


def is_vector_level(level: str) -> bool:
  """fc7 is a vector per frame; GRU-RCN treats it as a 1x1 map."""
  return level == "fc7"
