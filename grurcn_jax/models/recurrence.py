"""The GRU-RCN recurrence as pure JAX functions, with a hand-written VJP.

Everything here works on arrays (no Flax variables), so the cell, the `nn.scan`
sequence layer and the fused layer share one definition of the gate equations.
Nothing here depends on the platform: how a kernel gradient is computed and
whether the time loop is unrolled are `backend_tuning`'s choices.

Why a custom VJP: autodiff through `lax.scan` computes the gradient of the
hidden-to-hidden convolution WEIGHTS inside the backward loop, one small
convolution per time step (on XLA:CPU about 20x slower than the same work done
once). `convgru_sequence` runs the input convolution of all frames as one batched
convolution, a forward loop that keeps what the backward pass needs, a backward
loop that computes only state and gate gradients, and then each weight gradient
as one convolution over all B*T frames.

Layout: everything stays batch-major, [B, T, H, W, C]; the loops read and write
frame t along axis 1. Merging (B, T) into B*T frames is then a free reshape that
keeps a batch-sharded axis sharded (a time-major merge would put the sharded axis
inside and make every device gather the whole batch), and no transposes or flips
are needed, in either direction.
"""

import functools
from typing import Callable, NamedTuple, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp

from grurcn_jax.models import backend_tuning
from grurcn_jax.models.backend_tuning import conv2d

Array = jax.Array


def gate_update(input_proj: Array, hidden_gates_proj: Array, h: Array,
                candidate_conv: Callable[[Array], Array]):
  """One GRU-RCN update from precomputed convolutions.

  z = s(W_z*x + U_z*h), r = s(W_r*x + U_r*h), c = tanh(W*x + U*(r.h)),
  h' = (1 - z).h + z.c.

  Args:
    input_proj: W * x_t (+ bias), channels in the order (z, r, candidate).
    hidden_gates_proj: U_z * h and U_r * h, channels (z, r).
    h: h_{t-1}.
    candidate_conv: q -> U * q, applied to r . h_{t-1} (the reset gate acts BEFORE
      the candidate convolution).

  Returns:
    h_t and the intermediates (z, r, candidate) the backward pass needs.
  """
  x_z, x_r, x_c = jnp.split(input_proj, 3, axis=-1)
  h_z, h_r = jnp.split(hidden_gates_proj, 2, axis=-1)
  z = jax.nn.sigmoid(x_z + h_z)
  r = jax.nn.sigmoid(x_r + h_r)
  candidate = jnp.tanh(x_c + candidate_conv(r * h))
  # (1 - z) . h + z . candidate: z weights the NEW candidate.
  h_new = h + z * (candidate - h)
  return h_new, (z, r, candidate)


def step(input_proj: Array, h: Array, gates_kernel: Array,
         candidate_kernel: Array):
  """gate_update with the hidden convolutions done by kernels."""
  return gate_update(input_proj, conv2d(h, gates_kernel), h,
                     lambda q: conv2d(q, candidate_kernel))


def step_backward(dh, h, z, r, candidate, gates_kernel, candidate_kernel):
  """One step back through gate_update: dL/dh_t -> (dL/dh_{t-1}, gradients of the
  gate pre-activations (z, r) and of the candidate's)."""
  d_z = dh * (candidate - h) * z * (1 - z)        # through the sigmoid
  d_c = dh * z * (1 - candidate * candidate)      # through the tanh
  d_q = backend_tuning.input_gradient(candidate_kernel, d_c)
  d_r = d_q * h * r * (1 - r)
  d_gates = jnp.concatenate([d_z, d_r], axis=-1)
  dh_prev = (dh * (1 - z) + d_q * r
             + backend_tuning.input_gradient(gates_kernel, d_gates))
  return dh_prev, d_gates, d_c


class SequenceOptions(NamedTuple):
  """Static settings of `convgru_sequence` (see there)."""
  reverse: bool = False
  remat: bool = False
  unroll: Union[int, str] = "auto"
  kernel_gradient: str = "auto"


def convgru_sequence(inputs: Array, input_kernel: Array, input_bias: Array,
                     h0: Array, gates_kernel: Array, candidate_kernel: Array,
                     gate_inputs: Optional[Array] = None, *, reverse: bool = False,
                     remat: bool = False, unroll: Union[int, str] = "auto",
                     kernel_gradient: str = "auto") -> Array:
  """A GRU-RCN layer over a clip: every hidden state, batch-major.

  Args:
    inputs: [B, T, H, W, C] frames, any float dtype (kept as they are; cast to the
      compute dtype where convolved, so float16 features are never copied whole).
    input_kernel: [kh, kw, C, 3F], channels (z, r, candidate); input_bias: [3F].
    h0: [B, H, W, F] initial state.
    gates_kernel: [kh, kw, F, 2F] (z, r); candidate_kernel: [kh, kw, F, F].
    gate_inputs: None or [B, T, H, W, 2F], added to the z and r pre-activations
      (the stacked model's lower-level input).
    reverse: run from the last frame to the first; states stay aligned with their
      frames.
    remat: keep only the inputs and the states for the backward pass and
      recompute each step's input convolution and gates there (long clips), adding
      up the weight gradients step by step; else keep the gates too and compute
      each weight gradient once over all frames.
    unroll: loop unroll factor, or 'auto' (`backend_tuning.time_loop`).
    kernel_gradient: see `backend_tuning.KERNEL_GRADIENTS`.

  The compute dtype is the kernels' (cast them, h0 and gate_inputs to it).

  Returns:
    [B, T, H, W, F]: the state after each frame.
  """
  backend_tuning.check_kernel_gradient(kernel_gradient)
  backend_tuning.check_unroll(unroll)
  options = SequenceOptions(bool(reverse), bool(remat), unroll, kernel_gradient)
  return _sequence(options, inputs, input_kernel, input_bias, gate_inputs, h0,
                   gates_kernel, candidate_kernel)


# -- helpers: frame t of a batch-major sequence, B*T frames, recurrence order ----

def _frame(a: Array, t) -> Array:
  return lax.dynamic_index_in_dim(a, t, axis=1, keepdims=False)


def _put(buffer: Array, t, value: Array) -> Array:
  return lax.dynamic_update_index_in_dim(buffer, value.astype(buffer.dtype), t, axis=1)


def _frames(a: Array) -> Array:
  """[B, T, ...] -> [B*T, ...], batch-major: a free reshape, sharding kept."""
  return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])


def _frame_index(options: SequenceOptions, num_steps: int, i):
  """The frame that the recurrence's i-th step reads."""
  return num_steps - 1 - i if options.reverse else i


def _project(x: Array, input_kernel: Array, input_bias: Array) -> Array:
  """W * x + b of frames [N, H, W, C] in the kernels' dtype."""
  return conv2d(x.astype(input_kernel.dtype), input_kernel) + input_bias


def _add_gate_inputs(proj: Array, gate_inputs: Optional[Array]) -> Array:
  if gate_inputs is None:
    return proj
  gates, candidate = jnp.split(proj, [gate_inputs.shape[-1]], axis=-1)
  return jnp.concatenate([gates + gate_inputs, candidate], axis=-1)


def _previous_states(options: SequenceOptions, h0: Array, states: Array) -> Array:
  """[B, T, ...]: the state each frame's step started from."""
  if options.reverse:
    return jnp.concatenate([states[:, 1:], h0[:, None]], axis=1)
  return jnp.concatenate([h0[:, None], states[:, :-1]], axis=1)


# -- the layer ----------------------------------------------------------------

_ARGUMENTS = ("inputs", "input_kernel", "input_bias", "gate_inputs", "h0",
              "gates_kernel", "candidate_kernel")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sequence(options, inputs, input_kernel, input_bias, gate_inputs, h0,
              gates_kernel, candidate_kernel):
  states, _ = _run_forward(options, inputs, input_kernel, input_bias, gate_inputs,
                           h0, gates_kernel, candidate_kernel, keep_gates=False)
  return states


def _run_forward(options, inputs, input_kernel, input_bias, gate_inputs, h0,
                 gates_kernel, candidate_kernel, keep_gates):
  """The forward loop; also returns z, r, candidate ([B, T, H, W, 3F]) if asked."""
  batch, num_steps = inputs.shape[:2]
  proj = None
  if not options.remat:  # one convolution over all B*T frames
    proj = _project(_frames(inputs), input_kernel, input_bias)
    proj = proj.reshape((batch, num_steps) + proj.shape[1:])
  states = jnp.zeros((batch, num_steps) + h0.shape[1:], h0.dtype)
  gates = (jnp.zeros(states.shape[:-1] + (3 * h0.shape[-1],), h0.dtype)
           if keep_gates else None)

  def body(carry, i):
    h, states, gates = carry
    t = _frame_index(options, num_steps, i)
    a = (_frame(proj, t) if proj is not None
         else _project(_frame(inputs, t), input_kernel, input_bias))
    a = _add_gate_inputs(a, None if gate_inputs is None else _frame(gate_inputs, t))
    h_new, (z, r, candidate) = step(a, h, gates_kernel, candidate_kernel)
    states = _put(states, t, h_new)
    if gates is not None:
      gates = _put(gates, t, jnp.concatenate([z, r, candidate], axis=-1))
    return (h_new, states, gates), None

  _, states, gates = backend_tuning.time_loop(body, (h0, states, gates), num_steps,
                                              options.unroll)
  return states, gates


def _sequence_forward(options, *primals):
  # symbolic_zeros: each argument comes with whether it is differentiated, so the
  # backward pass skips the input gradient of features nobody differentiates.
  values = [None if p is None else p.value for p in primals]
  wanted = {name: None for name, p in zip(_ARGUMENTS, primals)
            if p is not None and p.perturbed}   # names in the tree's structure
  states, gates = _run_forward(options, *values, keep_gates=not options.remat)
  return states, (*values, states, gates, wanted)


def _sequence_backward(options, residuals, states_cotangent):
  (inputs, input_kernel, input_bias, gate_inputs, h0, gates_kernel,
   candidate_kernel, states, gates, wanted) = residuals
  if isinstance(states_cotangent, jax.custom_derivatives.SymbolicZero):
    states_cotangent = jnp.zeros(states.shape, states.dtype)
  states_cotangent = states_cotangent.astype(states.dtype)
  num_steps = inputs.shape[1]
  dtype = h0.dtype
  features = h0.shape[-1]
  method = options.kernel_gradient

  def previous_state(t):
    first = t == (num_steps - 1 if options.reverse else 0)
    before = jnp.clip(t + 1 if options.reverse else t - 1, 0, num_steps - 1)
    return jnp.where(first, h0, _frame(states, before))

  def body(carry, i):
    dh_carry, buffers, sums = carry
    t = _frame_index(options, num_steps, num_steps - 1 - i)  # backwards in time
    h = previous_state(t)
    if options.remat:
      # Where the loops are unrolled, the barrier ties the recomputation to the
      # incoming gradient: XLA can then neither share it with the forward pass's
      # (equal) one nor run it early, either of which would keep every step's
      # gates alive and undo remat.
      x_t, h, dh_carry = lax.optimization_barrier(
          (_frame(inputs, t).astype(dtype), h, dh_carry))
      a = _add_gate_inputs(_project(x_t, input_kernel, input_bias),
                           None if gate_inputs is None else _frame(gate_inputs, t))
      _, (z, r, candidate) = step(a, h, gates_kernel, candidate_kernel)
    else:
      z, r, candidate = jnp.split(_frame(gates, t), 3, axis=-1)
    dh_prev, d_gates, d_candidate = step_backward(
        _frame(states_cotangent, t) + dh_carry, h, z, r, candidate, gates_kernel,
        candidate_kernel)
    if not options.remat:
      buffers = dict(d_gates=_put(buffers["d_gates"], t, d_gates),
                     d_candidate=_put(buffers["d_candidate"], t, d_candidate))
      return (dh_prev, buffers, sums), None
    # remat: weight gradients added up step by step, over this step's B frames.
    d_proj = jnp.concatenate([d_gates, d_candidate], axis=-1)
    gradient = functools.partial(backend_tuning.kernel_gradient, method=method,
                                 in_loop=True)
    sums = dict(
        input_kernel=sums["input_kernel"] + gradient(x_t, d_proj, input_kernel.shape),
        input_bias=sums["input_bias"] + jnp.sum(d_proj, axis=(0, 1, 2),
                                                dtype=jnp.float32),
        gates_kernel=sums["gates_kernel"] + gradient(h, d_gates, gates_kernel.shape),
        candidate_kernel=sums["candidate_kernel"] + gradient(
            r * h, d_candidate, candidate_kernel.shape))
    if "inputs" in buffers:
      buffers["inputs"] = _put(buffers["inputs"], t,
                               backend_tuning.input_gradient(input_kernel, d_proj))
    if "gate_inputs" in buffers:
      buffers["gate_inputs"] = _put(buffers["gate_inputs"], t, d_gates)
    return (dh_prev, buffers, sums), None

  zeros = lambda shape, dtype=dtype: jnp.zeros(shape, dtype)
  sequence = states.shape[:-1]
  if options.remat:
    buffers = {}
    if "inputs" in wanted:
      buffers["inputs"] = zeros(inputs.shape, inputs.dtype)
    if "gate_inputs" in wanted:
      buffers["gate_inputs"] = zeros(gate_inputs.shape)
    sums = {name: zeros(a.shape, jnp.float32) for name, a in (
        ("input_kernel", input_kernel), ("input_bias", input_bias),
        ("gates_kernel", gates_kernel), ("candidate_kernel", candidate_kernel))}
  else:
    buffers = dict(d_gates=zeros(sequence + (2 * features,)),
                   d_candidate=zeros(sequence + (features,)))
    sums = {}
  dh0, buffers, sums = backend_tuning.time_loop(
      body, (jnp.zeros_like(h0), buffers, sums), num_steps, options.unroll)

  if options.remat:
    d_inputs = buffers.get("inputs")
    d_gate_inputs = buffers.get("gate_inputs")
  else:
    # The weight gradients: one convolution each over all B*T frames.
    d_gates, d_candidate = _frames(buffers["d_gates"]), _frames(buffers["d_candidate"])
    previous = _frames(_previous_states(options, h0, states))
    _, r, _ = jnp.split(_frames(gates), 3, axis=-1)
    x = _frames(inputs).astype(dtype)
    gradient = functools.partial(backend_tuning.kernel_gradient, method=method)
    sums = dict(
        # Gates and candidate columns as two cotangents: the backend decides
        # whether to concatenate them.
        input_kernel=gradient(x, (d_gates, d_candidate), input_kernel.shape),
        input_bias=jnp.concatenate([jnp.sum(d_gates, (0, 1, 2), dtype=jnp.float32),
                                    jnp.sum(d_candidate, (0, 1, 2), dtype=jnp.float32)]),
        gates_kernel=gradient(previous, d_gates, gates_kernel.shape),
        candidate_kernel=gradient(r * previous, d_candidate, candidate_kernel.shape))
    d_inputs = None
    if "inputs" in wanted:
      d_inputs = (backend_tuning.input_gradient(input_kernel[..., :2 * features], d_gates)
                  + backend_tuning.input_gradient(input_kernel[..., 2 * features:],
                                                d_candidate)).reshape(inputs.shape)
    d_gate_inputs = (buffers["d_gates"] if "gate_inputs" in wanted else None)

  cast = lambda g, like: None if g is None else g.astype(like.dtype)
  return (cast(d_inputs, inputs),
          cast(sums["input_kernel"], input_kernel),
          cast(sums["input_bias"], input_bias),
          cast(d_gate_inputs, gate_inputs) if gate_inputs is not None else None,
          cast(dh0, h0) if "h0" in wanted else None,
          cast(sums["gates_kernel"], gates_kernel),
          cast(sums["candidate_kernel"], candidate_kernel))


_sequence.defvjp(_sequence_forward, _sequence_backward, symbolic_zeros=True)
