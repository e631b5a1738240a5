"""Greedy and beam-search decoding of token sequences, jit-compiled and batched.

Generic over the model: `step(state, tokens) -> (log_probs, state)` takes the
previous token of every hypothesis ([N] int32) and its decoder state (a pytree of
[N, ...] arrays) and gives the next token's log-probabilities ([N, V] float32).
With `shared` (per video, [B, ...]: what every hypothesis of a video reads and
none changes, e.g. the encoder's output) the step is `step(state, tokens,
shared)`: it is repeated for the beams once, not carried and gathered each step.
Both loops have a fixed number of iterations (`max_length`), so they compile
once per shape (`lax.scan`); finished hypotheses only ever extend with `eos` at
no cost. `banned` tokens are never written (e.g. `<unk>`, `<pad>`, `<bos>`).
"""

from typing import Any, Callable, Sequence, Tuple

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
Step = Callable[[Any, Array], Tuple[Array, Any]]


def _without(step: Step, banned: Sequence[int]) -> Step:
  """`step` whose `banned` tokens have log-probability -inf."""
  if not len(banned):
    return step

  def allowed(state, tokens):
    log_probs, state = step(state, tokens)
    return log_probs.at[:, jnp.asarray(banned, jnp.int32)].set(-jnp.inf), state
  return allowed


def _reading(step, shared) -> Step:
  """`step` as a Step: `shared` passed to it, when there is any."""
  if shared is None:
    return step
  return lambda state, tokens: step(state, tokens, shared)


def greedy(step: Step, state: Any, batch: int, *, bos: int, eos: int,
           max_length: int, banned: Sequence[int] = (),
           shared: Any = None) -> Tuple[Array, Array]:
  """The most likely next token at every step: ([B, max_length] tokens after
  `bos`, eos-padded; [B] their total log-probability)."""
  step = _without(_reading(step, shared), banned)

  def body(carry, _):
    tokens, state, score, done = carry
    log_probs, state = step(state, tokens)
    best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    best = jnp.where(done, eos, best)
    score = score + jnp.where(done, 0.0, jnp.take_along_axis(
        log_probs, best[:, None], axis=-1)[:, 0])
    return (best, state, score, done | (best == eos)), best

  start = jnp.full((batch,), bos, jnp.int32)
  (_, _, score, _), tokens = lax.scan(
      body, (start, state, jnp.zeros((batch,), jnp.float32),
             jnp.zeros((batch,), bool)), None, length=max_length)
  return tokens.T, score


def beam_search(step: Step, state: Any, batch: int, *, beam: int, bos: int, eos: int,
                max_length: int, banned: Sequence[int] = (),
                shared: Any = None) -> Tuple[Array, Array]:
  """The `beam` best hypotheses by total log-probability, kept at every step:
  ([B, max_length] the best one's tokens, eos-padded; [B] its log-probability).
  `state` and `shared` are per video ([B, ...]); they are repeated for the beams
  here, and only `state` follows its hypotheses."""

  def tile(x):  # [B, ...] -> [B * beam, ...], each video's beams together
    return jnp.repeat(x, beam, axis=0)

  if shared is not None:
    shared = jax.tree.map(tile, shared)
  step = _without(_reading(step, shared), banned)

  def body(carry, t):
    tokens, state, scores, done, history = carry      # [B*K], ..., [B, K], [B, K]
    log_probs, state = step(state, tokens)             # [B*K, V]
    size = log_probs.shape[-1]
    log_probs = log_probs.reshape(batch, beam, size)
    # A finished hypothesis continues only with eos, at no cost.
    finished = jnp.full((size,), -jnp.inf).at[eos].set(0.0)
    log_probs = jnp.where(done[..., None], finished, log_probs)
    candidates = (scores[..., None] + log_probs).reshape(batch, beam * size)
    scores, flat = lax.top_k(candidates, beam)          # [B, K]
    parent, token = flat // size, (flat % size).astype(jnp.int32)
    gather = lambda x: jnp.take_along_axis(x, parent, axis=1)
    done = gather(done) | (token == eos)
    history = jnp.take_along_axis(history, parent[..., None], axis=1)
    history = history.at[:, :, t].set(token)
    rows = (parent + jnp.arange(batch)[:, None] * beam).reshape(-1)
    state = jax.tree.map(lambda x: x[rows], state)
    return (token.reshape(-1), state, scores, done, history), None

  # At the start every beam of a video is the same hypothesis: only the first
  # may extend, or the beam would fill with copies.
  scores = jnp.tile(jnp.array([0.0] + [-jnp.inf] * (beam - 1), jnp.float32),
                    (batch, 1))
  carry = (jnp.full((batch * beam,), bos, jnp.int32), jax.tree.map(tile, state),
           scores, jnp.zeros((batch, beam), bool),
           jnp.full((batch, beam, max_length), eos, jnp.int32))
  (_, _, scores, _, history), _ = lax.scan(body, carry, jnp.arange(max_length))
  return history[:, 0], scores[:, 0]
