"""The captioning model of the paper's second task: a video encoder that gives one
vector per temporal segment, and the attention LSTM decoder over those vectors.

Features arrive as {level: [B, S, F, ...]}: S equally spaced segments of F frames
each (the paper: the first 10 frames of each segment).

- `GRURCNSegments`: a GRU-RCN (a `GRURCNEncoder`: uni, bi or stacked) runs over each
  segment's frames; each level's last state is average pooled over space and the
  levels are concatenated: [B, S, sum of hidden sizes]. The segments are folded
  into the batch batch-major ([B, S] -> B*S), so a batch-sharded video stays on its
  device. Its GRU-RCN's parameters are the classifier's encoder's
  (`encoder/encoder/<level>` here, `encoder/<level>` there), so an
  action-recognition checkpoint can start it.
- `FrameSegments`: the baseline, each segment's first frame, each level average
  pooled over space, concatenated (the paper: VGG-16 fc7 of the first frame); with
  `average_frames`, the mean over each segment's frames instead: blind to their
  order by construction.

With `spatial` (config `caption.spatial_attention`), either encoder keeps space:
each level's maps are average pooled to the coarsest level's grid (h x w) instead
of to 1x1, and the decoder attends over S*h*w vectors [B, S*h*w, D] (segment-major,
then row-major positions) instead of S. The paper attends over time only.
"""

from typing import Mapping, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

from grurcn_jax.errors import ConfigError
from grurcn_jax.models import heads
from grurcn_jax.models.caption_decoder import AttentionLSTMDecoder
from grurcn_jax.models.grurcn import GRURCNEncoder, as_maps

Array = jax.Array


def _fold(x: Array) -> Array:
  """[B, S, ...] -> [B*S, ...], batch-major."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def attention_vectors(maps: Sequence[Array], batch: int, spatial: bool) -> Array:
  """Per-level maps [B*S, H, W, C] of the segments (batch-major) -> the decoder's
  vectors: [B, S, sum C], each map average pooled; or, `spatial`, [B, S*h*w, sum C],
  each map average pooled to the coarsest grid (h, w) of them."""
  if spatial:
    height, width = min(m.shape[1] for m in maps), min(m.shape[2] for m in maps)
    if height * width == 1:
      raise ConfigError("caption.spatial_attention needs maps of more than one "
                        "position, and the coarsest level here is 1x1 (fc7, or a "
                        "level smaller than its stride at this image size): leave "
                        "the 1x1 level out or set spatial_attention=False")
    pooled = [heads.adaptive_average_pool(m, height, width) for m in maps]
  else:
    pooled = [heads.global_average_pool(m)[:, None, None] for m in maps]
  vectors = jnp.concatenate([p.astype(jnp.float32) for p in pooled], axis=-1)
  return vectors.reshape(batch, -1, vectors.shape[-1])


class GRURCNSegments(nn.Module):
  """[B, S, F, ...] per level -> [B, S, D] segment vectors ([B, S*h*w, D] with
  `spatial`), by `encoder` (its parameters under `encoder`, as in the classifier)."""

  encoder: GRURCNEncoder
  spatial: bool = False

  @nn.compact
  def __call__(self, features: Mapping[str, Array]) -> Array:
    levels = tuple(self.encoder.levels)
    states = self.encoder({l: _fold(features[l]) for l in levels})
    return attention_vectors([states[l] for l in levels],
                             features[levels[0]].shape[0], self.spatial)


class FrameSegments(nn.Module):
  """Each segment's first frame (or, with `average_frames`, the mean of its
  frames), levels average pooled: [B, S, D] ([B, S*h*w, D] with `spatial`)."""

  levels: Sequence[str]
  average_frames: bool = False
  spatial: bool = False

  @nn.compact
  def __call__(self, features: Mapping[str, Array]) -> Array:
    def maps(x):   # [B, S, F, ...] -> [B*S, H, W, C]
      x = x.astype(jnp.float32)
      frames = jnp.mean(x, axis=2) if self.average_frames else x[:, :, 0]
      return _fold(as_maps(frames))
    batch = features[self.levels[0]].shape[0]
    return attention_vectors([maps(features[l]) for l in self.levels], batch,
                             self.spatial)


class SegmentPositions(nn.Module):
  """Adds a learned vector per segment index to the segment vectors [B, S, D]
  (per segment and position with spatial attention, [B, S*h*w, D]): the
  attention is otherwise blind to their order (an option; the paper's decoder has
  none)."""

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
