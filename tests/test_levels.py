"""The feature levels: each one's per-frame shape, and frame sizes too small for it."""

import pytest

from grurcn_jax import levels
from grurcn_jax.errors import ConfigError


def test_shapes_at_the_papers_frame_size():
  assert levels.feature_shape("pool2", 224) == (56, 56, 128)
  assert levels.feature_shape("pool3", 224) == (28, 28, 256)
  assert levels.feature_shape("pool4", 224) == (14, 14, 512)
  assert levels.feature_shape("pool5", 224) == (7, 7, 512)
  assert levels.feature_shape("fc7", 224) == (4096,)
  # Odd sides round down, as VGG-16's pooling does.
  assert levels.feature_shape("pool5", 100) == (3, 3, 512)


@pytest.mark.parametrize("level,smallest", [("pool2", 4), ("pool5", 32), ("fc7", 32)])
def test_a_frame_too_small_for_a_level_is_an_error(level, smallest):
  levels.feature_shape(level, smallest)
  # fc7 pools pool5's map to 7x7: an empty pool5 would make it NaN, not an error.
  with pytest.raises(ConfigError, match=f"image_size {smallest - 1} is too small for "
                                        f"level {level}"):
    levels.feature_shape(level, smallest - 1)
