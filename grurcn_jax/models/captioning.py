"""The captioning model of the paper's second task: a video encoder that gives one
vector per temporal segment, and the attention LSTM decoder over those vectors.

Features arrive as {level: [B, S, F, ...]}: S equally spaced segments of F frames
each (the paper: the first 10 frames of each segment).

- `GRURCNSegments`: a GRU-RCN (a `GRURCNEncoder`: uni, bi or stacked) runs over each
  segment's frames; each level's last state is average pooled over space and the
  levels are concatenated: [B, S, sum of hidden sizes]. The segments are folded
  into the batch batch-major ([B, S] -> B*S), so a batch-sharded video stays on its
  device. Its parameters are named as the classifier's encoder (`encoder/<level>`),
  so an action-recognition checkpoint can start it.
- `FrameSegments`: the baseline, each segment's first frame, each level average
  pooled over space, concatenated (the paper: VGG-16 fc7 of the first frame).
"""

from typing import Mapping, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

from grurcn_jax.models import heads
from grurcn_jax.models.caption_decoder import AttentionLSTMDecoder
from grurcn_jax.models.grurcn import GRURCNEncoder, as_maps

Array = jax.Array


def _fold(x: Array) -> Array:
  """[B, S, ...] -> [B*S, ...], batch-major."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


class GRURCNSegments(nn.Module):
  """[B, S, F, ...] per level -> [B, S, D] segment vectors, by `encoder` (its
  parameters under `encoder`, as in the classifier)."""

  encoder: GRURCNEncoder

  @nn.compact
  def __call__(self, features: Mapping[str, Array]) -> Array:
    levels = tuple(self.encoder.levels)
    batch, segments = features[levels[0]].shape[:2]
    states = self.encoder({l: _fold(features[l]) for l in levels})
    vectors = [heads.global_average_pool(states[l]).astype(jnp.float32)
               for l in levels]
    return jnp.concatenate(vectors, axis=-1).reshape(batch, segments, -1)


class FrameSegments(nn.Module):
  """Each segment's first frame, levels average pooled: [B, S, D]."""

  levels: Sequence[str]

  @nn.compact
  def __call__(self, features: Mapping[str, Array]) -> Array:
    vectors = [jnp.mean(as_maps(features[l][:, :, 0]).astype(jnp.float32), axis=(2, 3))
               for l in self.levels]
    return jnp.concatenate(vectors, axis=-1)


class CaptioningModel(nn.Module):
  """Segment encoder, then the attention LSTM decoder."""

  encoder: nn.Module
  decoder: AttentionLSTMDecoder

  def __call__(self, features: Mapping[str, Array], words: Array, *,
               train: bool = False):
    """Teacher forcing: next-word log-probabilities [B, L, V] and attention
    weights [B, L, S] for the input words [B, L]."""
    return self.decoder(self.encoder(features), words, train=train)

  def segments(self, features: Mapping[str, Array]) -> Array:
    return self.encoder(features)

  def start(self, segments: Array):
    return self.decoder.start(segments)

  def step(self, state, words: Array, segments: Array, projected: Array):
    return self.decoder.step(state, words, segments, projected)
