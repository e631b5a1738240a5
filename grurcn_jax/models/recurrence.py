"""The GRU-RCN recurrence as pure JAX functions, with a hand-written VJP.

Everything here works on arrays (no Flax variables), so the cell, the `nn.scan`
sequence layer and the fused recurrence share one definition of the gate equations.

Why a custom VJP: autodiff through `lax.scan` computes the gradient of the
hidden-to-hidden convolution WEIGHTS inside the backward loop, one small
convolution per time step. On XLA:CPU that is about 20x slower than the same work
done once (and compiles ~15x slower); on GPU/TPU it wastes the larger, better-shaped
convolution too. `fused_recurrence` saves what the backward pass needs in the forward
scan, runs a backward scan that computes only input and hidden-state gradients, and
then computes each weight gradient as one convolution over all T*B frames.
"""

import functools
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv2d(x: Array, kernel: Array) -> Array:
  """Stride-1 'SAME' 2-D convolution, NHWC x HWIO, as `flax.linen.Conv` does it."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding="SAME",
      dimension_numbers=_DIMENSION_NUMBERS)


def gate_update(input_proj: Array, hidden_gates_proj: Array, h: Array,
                candidate_conv: Callable[[Array], Array]):
  """One GRU-RCN update from precomputed convolutions (PAPER.md, "Cell").

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


def _input_transpose(kernel: Array, cotangent: Array) -> Array:
  """Gradient of conv2d(x, kernel) with respect to x."""
  x_shape = cotangent.shape[:-1] + (kernel.shape[2],)
  transpose = jax.linear_transpose(
      lambda x: conv2d(x, kernel), jax.ShapeDtypeStruct(x_shape, cotangent.dtype))
  return transpose(cotangent)[0]


# Kernels with at least this many input x output channels take the per-tap
# products below; narrower ones are faster as XLA's transposed convolution.
_WIDE_KERNEL = 256 * 256


def _kernel_transpose(x: Array, cotangent: Array, kernel: Array) -> Array:
  """Gradient of conv2d(x, kernel) with respect to kernel, summed over x's batch.

  For wide kernels, one matrix product per kernel tap over every frame and position
  (`_tap_products`) instead of XLA's transposed convolution: on XLA:CPU that one
  slows down sharply with the batch (about 18x the time for 4x the frames at pool4
  size), while these products stay at matrix-multiply speed.
  """
  if kernel.shape[2] * kernel.shape[3] < _WIDE_KERNEL:
    transpose = jax.linear_transpose(
        lambda k: conv2d(x, k), jax.ShapeDtypeStruct(kernel.shape, x.dtype))
    return transpose(cotangent)[0].astype(kernel.dtype)
  return _tap_products(x, cotangent, kernel.shape).astype(kernel.dtype)


# Rows (frames x positions) per chunk of the kernel-gradient products, so that the
# cost stays linear in the frames: at 14x14x512, 320 frames in one product took 1.4x
# as long as 40 chunks of 8 (XLA:CPU).
_CHUNK_ROWS = 2048


def _tap_products(x: Array, cotangent: Array, kernel_shape) -> Array:
  """The kernel gradient of a 'SAME' conv2d as kh*kw matrix products (float32),
  in a loop over the taps (one shifted copy of x alive at a time) and over chunks
  of frames, so the cost stays linear in the number of frames."""
  n, height, width = x.shape[:3]
  target = max(1, _CHUNK_ROWS // (height * width))
  chunk = max(d for d in range(1, min(n, target) + 1) if n % d == 0)
  if chunk == n:
    return _tap_products_of_chunk(x, cotangent, kernel_shape)
  split = lambda a: a.reshape((n // chunk, chunk) + a.shape[1:])

  def add_chunk(total, chunk_arrays):
    return total + _tap_products_of_chunk(*chunk_arrays, kernel_shape), None

  total, _ = lax.scan(add_chunk, jnp.zeros(tuple(kernel_shape), jnp.float32),
                      (split(x), split(cotangent)))
  return total


def _tap_products_of_chunk(x: Array, cotangent: Array, kernel_shape) -> Array:
  kh, kw = kernel_shape[:2]
  n, height, width, channels = x.shape
  top, left = (kh - 1) // 2, (kw - 1) // 2      # 'SAME', as lax pads it
  padded = jnp.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))

  def tap(_, offset):
    window = lax.dynamic_slice(padded, (0, offset[0], offset[1], 0),
                               (n, height, width, channels))
    return None, jnp.einsum("nhwc,nhwo->co", window, cotangent,
                            preferred_element_type=jnp.float32)

  offsets = jnp.array([(i, j) for i in range(kh) for j in range(kw)], jnp.int32)
  _, taps = lax.scan(tap, None, offsets)
  return taps.reshape(tuple(kernel_shape))


@jax.custom_vjp
def batched_conv2d(x: Array, kernel: Array) -> Array:
  """conv2d whose kernel gradient is `_kernel_transpose`: for the convolutions over
  all B*T frames at once (the input and stacked-gate convolutions)."""
  return conv2d(x, kernel)


def _batched_conv2d_forward(x, kernel):
  return conv2d(x, kernel), (x, kernel)


def _batched_conv2d_backward(residuals, cotangent):
  x, kernel = residuals
  return (_input_transpose(kernel, cotangent),
          _kernel_transpose(x, cotangent.astype(x.dtype), kernel))


batched_conv2d.defvjp(_batched_conv2d_forward, _batched_conv2d_backward)


def flax_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                              rhs_dilation=None, dimension_numbers=None,
                              feature_group_count=1, precision=None):
  """Drop-in for `nn.Conv(conv_general_dilated=...)`: the stride-1 'SAME' NHWC
  convolutions of this package go through `batched_conv2d`, anything else to lax."""
  plain = (tuple(window_strides) == (1, 1) and padding == "SAME"
           and not any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
           and feature_group_count == 1 and lhs.ndim == 4
           and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
           and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1))
  if plain:
    return batched_conv2d(lhs, rhs)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers,
                                  feature_group_count=feature_group_count,
                                  precision=precision)


def _merge_time_batch(x: Array) -> Array:
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def fused_recurrence(input_proj: Array, h0: Array, gates_kernel: Array,
                     candidate_kernel: Array, unroll: int = 1) -> Array:
  """Runs the recurrence over time; returns every hidden state.

  Args:
    input_proj: [T, B, H, W, 3F] input convolutions of all frames, time-major.
    h0: [B, H, W, F] initial state.
    gates_kernel: [kh, kw, F, 2F] hidden-to-gates kernel (z, r).
    candidate_kernel: [kh, kw, F, F] hidden-to-candidate kernel.
    unroll: scan unroll factor.

  Returns:
    [T, B, H, W, F]: h_1 .. h_T.
  """
  def body(h, a):
    h_new, _ = step(a, h, gates_kernel, candidate_kernel)
    return h_new, h_new
  _, states = lax.scan(body, h0, input_proj, unroll=unroll)
  return states


def _fused_forward(input_proj, h0, gates_kernel, candidate_kernel, unroll):
  def body(h, a):
    h_new, (z, r, candidate) = step(a, h, gates_kernel, candidate_kernel)
    return h_new, (h_new, z, r, candidate)
  _, (states, z, r, candidate) = lax.scan(body, h0, input_proj, unroll=unroll)
  return states, (h0, states, z, r, candidate, gates_kernel, candidate_kernel)


def _step_backward(dh, h, z, r, candidate, gates_kernel, candidate_kernel):
  """One step back through gate_update: dL/dh_t -> (dL/dh_{t-1}, gradients of the
  gate pre-activations (z, r) and of the candidate's)."""
  d_z = dh * (candidate - h) * z * (1 - z)        # through the sigmoid
  d_c = dh * z * (1 - candidate * candidate)      # through the tanh
  d_q = _input_transpose(candidate_kernel, d_c)
  d_r = d_q * h * r * (1 - r)
  d_gates = jnp.concatenate([d_z, d_r], axis=-1)
  dh_prev = dh * (1 - z) + d_q * r + _input_transpose(gates_kernel, d_gates)
  return dh_prev, d_gates, d_c


def _fused_backward(unroll, residuals, states_cotangent):
  h0, states, z, r, candidate, gates_kernel, candidate_kernel = residuals
  previous = jnp.concatenate([h0[None], states[:-1]], axis=0)  # h_{t-1} for each t

  def body(dh_carry, xs):
    dh_out, h, z_t, r_t, c_t = xs
    dh_prev, d_gates, d_c = _step_backward(dh_out + dh_carry, h, z_t, r_t, c_t,
                                           gates_kernel, candidate_kernel)
    return dh_prev, (d_gates, d_c)

  dh0, (d_gates, d_candidate) = lax.scan(
      body, jnp.zeros_like(h0), (states_cotangent, previous, z, r, candidate),
      reverse=True, unroll=unroll)
  d_input_proj = jnp.concatenate([d_gates, d_candidate], axis=-1)
  # The weight gradients: one convolution each over all T*B frames.
  d_gates_kernel = _kernel_transpose(
      _merge_time_batch(previous), _merge_time_batch(d_gates), gates_kernel)
  d_candidate_kernel = _kernel_transpose(
      _merge_time_batch(r * previous), _merge_time_batch(d_candidate),
      candidate_kernel)
  return d_input_proj, dh0, d_gates_kernel, d_candidate_kernel


fused_recurrence.defvjp(_fused_forward, _fused_backward)


# ---------------------------------------------------------------------------
# Rematerialised recurrence: memory per step is the input frame and the state.

def _input_projection(x: Array, input_kernel: Array, input_bias: Array,
                      extra_gates) -> Array:
  """W * x_t + b (channels z, r, candidate), plus optional extra gate inputs."""
  proj = conv2d(x.astype(input_kernel.dtype), input_kernel) + input_bias
  if extra_gates is None:
    return proj
  gates, candidate = jnp.split(proj, [extra_gates.shape[-1]], axis=-1)
  return jnp.concatenate([gates + extra_gates, candidate], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def remat_recurrence(inputs: Array, input_kernel: Array, input_bias: Array,
                     extra_gates, h0: Array, gates_kernel: Array,
                     candidate_kernel: Array, unroll: int = 1) -> Array:
  """`fused_recurrence(conv2d(inputs, input_kernel) + input_bias, ...)` that keeps
  only the inputs (in their own dtype) and the states for the backward pass.

  The backward loop recomputes each step's input convolution and gates, and adds up
  every kernel gradient step by step as matrix products per tap (not XLA's
  transposed convolution, which is slow inside a loop on XLA:CPU). Compared with
  `fused_recurrence` this drops z, r, the candidate, the batched input projection and
  its gradient (about 2.6x the state's size per frame) for one more input
  convolution per step.

  Args:
    inputs: [T, B, H, W, C], any float dtype (cast per step to the kernels' dtype).
    input_kernel: [kh, kw, C, 3F]; input_bias: [3F].
    extra_gates: None or [T, B, H, W, 2F], added to the z and r pre-activations
      (the stacked model's lower-level input).
    h0, gates_kernel, candidate_kernel, unroll: as in `fused_recurrence`.
  """
  states, _ = _remat_forward(inputs, input_kernel, input_bias, extra_gates, h0,
                             gates_kernel, candidate_kernel, unroll)
  return states


def _remat_forward(inputs, input_kernel, input_bias, extra_gates, h0, gates_kernel,
                   candidate_kernel, unroll):
  def body(h, xs):
    x_t, extra_t = xs
    proj = _input_projection(x_t, input_kernel, input_bias, extra_t)
    h_new, _ = step(proj, h, gates_kernel, candidate_kernel)
    return h_new, h_new
  _, states = lax.scan(body, h0, (inputs, extra_gates), unroll=unroll)
  return states, (inputs, input_kernel, input_bias, extra_gates, h0, states,
                  gates_kernel, candidate_kernel)


def _remat_backward(unroll, residuals, states_cotangent):
  (inputs, input_kernel, input_bias, extra_gates, h0, states, gates_kernel,
   candidate_kernel) = residuals
  num_steps = inputs.shape[0]
  f32 = lambda a: jnp.zeros(a.shape, jnp.float32)

  def body(carry, xs):
    dh_carry, d_input_kernel, d_input_bias, d_gates_kernel, d_candidate_kernel = carry
    t, dh_out, x_t, extra_t = xs
    # h_{t-1}: read from the saved states rather than a shifted copy of them.
    h = jnp.where(t == 0, h0, lax.dynamic_index_in_dim(
        states, jnp.maximum(t - 1, 0), keepdims=False))
    proj = _input_projection(x_t, input_kernel, input_bias, extra_t)
    _, (z, r, candidate) = step(proj, h, gates_kernel, candidate_kernel)
    dh_prev, d_gates, d_c = _step_backward(dh_out + dh_carry, h, z, r, candidate,
                                           gates_kernel, candidate_kernel)
    d_proj = jnp.concatenate([d_gates, d_c], axis=-1)
    x_t = x_t.astype(input_kernel.dtype)
    carry = (dh_prev,
             d_input_kernel + _tap_products(x_t, d_proj, input_kernel.shape),
             d_input_bias + jnp.sum(d_proj, axis=(0, 1, 2), dtype=jnp.float32),
             d_gates_kernel + _tap_products(h, d_gates, gates_kernel.shape),
             d_candidate_kernel + _tap_products(r * h, d_c, candidate_kernel.shape))
    d_x = _input_transpose(input_kernel, d_proj).astype(inputs.dtype)
    return carry, (d_x, None if extra_t is None else d_gates)

  initial = (jnp.zeros_like(h0), f32(input_kernel), f32(input_bias), f32(gates_kernel),
             f32(candidate_kernel))
  (dh0, d_input_kernel, d_input_bias, d_gates_kernel, d_candidate_kernel), (
      d_inputs, d_extra) = lax.scan(
          body, initial,
          (jnp.arange(num_steps), states_cotangent, inputs, extra_gates),
          reverse=True, unroll=unroll)
  return (d_inputs, d_input_kernel.astype(input_kernel.dtype),
          d_input_bias.astype(input_bias.dtype),
          None if extra_gates is None else d_extra.astype(extra_gates.dtype), dh0,
          d_gates_kernel.astype(gates_kernel.dtype),
          d_candidate_kernel.astype(candidate_kernel.dtype))


remat_recurrence.defvjp(_remat_forward, _remat_backward)
