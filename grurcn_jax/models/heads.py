"""Per-level classifiers and the multi-level prediction every model returns.

Every model returns the same structure, so training, evaluation and metrics need
not know which model they run:

    {'logits': [B, K]          log of the per-level class probabilities averaged
                               (a valid logit: softmax gives the averaged
                               probabilities back),
     'level_logits': {level: [B, K]}}

Outputs are cast to float32 whatever the compute dtype (the logits are computed in
it), so losses and metrics are computed in float32.
"""

from typing import Any, Dict, Mapping, Optional, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class ClassifierHead(nn.Module):
  """Dropout -> linear on [..., C] vectors (callers pool maps first)."""

  num_classes: int
  dropout_rate: float
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="linear")(x)
    return logits.astype(jnp.float32)


def global_average_pool(maps: Array) -> Array:
  """[B, H, W, C] -> [B, C] (the paper average-pools the last state to 1x1)."""
  return jnp.mean(maps, axis=(1, 2))


def check_levels(levels: Sequence[str], features: Mapping[str, Array],
                 hidden: Optional[Sequence[int]] = None) -> None:
  """ValueError unless there is a level, every one is in `features`, and `hidden`
  (recurrent models) gives one size per level: a module used on its own gets
  the checks `build_model` makes (zip would drop the levels past the sizes)."""
  if not levels:
    raise ValueError("the model has no levels")
  if hidden is not None and len(hidden) != len(levels):
    raise ValueError(f"hidden={tuple(hidden)} needs one size per level of "
                     f"{tuple(levels)}")
  missing = [level for level in levels if level not in features]
  if missing:
    raise ValueError(f"the model expects level(s) {', '.join(missing)} in the "
                     f"features; got {sorted(features)}")


def adaptive_average_pool(maps: Array, height: int, width: int) -> Array:
  """[B, H, W, C] -> [B, height, width, C], windows as torch.nn.AdaptiveAvgPool2d
  (equal, disjoint windows when H and W are multiples of height and width)."""
  def pool_axis(x, axis, size):
    n = x.shape[axis]
    if n % size == 0:
      return jnp.mean(x.reshape(x.shape[:axis] + (size, n // size) + x.shape[axis + 1:]),
                      axis=axis + 1)
    parts = []
    for i in range(size):
      start, end = (i * n) // size, -(-((i + 1) * n) // size)
      parts.append(jnp.mean(jax.lax.slice_in_dim(x, start, end, axis=axis),
                            axis=axis, keepdims=True))
    return jnp.concatenate(parts, axis=axis)
  return pool_axis(pool_axis(maps, 1, height), 2, width)


def average_probabilities(level_log_probs: Mapping[str, Array]) -> Array:
  """log(mean over levels of p), computed stably from per-level log-probabilities."""
  stacked = jnp.stack([level_log_probs[k] for k in level_log_probs], axis=0)
  return jax.nn.logsumexp(stacked, axis=0) - jnp.log(stacked.shape[0])


def model_output(level_logits: Dict[str, Array]) -> Dict[str, Any]:
  """The common output dict: level logits and their averaged prediction."""
  log_probs = {k: jax.nn.log_softmax(v, axis=-1) for k, v in level_logits.items()}
  return {"logits": average_probabilities(log_probs), "level_logits": level_logits}
