"""Frames mode: VGG-16 runs inside the step, on the accelerator, then GRU-RCN.

`FramesModel` takes {'frames': [B, T, S, S, 3] uint8} and gives the wrapped model
(GRU-RCN or a baseline, as `build_model` builds it) what features mode gives it:
each level's maps, normalised by the statistics the feature directory was
calibrated with and (backbone frozen) rounded to float16, as the stored features
are. That holds in float32, what extraction computes in; with model.dtype
bfloat16 VGG-16 computes in bfloat16, and its levels differ from the stored ones
(a random VGG-16 on 32 px frames: 0.008 of a level's standard deviation on
average, up to 0.08). In training, `backbone_dropout` drops fc7 units of a frozen
backbone too (dropout on its features). The frames of all clips go through
VGG-16 as one batch of B*T, merged batch-major (so a batch-sharded clip stays on
its device). With `backbone_trainable=False` the backbone's outputs are cut from
the gradient (no backward through VGG-16) and the optimiser leaves its
parameters as they are (`steps.create_optimizer`).
Parameters: {'backbone': VGG-16's, 'head': the wrapped model's}.
"""

from typing import Any, Tuple

import einops
from flax import linen as nn
import jax
import jax.numpy as jnp

from grurcn_jax.models import vgg16

BACKBONE = vgg16.BACKBONE


class FramesModel(nn.Module):
  """VGG-16 on frames, then `head` on its normalised levels."""

  head: nn.Module
  levels: Tuple[str, ...]
  means: Tuple[Tuple[float, ...], ...]     # per level, per channel
  scales: Tuple[float, ...]                # per level
  backbone_trainable: bool = False
  backbone_dropout: float = 0.0            # after fc6 and fc7 (fc7 level only)
  dtype: Any = None

  @nn.compact
  def __call__(self, inputs, *, train: bool = False):
    frames = inputs["frames"]
    b, t = frames.shape[:2]
    maps = vgg16.VGG16(levels=self.levels, dtype=self.dtype,
                       dropout_rate=self.backbone_dropout, name=BACKBONE)(
        vgg16.preprocess(einops.rearrange(frames, "b t h w c -> (b t) h w c")),
        train=train)
    features = {}
    for level, mean, scale in zip(self.levels, self.means, self.scales):
      x = maps[level].astype(jnp.float32)
      if not self.backbone_trainable:
        x = jax.lax.stop_gradient(x)
      x = (x - jnp.asarray(mean, jnp.float32)) / scale
      # Frozen: float16, as the stored features hold (float32: the same). Trained: the
      # compute dtype (a backbone that learns may leave float16's range).
      x = x.astype(jnp.float16 if not self.backbone_trainable
                   else self.dtype or jnp.float32)
      features[level] = x.reshape((b, t) + x.shape[1:])
    return self.head(features, train=train)
