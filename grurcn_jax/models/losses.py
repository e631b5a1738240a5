"""Classification losses over the models' common output dict (heads.py)."""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

# 'level_mean' (default): the mean of the per-level cross-entropies; every level's
#   GRU-RCN and classifier learns on its own, as the paper's independent levels do.
# 'ensemble': the cross-entropy of the averaged prediction (outputs['logits']).
LOSSES = ("level_mean", "ensemble")


def classification_loss(outputs: Mapping[str, Any], labels: jax.Array,
                        kind: str = "level_mean") -> jax.Array:
  """Per-example loss [B] for integer `labels` [B]."""
  if kind == "ensemble":
    return optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], labels)
  if kind == "level_mean":
    per_level = [optax.softmax_cross_entropy_with_integer_labels(logits, labels)
                 for logits in outputs["level_logits"].values()]
    return jnp.mean(jnp.stack(per_level, axis=0), axis=0)
  raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
