"""The captioning decoder: an LSTM with soft attention over a video's segment
vectors (Yao et al. 2015, "Describing Videos by Exploiting Temporal Structure"),
the decoder of the paper's captioning experiments.

For segment vectors v_1..v_K and the previous word y_{t-1}:

    e_i     = w^T tanh(W_d h_{t-1} + W_c v_i + b)        attention scores
    alpha   = softmax(e);  phi_t = sum_i alpha_i v_i      the attended context
    i, f, o, g = split(W_x E[y_{t-1}] + U h_{t-1} + C phi_t + b_g)
    c_t = sig(f) c_{t-1} + sig(i) tanh(g);  h_t = sig(o) tanh(c_t)
    p(y_t)  = softmax(W_o tanh(W_l h_t + E[y_{t-1}] + W_ctx phi_t) + b_o)

with h_0 = tanh(W_h mean(v) + b_h), c_0 = tanh(W_m mean(v) + b_m). Dropout acts
on the output layer's input in training.
"""

from typing import Any, Optional, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
State = Tuple[Array, Array]   # (h, c)


class AttentionLSTMDecoder(nn.Module):
  """Teacher-forced log-probabilities (`__call__`), or one step (`step`) for
  greedy and beam-search decoding (`decoding.py`)."""

  vocab_size: int
  embed_dim: int = 256
  hidden: int = 512
  attention_dim: int = 256
  dropout_rate: float = 0.5
  dtype: Optional[Any] = None

  def setup(self):
    dense = lambda n, bias=True, name=None: nn.Dense(
        n, use_bias=bias, dtype=self.dtype, name=name)
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, name="embed")
    self.attend_hidden = dense(self.attention_dim, False, "attend_hidden")     # W_d
    self.attend_context = dense(self.attention_dim, True, "attend_context")    # W_c, b
    self.attend_score = dense(1, False, "attend_score")                        # w
    self.gates_word = dense(4 * self.hidden, True, "gates_word")               # W_x, b_g
    self.gates_hidden = dense(4 * self.hidden, False, "gates_hidden")          # U
    self.gates_context = dense(4 * self.hidden, False, "gates_context")        # C
    self.init_hidden = dense(self.hidden, True, "init_hidden")                 # W_h
    self.init_cell = dense(self.hidden, True, "init_cell")                     # W_m
    self.out_hidden = dense(self.embed_dim, False, "out_hidden")               # W_l
    self.out_context = dense(self.embed_dim, False, "out_context")             # W_ctx
    self.out_logits = dense(self.vocab_size, True, "out_logits")               # W_o
    self.dropout = nn.Dropout(self.dropout_rate)

  def start(self, segments: Array) -> Tuple[State, Array]:
    """The initial state and the segments' attention projection (once per video)
    of segment vectors [B, K, D]."""
    mean = jnp.mean(segments, axis=1)
    state = (jnp.tanh(self.init_hidden(mean)), jnp.tanh(self.init_cell(mean)))
    return state, self.attend_context(segments)

  def step(self, state: State, words: Array, segments: Array, projected: Array, *,
           train: bool = False) -> Tuple[State, Array, Array]:
    """One word: (state after it, log-probabilities of the next [B, V] float32,
    attention weights [B, K])."""
    h, c = state
    scores = self.attend_score(jnp.tanh(self.attend_hidden(h)[:, None] + projected))
    alpha = jax.nn.softmax(scores[..., 0].astype(jnp.float32), axis=-1)
    context = jnp.einsum("bk,bkd->bd", alpha.astype(segments.dtype), segments)
    word = self.embed(words)
    gates = self.gates_word(word) + self.gates_hidden(h) + self.gates_context(context)
    i, f, o, g = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    out = jnp.tanh(self.out_hidden(h) + word + self.out_context(context))
    logits = self.out_logits(self.dropout(out, deterministic=not train))
    return (h, c), jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), alpha

  def __call__(self, segments: Array, words: Array, *, train: bool = False):
    """Teacher forcing: `words` [B, L] are the inputs (bos, w_1, ..., w_{L-1});
    returns log-probabilities of each next word [B, L, V] and the attention
    weights [B, L, K]."""
    state, projected = self.start(segments)

    def body(decoder, state, word):
      state, log_probs, alpha = decoder.step(state, word, segments, projected,
                                             train=train)
      return state, (log_probs, alpha)

    # A loop over the words running `step`, the one definition the decoders use:
    # unrolled, every word added about a second to compiling the train step (tiny
    # model, CPU), 30 for MSVD's captions. One parameter set for all words; fresh
    # dropout at each.
    words_loop = nn.scan(body, variable_broadcast="params",
                         split_rngs={"params": False, "dropout": True},
                         in_axes=1, out_axes=1)
    _, (log_probs, alphas) = words_loop(self, state, words)
    return log_probs, alphas


def caption_loss(log_probs: Array, targets: Array, mask: Array, alphas: Array,
                 attention_weight: float, segments: Optional[int] = None) -> Array:
  """Mean negative log-likelihood per caption word (mask 0: padding) plus
  attention_weight * sum_i (1 - sum_t alpha_ti)^2, which pushes every segment to
  be attended to about once over the caption (Yao et al.), averaged over videos.

  With spatial attention the K weights are `segments` groups of positions, and a
  segment's weight is its positions' sum: the regulariser asks each segment to be
  attended to once, as without it; per position it would ask a caption of a few
  words to cover K >> words positions, and reward spreading every word evenly."""
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  words = jnp.maximum(jnp.sum(mask), 1.0)
  if segments is not None:
    alphas = jnp.sum(alphas.reshape(alphas.shape[:2] + (segments, -1)), axis=-1)
  coverage = jnp.sum(alphas * mask[..., None], axis=1)          # [B, K]
  regulariser = jnp.mean(jnp.sum(jnp.square(1.0 - coverage), axis=-1))
  return jnp.sum(nll * mask) / words + attention_weight * regulariser
