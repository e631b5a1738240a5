"""The attention LSTM decoder against a NumPy transcription of its equations; the
loss against its definition."""

import jax
import jax.numpy as jnp
import numpy as np

from grurcn_jax.models.caption_decoder import AttentionLSTMDecoder, caption_loss

B, K, D, V = 3, 4, 6, 9


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _numpy_step(p, h, c, words, v):
  """The module docstring's equations, written out in float64."""
  dense = lambda name, x: x @ p[name]["kernel"] + p[name].get("bias", 0.0)
  scores = dense("attend_score", np.tanh(
      dense("attend_hidden", h)[:, None] + dense("attend_context", v)))[..., 0]
  alpha = np.exp(scores - scores.max(-1, keepdims=True))
  alpha /= alpha.sum(-1, keepdims=True)
  phi = np.einsum("bk,bkd->bd", alpha, v)
  word = p["embed"]["embedding"][words]
  z = dense("gates_word", word) + dense("gates_hidden", h) + dense("gates_context", phi)
  i, f, o, g = np.split(z, 4, axis=-1)
  c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
  h = _sigmoid(o) * np.tanh(c)
  logits = dense("out_logits", np.tanh(dense("out_hidden", h) + word
                                      + dense("out_context", phi)))
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  return h, c, log_probs, alpha


def test_one_step_matches_the_equations():
  decoder = AttentionLSTMDecoder(V, embed_dim=5, hidden=7, attention_dim=8)
  rng = np.random.default_rng(0)
  v = jnp.asarray(rng.standard_normal((B, K, D)), jnp.float32)
  words = jnp.asarray([0, 3, 8], jnp.int32)
  params = decoder.init(jax.random.key(0), v, words[:, None])["params"]
  # Random (not initial) values everywhere, biases included.
  params = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape) * 0.5,
                                              a.dtype), params)
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

  (h0, c0), _ = decoder.apply({"params": params}, v, method=decoder.start)
  v64 = np.asarray(v, np.float64)
  for got, name in ((h0, "init_hidden"), (c0, "init_cell")):
    kernel, bias = p64[name]["kernel"], p64[name]["bias"]
    # float32: a mean of K frames, a D-term product, the bias: within (K + D + 2)
    # units of 2^-24 of the sum of the terms' magnitudes (entries where they
    # cancel are small: no relative bound holds there); tanh' <= 1 passes that
    # on, and tanh adds a few ulps of its own.
    magnitude = np.abs(v64).mean(1) @ np.abs(kernel) + np.abs(bias)
    np.testing.assert_allclose(got, np.tanh(v64.mean(1) @ kernel + bias),
                               rtol=4 * 2 ** -24,
                               atol=(K + D + 2) * 2 ** -24 * np.max(magnitude))
  h, c = rng.standard_normal((2, B, 7))
  state, log_probs, alpha = decoder.apply(
      {"params": params}, (jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)),
      words, v, decoder.apply({"params": params}, v, method=decoder.start)[1],
      method=decoder.step)
  want = _numpy_step(p64, h, c, np.asarray(words), np.asarray(v, np.float64))
  # float32 arithmetic on O(1) values through a few tanh/exp: 1e-5 relative.
  for got, expected in zip((*state, log_probs, alpha), want):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_teacher_forcing_is_the_steps_and_the_loss_counts_words():
  decoder = AttentionLSTMDecoder(V, embed_dim=5, hidden=7, attention_dim=8,
                                 dropout_rate=0.0)
  rng = np.random.default_rng(1)
  v = jnp.asarray(rng.standard_normal((B, K, D)), jnp.float32)
  words = jnp.asarray(rng.integers(0, V, (B, 5)), jnp.int32)
  params = decoder.init(jax.random.key(0), v, words)["params"]
  log_probs, alphas = decoder.apply({"params": params}, v, words)
  state, projected = decoder.apply({"params": params}, v, method=decoder.start)
  for t in range(5):
    state, lp, alpha = decoder.apply({"params": params}, state, words[:, t], v,
                                     projected, method=decoder.step)
    # Two programs (the scanned sequence, one step at a time) on O(1) float32
    # values through a few tanh/exp, as above: 1e-5, relative and absolute.
    np.testing.assert_allclose(log_probs[:, t], lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alphas[:, t], alpha, rtol=1e-5, atol=1e-5)
  targets = jnp.roll(words, -1, axis=1)
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], jnp.float32)
  # The reference in float64 (from the same float32 inputs, exactly).
  nll = -np.take_along_axis(np.asarray(log_probs, np.float64),
                            np.asarray(targets)[..., None], -1)
  coverage = (np.asarray(alphas, np.float64) * np.asarray(mask)[..., None]).sum(1)
  want = ((nll[..., 0] * mask).sum() / mask.sum()
          + 0.3 * np.mean(np.sum((1 - coverage) ** 2, -1)))
  # float32 sums of about 30 terms against float64: (n + 1) * 2^-24 = 2e-6.
  np.testing.assert_allclose(caption_loss(log_probs, targets, mask, alphas, 0.3),
                             want, rtol=31 * 2 ** -24)
  # Spatial attention: K weights in segment groups; the regulariser is on each
  # segment's summed weight. Weights spread over K = 2 segments x 2 positions.
  spread = jnp.repeat(alphas, 2, axis=-1) / 2
  np.testing.assert_allclose(
      caption_loss(log_probs, targets, mask, spread, 0.3, segments=alphas.shape[-1]),
      want, rtol=31 * 2 ** -24)
