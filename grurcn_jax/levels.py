"""The VGG-16 feature levels GRU-RCN reads, and their shapes.

The one VGG-16 table of the package: the models, the feature extractor
(`models/vgg16.py` builds its layers from `BLOCKS`) and the configs all read it, so a
level name means the same thing everywhere.
"""

from typing import Tuple

from grurcn_jax.errors import ConfigError

# The feature directory's level holding the frames themselves (uint8 RGB, as
# VGG-16 saw them): what frames mode reads.
FRAMES = "frames"

# VGG-16 (configuration D) as (block, 3x3 convolutions, channels). Each block ends in
# a 2x2 max pool named pool{block}, so pool{b} is 2**b times smaller than the frame.
BLOCKS: Tuple[Tuple[int, int, int], ...] = (
    (1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
# Units of the two dense layers after block 5 (fc6, fc7).
FC_UNITS = 4096
# The dense layers come after the last block.
_FC_DEPTH = len(BLOCKS) + 1

# Order matters: fine to coarse. The stacked variant feeds level l-1 into level l.
LEVELS: Tuple[str, ...] = ("pool2", "pool3", "pool4", "pool5", "fc7")

_POOL_CHANNELS = {f"pool{block}": channels for block, _, channels in BLOCKS}


def _check(level: str) -> None:
  if level not in LEVELS:
    raise ConfigError(f"unknown level {level!r}; valid levels: {', '.join(LEVELS)}")


def is_vector_level(level: str) -> bool:
  """fc7 is a vector per frame; GRU-RCN treats it as a 1x1 map."""
  return level == "fc7"


def depth(level: str) -> int:
  """How many VGG-16 stages compute `level`: its block for pool levels, one more
  than the last block for fc7 (it needs the dense layers)."""
  _check(level)
  return _FC_DEPTH if is_vector_level(level) else int(level[len("pool"):])


def feature_shape(level: str, image_size: int = 224) -> Tuple[int, ...]:
  """Per-frame feature shape of `level` for square frames of side `image_size`.

  Pooling levels are (H, W, C) maps; fc7 is a (4096,) vector.
  """
  _check(level)
  # fc7 reads pool5 (pooled to 7x7): pool5 must hold a pixel, or fc7 is the mean
  # of nothing (NaN).
  below = "pool5" if is_vector_level(level) else level
  if image_size // 2 ** depth(below) < 1:
    raise ConfigError(f"image_size {image_size} is too small for level {level}"
                      + (" (it reads pool5: 32 pixels at least)" if below != level else ""))
  if is_vector_level(level):
    return (FC_UNITS,)
  side = image_size // 2 ** depth(level)
  return (side, side, _POOL_CHANNELS[level])
