"""The paper's baselines: VGG-16 frame averaging and a GRU on per-frame vectors.

Both read per-frame vectors: fc7 as it is (the paper's baselines), or a map level
average pooled over space. They return the same output dict as GRU-RCN (heads.py).
"""

from typing import Any, Mapping, Optional, Sequence, Union

from flax import linen as nn
import jax
import jax.numpy as jnp

from grurcn_jax.models import heads
from grurcn_jax.models.convgru import ConvGRU, level_remat

Array = jax.Array


def frame_vectors(x: Array) -> Array:
  """[B, T, C] passes; [B, T, H, W, C] maps are average pooled to [B, T, C]."""
  if x.ndim == 5:
    return jnp.mean(x, axis=(2, 3))
  if x.ndim != 3:
    raise ValueError(f"expected [B, T, C] or [B, T, H, W, C] features, got {x.shape}")
  return x


class VGGFrames(nn.Module):
  """'VGG-16 (frame average)': a linear classifier per frame, probabilities
  averaged over the clip. Sees no temporal order at all."""

  num_classes: int
  levels: Sequence[str] = ("fc7",)
  dropout_rate: float = 0.0
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[str, Array], *, train: bool = False):
    heads.check_levels(self.levels, features)
    level_logits = {}
    for level in self.levels:
      x = frame_vectors(features[level])
      frame_logits = heads.ClassifierHead(
          self.num_classes, self.dropout_rate, self.dtype, self.param_dtype,
          name=f"{level}_classifier")(x, train=train)           # [B, T, K]
      # Mean of the frames' probabilities, as a log-probability per clip.
      frame_log_probs = jax.nn.log_softmax(frame_logits, axis=-1)
      level_logits[level] = (jax.nn.logsumexp(frame_log_probs, axis=1)
                             - jnp.log(frame_log_probs.shape[1]))
    return heads.model_output(level_logits)


class VGGRNN(nn.Module):
  """'VGG-16 RNN': a GRU over per-frame vectors (the GRU-RCN cell on 1x1 maps
  with 1x1 kernels is exactly a fully connected GRU), last state classified."""

  num_classes: int
  levels: Sequence[str] = ("fc7",)
  hidden: Sequence[int] = (512,)
  dropout_rate: float = 0.0
  recurrence: str = "fused"
  remat: Union[bool, Sequence[str]] = False
  unroll: Union[int, str] = "auto"
  kernel_gradient: str = "auto"
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[str, Array], *, train: bool = False):
    heads.check_levels(self.levels, features, self.hidden)
    level_logits = {}
    for level, hidden in zip(self.levels, self.hidden):
      x = frame_vectors(features[level])[:, :, None, None, :]
      state = ConvGRU(hidden, (1, 1), recurrence=self.recurrence,
                      remat=level_remat(self.remat, level), unroll=self.unroll,
                      kernel_gradient=self.kernel_gradient, dtype=self.dtype,
                      param_dtype=self.param_dtype, name=f"{level}_gru")(x)
      level_logits[level] = heads.ClassifierHead(
          self.num_classes, self.dropout_rate, self.dtype, self.param_dtype,
          name=f"{level}_classifier")(heads.global_average_pool(state),
                                         train=train)
    return heads.model_output(level_logits)
