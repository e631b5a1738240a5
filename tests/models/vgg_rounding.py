"""How far apart two float32 VGG-16 computations of a stored level may lie."""

import numpy as np

from grurcn_jax.models import vgg16


def stored_level_bound(level, mean, scale, got, stored):
  """Per element, the most `got` and `stored` may differ by when both are float32
  VGG-16's `level` (in other batch sizes: other summation orders), normalised by
  `mean` and `scale` and rounded to float16.

  Each rounding to float16 moves a value by at most half a float16 unit of the
  larger. The float32 sums (K_l terms in layer l, T = sum_l K_l up to the level)
  differ by rounding errors that add up as a random walk: within
  lambda * sqrt(T) * 2^-24 of the activations' size with overwhelming probability
  (Higham and Mary's probabilistic bound; lambda = 4), twice for two computations.
  The worst case, T * 2^-24 of the network run on absolute values, is thousands of
  times larger than any difference seen and would let a wrong level pass."""
  terms = sum(int(np.prod(shapes["kernel"].shape[:-1]))
              for shapes in vgg16.param_shapes((level,)).values())
  got, stored = (np.asarray(a, np.float16) for a in (got, stored))
  # The activations' size, in the stored (normalised) units.
  size = np.max(np.abs(stored.astype(np.float64))) + np.max(
      np.abs(np.asarray(mean, np.float64))) / scale
  float32_error = 2 * 4 * np.sqrt(terms) * 2.0 ** -24 * size
  return np.spacing(np.maximum(np.abs(got), np.abs(stored))).astype(np.float64) + float32_error
