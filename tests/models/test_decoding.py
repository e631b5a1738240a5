"""Greedy and beam-search decoding on hand-made score tables."""

import jax
import jax.numpy as jnp
import numpy as np

from grurcn_jax.models import decoding

BOS, EOS, A, BW = 0, 1, 2, 3


def _markov(table):
  """A step whose next-word log-probabilities depend on the previous word only."""
  log_table = jnp.log(jnp.asarray(table, jnp.float32))
  return lambda state, words: (log_table[words], state)


def test_a_beam_finds_the_best_caption_greedy_misses():
  # From bos: 'a' 0.6, 'b' 0.4; after 'a' three words near 1/3 each; after 'b'
  # surely eos. Greedy takes 'a' (0.6 x 0.34 at best); the best caption is 'b eos'
  # (0.4).
  table = np.full((4, 4), 1e-12)
  table[BOS, [A, BW]] = 0.6, 0.4
  table[A, [EOS, A, BW]] = 0.33, 0.34, 0.33
  table[BW, EOS] = table[EOS, EOS] = 1.0
  step, state = _markov(table), jnp.zeros((2, 1))
  tokens, score = decoding.greedy(step, state, 2, bos=BOS, eos=EOS, max_length=3)
  np.testing.assert_array_equal(tokens, [[A, A, A]] * 2)
  np.testing.assert_allclose(score, np.log(0.6 * 0.34 ** 2), rtol=1e-5)
  tokens, score = jax.jit(lambda s: decoding.beam_search(
      step, s, 2, beam=2, bos=BOS, eos=EOS, max_length=3))(state)
  np.testing.assert_array_equal(tokens, [[BW, EOS, EOS]] * 2)
  np.testing.assert_allclose(score, np.log(0.4), rtol=1e-5)


def test_beam_of_one_is_greedy():
  rng = np.random.default_rng(0)
  table = jax.nn.softmax(jnp.asarray(rng.standard_normal((7, 7)) * 3), axis=-1)
  # The state matters: each video adds its own bias to the scores.
  bias = jnp.asarray(rng.standard_normal((3, 7)), jnp.float32)
  step = lambda s, w: (jax.nn.log_softmax(jnp.log(table[w]) + s), s)
  greedy = decoding.greedy(step, bias, 3, bos=0, eos=1, max_length=6)
  beam = decoding.beam_search(step, bias, 3, beam=1, bos=0, eos=1, max_length=6)
  np.testing.assert_array_equal(greedy[0], beam[0])
  np.testing.assert_allclose(greedy[1], beam[1], rtol=1e-6)


def test_banned_tokens_are_never_written():
  # 'a' is the best word everywhere, then 'b'; banned, 'a' never appears and the
  # captions are the best ones without it.
  table = np.full((4, 4), 1e-12)
  table[BOS, [A, BW]] = 0.7, 0.3
  table[A, [A, EOS]] = 0.9, 0.1
  table[BW, [A, BW, EOS]] = 0.6, 0.3, 0.1
  table[EOS, EOS] = 1.0
  step, state = _markov(table), jnp.zeros((2, 1))
  tokens, _ = decoding.greedy(step, state, 2, bos=BOS, eos=EOS, max_length=3)
  np.testing.assert_array_equal(tokens, [[A, A, A]] * 2)
  greedy = decoding.greedy(step, state, 2, bos=BOS, eos=EOS, max_length=3,
                           banned=(A,))
  np.testing.assert_array_equal(greedy[0], [[BW, BW, BW]] * 2)
  np.testing.assert_allclose(greedy[1], np.log(0.3 * 0.3 * 0.3), rtol=1e-5)
  # The beam's best without 'a': 'b eos' (0.03) over 'b b b' (0.027).
  beam = decoding.beam_search(step, state, 2, beam=2, bos=BOS, eos=EOS, max_length=3,
                              banned=(A,))
  np.testing.assert_array_equal(beam[0], [[BW, EOS, EOS]] * 2)
  np.testing.assert_allclose(beam[1], np.log(0.3 * 0.1), rtol=1e-5)


def test_what_every_hypothesis_of_a_video_reads_is_passed_not_carried():
  # A per-video context (an encoder's output) given as `shared` decodes as the same
  # context carried in the state does, and the carried state holds none of it.
  rng = np.random.default_rng(1)
  table = jax.nn.softmax(jnp.asarray(rng.standard_normal((7, 7)) * 3), axis=-1)
  context = jnp.asarray(rng.standard_normal((3, 7)), jnp.float32)
  counter = jnp.zeros((3,), jnp.int32)   # a state that changes: steps taken
  scores = lambda c, w, n: jax.nn.log_softmax(jnp.log(table[w]) + c * (1 + n[:, None]))
  carried = lambda s, w: (scores(s[0], w, s[1]), (s[0], s[1] + 1))
  seen = []

  def passed(n, w, c):
    seen.append(jax.tree.map(jnp.shape, n))
    return scores(c, w, n), n + 1
  for search, options in ((decoding.greedy, {}), (decoding.beam_search, {"beam": 3})):
    want = search(carried, (context, counter), 3, bos=0, eos=1, max_length=6, **options)
    got = search(passed, counter, 3, bos=0, eos=1, max_length=6, shared=context,
                 **options)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
  assert set(seen) == {(3,), (9,)}   # the state alone: [B], then [B * beam]
