"""GRU-RCN over several VGG-16 levels: uni-directional, bidirectional and stacked.

Inputs are a mapping level -> features of a batch of clips: [B, T, H, W, C] for the
pooling levels, [B, T, C] for fc7 (treated as a 1x1 map with 1x1 kernels, i.e. a
plain GRU, as in the paper).
"""

import functools
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from flax import linen as nn
import jax
import jax.numpy as jnp

from grurcn_jax import levels as levels_lib
from grurcn_jax.models import heads
from grurcn_jax.models.convgru import ConvGRU, level_remat

Array = jax.Array

VARIANTS = ("uni", "bi", "stacked")
BI_MERGES = ("concat", "sum")


def as_maps(x: Array) -> Array:
  """[B, T, C] vectors -> [B, T, 1, 1, C] maps; maps pass through."""
  if x.ndim == 3:
    return x[:, :, None, None, :]
  if x.ndim != 5:
    raise ValueError(f"expected [B, T, C] or [B, T, H, W, C] features, got {x.shape}")
  return x


def _max_pool_axis(x: Array, axis: int, size: int) -> Array:
  """Max-pools one axis of `x` down to `size`."""
  n = x.shape[axis]
  if n == size:
    return x
  stride = n // size
  if n // stride == size:
    # VGG-16's 2x2 pooling between levels rounds down (an odd side 2k+1 becomes k,
    # its last row dropped), and pool5 -> fc7 takes the whole map: windows of
    # `stride`, no padding, so level l's cell (i, j) sees the cells VGG pooled into it.
    x = jax.lax.slice_in_dim(x, 0, stride * size, axis=axis)
    shape = x.shape[:axis] + (size, stride) + x.shape[axis + 1:]
    return x.reshape(shape).max(axis=axis + 1)
  # Sizes that `size` windows of n // size do not give (e.g. 7 -> 4, 6 -> 5; no
  # VGG-16 pooling makes them): adaptive pooling, window i covering
  # [floor(i n / size), ceil((i + 1) n / size)), never empty.
  return jnp.concatenate([
      jax.lax.slice_in_dim(x, i * n // size, -(-(i + 1) * n // size), axis=axis)
      .max(axis=axis, keepdims=True) for i in range(size)], axis=axis)


def max_pool_to(x: Array, height: int, width: int) -> Array:
  """Max-pools [B, T, H, W, C] to [B, T, height, width, C] as VGG-16 pools between
  levels: windows and strides of H // height (2 between consecutive pooling levels;
  the whole map from pool5 to fc7's 1x1), the rows left over dropped (an odd side
  rounded down) whenever that gives `height` windows; adaptive windows otherwise."""
  h, w = x.shape[2:4]
  if height > h or width > w:
    raise ValueError(f"cannot max-pool {h}x{w} up to {height}x{width}")
  return _max_pool_axis(_max_pool_axis(x, 2, height), 3, width)


class GRURCNEncoder(nn.Module):
  """One GRU-RCN per level; returns each level's final state (or every state).

  Attributes:
    levels: level names, fine to coarse (see `grurcn_jax.levels.LEVELS`).
    hidden: hidden channels per level, aligned with `levels`.
    variant: 'uni'; 'bi' (a forward and a backward GRU-RCN per level, merged by
      `bi_merge`: 'concat' of the channels or 'sum'); 'stacked' (level l's z and r
      gates also see level l-1's state at the same step, max-pooled to level l's
      size).
    kernel_size: side of every convolution kernel on map levels (fc7 uses 1x1).
    remat: see `ConvGRU`; or the tuple of levels that recompute (`level_remat`).
    recurrence, unroll, kernel_gradient: see `ConvGRU`.
  """

  levels: Sequence[str]
  hidden: Sequence[int]
  variant: str = "uni"
  kernel_size: int = 3
  bi_merge: str = "concat"
  recurrence: str = "fused"
  remat: Union[bool, Sequence[str]] = False
  unroll: Union[int, str] = "auto"
  kernel_gradient: str = "auto"
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[str, Array],
               return_sequences: bool = False) -> Dict[str, Array]:
    """Returns level -> [B, H, W, F'] (or [B, T, H, W, F'] with return_sequences).

    F' is the level's hidden size, doubled for 'bi' with 'concat'.
    """
    heads.check_levels(self.levels, features, self.hidden)
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
    if self.bi_merge not in BI_MERGES:
      raise ValueError(f"unknown bi_merge {self.bi_merge!r}; valid: "
                       f"{', '.join(BI_MERGES)}")
    outputs = {}
    lower_states = None
    for level, hidden in zip(self.levels, self.hidden):
      x = as_maps(features[level])
      size = 1 if levels_lib.is_vector_level(level) else self.kernel_size
      layer = functools.partial(
          ConvGRU, hidden, (size, size), recurrence=self.recurrence,
          remat=level_remat(self.remat, level), unroll=self.unroll,
          kernel_gradient=self.kernel_gradient,
          dtype=self.dtype, param_dtype=self.param_dtype)
      if self.variant == "uni":
        outputs[level] = layer(return_sequences=return_sequences, name=level)(x)
      elif self.variant == "bi":
        forward = layer(return_sequences=return_sequences,
                        name=f"{level}_forward")(x)
        backward = layer(return_sequences=return_sequences, reverse=True,
                         name=f"{level}_backward")(x)
        outputs[level] = (jnp.concatenate([forward, backward], axis=-1)
                          if self.bi_merge == "concat" else forward + backward)
      else:   # stacked
        gate_inputs = None
        if lower_states is not None:
          gate_inputs = max_pool_to(lower_states, x.shape[2], x.shape[3])
        # Every state of this level feeds the gates of the level above.
        states = layer(return_sequences=True, name=level)(x, gate_inputs=gate_inputs)
        outputs[level] = states if return_sequences else states[:, -1]
        lower_states = states
    return outputs


class GRURCN(nn.Module):
  """The multi-level GRU-RCN classifier of the paper.

  Per level: final hidden state -> global average pool -> dropout -> linear.
  The prediction averages the per-level class probabilities (heads.model_output).
  `encode` gives the encoder's states for other heads (e.g. a captioning decoder).
  """

  num_classes: int
  levels: Sequence[str]
  hidden: Sequence[int]
  variant: str = "uni"
  kernel_size: int = 3
  bi_merge: str = "concat"
  dropout_rate: float = 0.0
  recurrence: str = "fused"
  remat: Union[bool, Sequence[str]] = False
  unroll: Union[int, str] = "auto"
  kernel_gradient: str = "auto"
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32

  def setup(self):
    self.encoder = GRURCNEncoder(
        self.levels, self.hidden, self.variant, self.kernel_size, self.bi_merge,
        self.recurrence, self.remat, self.unroll, self.kernel_gradient, self.dtype,
        self.param_dtype)
    self.classifiers = {
        level: heads.ClassifierHead(self.num_classes, self.dropout_rate, self.dtype,
                                    self.param_dtype, name=f"{level}_classifier")
        for level in self.levels}

  def __call__(self, features: Mapping[str, Array], *, train: bool = False):
    states = self.encoder(features)
    return heads.model_output(
        {level: self.classifiers[level](heads.global_average_pool(states[level]),
                                        train=train)
         for level in self.levels})

  def encode(self, features: Mapping[str, Array],
             return_sequences: bool = True) -> Dict[str, Array]:
    return self.encoder(features, return_sequences=return_sequences)
