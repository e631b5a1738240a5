"""VGG-16 (configuration D) as a feature extractor: pool2..pool5 and fc7.

The layer names and kernel layouts are Keras' `keras.applications.VGG16`
(block1_conv1 .. block5_conv3, fc1, fc2), whose kernels are already HWIO / [in, out],
so ImageNet weights load by name (`load_keras_weights`).

Frames other than 224x224 keep working: pool5 is adaptively average pooled to 7x7
before fc6, as torchvision does, so fc7 exists for any frame size.
"""

from typing import Dict, Optional, Sequence

import einops
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# (block, convolutions, channels)
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
# Keras 'caffe' preprocessing: BGR order, ImageNet mean subtracted, no scaling.
BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
# The block after which each level exists (fc7 needs the two dense layers, "6").
_DEPTH = {"pool2": 2, "pool3": 3, "pool4": 4, "pool5": 5, "fc7": 6}


def preprocess(frames_rgb_uint8: jax.Array) -> jax.Array:
  """[..., H, W, 3] RGB uint8 -> what the Keras VGG-16 weights expect."""
  return frames_rgb_uint8[..., ::-1].astype(jnp.float32) - BGR_MEAN


def _adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """[B, H, W, C] -> [B, size, size, C], windows as torch.nn.AdaptiveAvgPool2d."""
  def pool_axis(x, axis):
    n = x.shape[axis]
    parts = []
    for i in range(size):
      start, end = (i * n) // size, -(-((i + 1) * n) // size)
      parts.append(jnp.mean(jax.lax.slice_in_dim(x, start, end, axis=axis),
                            axis=axis, keepdims=True))
    return jnp.concatenate(parts, axis=axis)
  return pool_axis(pool_axis(x, 1), 2)


class VGG16(nn.Module):
  """Returns the requested levels of preprocessed frames [B, H, W, 3]."""

  levels: Sequence[str] = ("pool2", "pool3", "pool4", "pool5")
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> Dict[str, jax.Array]:
    outputs = {}
    deepest = max(_DEPTH[level] for level in self.levels)
    for block, convs, channels in _BLOCKS:
      if block > deepest:
        break
      for i in range(1, convs + 1):
        x = nn.relu(nn.Conv(channels, (3, 3), padding="SAME", dtype=self.dtype,
                            name=f"block{block}_conv{i}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      outputs[f"pool{block}"] = x
    if "fc7" in self.levels:
      x = einops.rearrange(_adaptive_avg_pool(x, 7), "b h w c -> b (h w c)")
      x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc1")(x))
      outputs["fc7"] = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc2")(x))
    return {level: outputs[level] for level in self.levels}


def init_params(levels: Sequence[str], seed: int, image_size: int):
  """Random (seeded, He-normal like Keras' trained nets' scale) parameters."""
  model = VGG16(levels=tuple(levels))
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return model.init(jax.random.key(seed), x)["params"]


def load_keras_weights(path_or_name: str, levels: Sequence[str]):
  """Parameters from Keras' VGG16: 'imagenet' (Keras downloads and caches the
  standard file; needs network once) or a path to a saved .h5/.keras weights file."""
  import keras  # deferred: TensorFlow/Keras only when weights are loaded
  net = keras.applications.VGG16(
      weights="imagenet" if path_or_name == "imagenet" else None, include_top=True)
  if path_or_name != "imagenet":
    net.load_weights(path_or_name)
  params = {}
  for layer in net.layers:
    weights = layer.get_weights()
    if len(weights) == 2 and (layer.name.startswith("block") or layer.name in ("fc1", "fc2")):
      params[layer.name] = {"kernel": jnp.asarray(weights[0]),
                            "bias": jnp.asarray(weights[1])}
  needed = init_params(levels, 0, 32).keys()
  return {name: params[name] for name in needed}
