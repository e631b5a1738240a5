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
  pooled over space, concatenated (the paper: VGG-16 fc7 of the first frame); with
  `average_frames`, the mean over each segment's frames instead: blind to their
  order by construction.
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
  """Each segment's first frame (or, with `average_frames`, the mean of its
  frames), levels average pooled: [B, S, D]."""

  levels: Sequence[str]
  average_frames: bool = False

  @nn.compact
  def __call__(self, features: Mapping[str, Array]) -> Array:
    def vector(x):   # [B, S, F, ...] -> [B, S, C]
      x = x.astype(jnp.float32)
      frames = jnp.mean(x, axis=2) if self.average_frames else x[:, :, 0]
      return jnp.mean(as_maps(frames), axis=(2, 3))
    return jnp.concatenate([vector(features[l]) for l in self.levels], axis=-1)


class SegmentPositions(nn.Module):
  """Adds a learned vector per segment index to the segment vectors [B, S, D]:
  the attention over segments is otherwise blind to their order (an option; the
  paper's decoder has none)."""

  @nn.compact
  def __call__(self, segments: Array) -> Array:
    table = self.param("embedding", nn.initializers.normal(0.02),
                       segments.shape[1:], jnp.float32)
    return segments + table.astype(segments.dtype)


class CaptioningModel(nn.Module):
  """Segment encoder (then, with `segment_positions`, a learned vector per segment
  index), then the attention LSTM decoder."""

  encoder: nn.Module
  decoder: AttentionLSTMDecoder
  segment_positions: bool = False

  def setup(self):
    self.positions = SegmentPositions() if self.segment_positions else None

  def __call__(self, features: Mapping[str, Array], words: Array, *,
               train: bool = False):
    """Teacher forcing: next-word log-probabilities [B, L, V] and attention
    weights [B, L, S] for the input words [B, L]."""
    return self.decoder(self.segments(features), words, train=train)

  def segments(self, features: Mapping[str, Array]) -> Array:
    segments = self.encoder(features)
    return segments if self.positions is None else self.positions(segments)

  def start(self, segments: Array):
    return self.decoder.start(segments)

  def step(self, state, words: Array, segments: Array, projected: Array):
    return self.decoder.step(state, words, segments, projected)
