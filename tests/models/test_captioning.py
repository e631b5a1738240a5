"""The captioning model: one vector per segment, computed from that segment's
frames only; the GRU-RCN segment encoder named as the classifier's encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grurcn_jax import levels as levels_lib
from grurcn_jax.errors import ConfigError
from grurcn_jax.models import GRURCN, GRURCNEncoder
from grurcn_jax.models.caption_decoder import AttentionLSTMDecoder
from grurcn_jax.models.captioning import CaptioningModel, FrameSegments, GRURCNSegments

LEVELS, HIDDEN = ("pool3", "pool4"), (3, 5)
B, S, F, V = 2, 3, 4, 11


def _features(seed=0):
  keys = jax.random.split(jax.random.key(seed), len(LEVELS))
  return {l: jax.random.normal(k, (B, S, F, *levels_lib.feature_shape(l, 32)))
          for l, k in zip(LEVELS, keys)}


def test_each_segment_vector_depends_on_its_own_frames_only():
  encoder = GRURCNSegments(GRURCNEncoder(LEVELS, HIDDEN))
  features = _features()
  params = jax.jit(encoder.init)(jax.random.key(1), features)
  apply = jax.jit(encoder.apply)   # compiled once, run twice
  vectors = apply(params, features)
  assert vectors.shape == (B, S, sum(HIDDEN)) and vectors.dtype == jnp.float32
  changed = {l: x.at[1, 2].set(0.0) for l, x in features.items()}   # video 1, segment 2
  after = apply(params, changed)
  moved = np.any(np.asarray(after != vectors), axis=-1)
  np.testing.assert_array_equal(moved, [[False] * 3, [False, False, True]])


def test_the_segment_encoder_is_named_as_the_classifier_encoder():
  # An action-recognition checkpoint's params['encoder'] fits it as they are.
  features = _features()
  segments = GRURCNSegments(GRURCNEncoder(LEVELS, HIDDEN)).init(
      jax.random.key(1), features)["params"]
  clip = {l: x[:, 0] for l, x in features.items()}
  classifier = GRURCN(7, LEVELS, HIDDEN).init(jax.random.key(1), clip)["params"]
  assert (jax.tree.map(lambda a: a.shape, segments["encoder"])
          == jax.tree.map(lambda a: a.shape, classifier["encoder"]))


def test_the_frame_baseline_sees_the_first_frame_of_each_segment_only():
  features = _features()
  vectors = FrameSegments(LEVELS).apply({}, features)
  first = {l: np.asarray(features[l][:, :, 0], np.float64) for l in LEVELS}
  want = np.concatenate([first[l].mean(axis=(2, 3)) for l in LEVELS], axis=-1)
  # A float32 mean of n values is within n float32 roundings of the largest one.
  n = max(x.shape[2] * x.shape[3] for x in first.values())
  bound = n * 2.0 ** -24 * max(np.abs(x).max() for x in first.values())
  np.testing.assert_allclose(vectors, want, rtol=0, atol=bound)
  later = {l: x.at[:, :, 1:].set(0.0) for l, x in features.items()}
  np.testing.assert_array_equal(FrameSegments(LEVELS).apply({}, later), vectors)


def test_the_model_decodes_from_the_segments():
  model = CaptioningModel(GRURCNSegments(GRURCNEncoder(LEVELS, HIDDEN)),
                          AttentionLSTMDecoder(V, 4, 6, 5, dropout_rate=0.0))
  features, words = _features(), jnp.zeros((B, 7), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), features, words)
  log_probs, alphas = jax.jit(model.apply)(params, features, words)
  assert log_probs.shape == (B, 7, V) and alphas.shape == (B, 7, S)
  np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(alphas.sum(-1), 1.0, rtol=1e-5)


def test_the_frame_average_is_blind_to_frame_order():
  features = _features()
  average = FrameSegments(LEVELS, average_frames=True)
  vectors = average.apply({}, features)
  frames = {l: np.asarray(features[l], np.float64) for l in LEVELS}
  want = np.concatenate([frames[l].mean(axis=(2, 3, 4)) for l in LEVELS], axis=-1)
  n = max(x.shape[2] * x.shape[3] * x.shape[4] for x in frames.values())
  bound = n * 2.0 ** -24 * max(np.abs(x).max() for x in frames.values())
  np.testing.assert_allclose(vectors, want, rtol=0, atol=bound)
  # Backwards: the same float64 mean, so within the same rounding bound of it.
  backwards = {l: x[:, :, ::-1] for l, x in features.items()}
  np.testing.assert_allclose(average.apply({}, backwards), want, rtol=0, atol=bound)


def test_build_captioning_model_follows_the_config():
  from configs import demo_captioning
  from grurcn_jax.models.build import build_captioning_model
  config = demo_captioning.get_config()
  config.model.levels, config.model.hidden = LEVELS, HIDDEN
  config.caption.update(embed_dim=4, hidden=6, attention_dim=5, segments=S)
  model = build_captioning_model(config, V)
  params = jax.eval_shape(model.init, jax.random.key(0), _features(),
                          jnp.zeros((B, 7), jnp.int32))["params"]
  assert sorted(params["encoder"]["encoder"]) == sorted(LEVELS)   # the classifier's names
  assert params["decoder"]["out_logits"]["kernel"].shape == (4, V)
  config.caption.encoder = "frame_average"
  assert build_captioning_model(config, V).encoder.average_frames


def test_only_segment_positions_let_the_decoder_see_segment_order():
  features, words = _features(), jnp.zeros((B, 5), jnp.int32)
  swapped = {l: x[:, ::-1] for l, x in features.items()}
  for positions in (False, True):
    # Any encoder: the frame baseline is the cheapest.
    model = CaptioningModel(FrameSegments(LEVELS),
                            AttentionLSTMDecoder(V, 4, 6, 5, dropout_rate=0.0),
                            segment_positions=positions)
    params = model.init(jax.random.key(0), features, words)
    apply = model.apply
    (before, _), (after, _) = apply(params, features, words), apply(params, swapped, words)
    # Attention and the mean that starts the LSTM are sums over segments: in
    # another order, each float32 sum is off by a few units (2^-23) of its
    # largest term, carried through 5 LSTM steps whose gains are below 1 at these
    # weights: tens of units of the largest logit (measured: 2). Segment positions
    # move the logits by ~1e-3 of it, far above.
    tolerance = 64 * np.finfo(np.float32).eps * np.abs(before).max()
    assert np.allclose(before, after, rtol=0, atol=tolerance) != positions


# -- spatial attention (caption.spatial_attention) ----------------------------------
# pool3 is 4x4 and pool4 2x2 at 32 px: the grid is pool4's, pool3 pooled in 2x2 windows.
GRID = 4   # positions per segment


def test_spatial_vectors_are_each_level_pooled_to_the_coarsest_grid():
  features = _features()
  vectors = FrameSegments(LEVELS, spatial=True).apply({}, features)
  first = {l: np.asarray(features[l][:, :, 0], np.float64) for l in LEVELS}
  c3 = first["pool3"].shape[-1]
  pool3 = first["pool3"].reshape(B, S, 2, 2, 2, 2, c3).mean(axis=(3, 5))
  want = np.concatenate([pool3, first["pool4"]], axis=-1).reshape(B, S * GRID, -1)
  assert vectors.shape == want.shape
  # A float32 mean of 4 values is within 4 roundings of the largest.
  bound = 4 * 2.0 ** -24 * max(np.abs(x).max() for x in first.values())
  np.testing.assert_allclose(vectors, want, rtol=0, atol=bound)


def test_spatial_grurcn_vectors_stay_in_their_segment_and_average_to_the_plain_ones():
  features = _features()
  plain = GRURCNSegments(GRURCNEncoder(LEVELS, HIDDEN))
  spatial = GRURCNSegments(GRURCNEncoder(LEVELS, HIDDEN), spatial=True)
  params = jax.jit(plain.init)(jax.random.key(1), features)   # the same parameters
  apply = jax.jit(spatial.apply)
  vectors = apply(params, features)
  assert vectors.shape == (B, S * GRID, sum(HIDDEN))
  # Equal windows: the mean of the positions is the plain global average. States
  # are in (-1, 1); a float32 mean of 16 of them is within 16 roundings of 1.
  np.testing.assert_allclose(np.asarray(vectors).reshape(B, S, GRID, -1).mean(axis=2),
                             plain.apply(params, features), rtol=0, atol=16 * 2.0 ** -23)
  changed = {l: x.at[1, 2].set(0.0) for l, x in features.items()}   # video 1, segment 2
  moved = np.any(np.asarray(apply(params, changed) != vectors), axis=-1)
  expected = np.zeros((B, S * GRID), bool)
  expected[1, 2 * GRID:] = True
  np.testing.assert_array_equal(moved, expected)


def test_the_config_turns_on_attention_over_segments_and_positions():
  from configs import demo_captioning
  from grurcn_jax.models.build import build_captioning_model
  config = demo_captioning.get_config()
  config.model.levels, config.model.hidden = LEVELS, HIDDEN
  config.caption.update(embed_dim=4, hidden=6, attention_dim=5, segments=S,
                        spatial_attention=True, segment_positions=True)
  model = build_captioning_model(config, V)
  features, words = _features(), jnp.zeros((B, 7), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), features, words)
  assert params["params"]["positions"]["embedding"].shape == (S * GRID, sum(HIDDEN))
  log_probs, alphas = jax.jit(model.apply)(params, features, words)
  assert log_probs.shape == (B, 7, V) and alphas.shape == (B, 7, S * GRID)
  np.testing.assert_allclose(alphas.sum(-1), 1.0, rtol=1e-5)


def test_spatial_attention_over_a_1x1_level_is_a_clear_error():
  features = {l: jnp.zeros((B, S, F, *levels_lib.feature_shape(l, 32)))
              for l in ("pool3", "pool5")}      # pool5 is 1x1 at 32 px
  with pytest.raises(ConfigError, match="spatial_attention needs maps of more than one"):
    FrameSegments(("pool3", "pool5"), spatial=True).apply({}, features)
