"""How this package's convolutions, their gradients and its time loops are
computed, per backend.

The one module with platform-specific tuning; the recurrence's math
(`recurrence.py`) only calls `conv2d`, `input_gradient`, `kernel_gradient` and
`time_loop`.

Kernel (weight) gradients, `model.kernel_gradient`:
  xla   XLA's own transposed convolution: cuDNN's weight-gradient kernel on GPU,
        the MXU's on TPU. Measured on an H200, 2.5-3.5x faster than `taps`.
  taps  one matrix product per kernel tap over every frame and position, in a loop
        over chunks of frames. On XLA:CPU the transposed convolution slows down
        sharply with the number of frames (about 18x the time for 4x the frames at
        pool4 size) while these products stay at matrix-multiply speed.
  auto  `xla` on GPU and TPU; on CPU `taps` for wide kernels (at least 256 x 256
        channels) and inside loops over time, `xla` for the other batched ones.

Time loops, `model.unroll`: an integer is lax.scan's unroll factor everywhere;
  auto  on GPU, clips of at most MAX_UNROLLED_STEPS frames run as straight-line
        code (no loop): a GPU while loop costs a launch gap per iteration and
        keeps XLA from fusing across steps. Measured on an H200 (paper model,
        batch 64, T=10): 27.7 -> 25.4 ms in bfloat16, 59.9 -> 56.6 ms in float32,
        at 41 s of compilation instead of 25 s. Longer clips, and every other
        backend, a loop (unroll 1): it keeps the program's size and compile time
        independent of T, and on CPU a step takes seconds, so the loop costs
        nothing. TPU: not measured yet.

`auto` choices are made with `lax.platform_dependent`, i.e. when the program is
lowered for its platform, so a program exported for GPU or TPU from a CPU host
gets the GPU/TPU choice.

Frames arrive batch-major ([B*T, H, W, C], the batch outermost), so the frames of
one data-parallel shard stay together and every device reduces only its own.
"""

import functools
from typing import Callable, Sequence

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array

KERNEL_GRADIENTS = ("auto", "xla", "taps")
# model.unroll="auto": GPU clips up to this many frames run without a loop.
MAX_UNROLLED_STEPS = 16

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# On CPU, kernels with at least this many input x output channels take `taps`.
_WIDE_KERNEL = 256 * 256
# Rows (frames x positions) per chunk of the tap products, so that their cost
# stays linear in the frames on XLA:CPU (at 14x14x512, 320 frames in one product
# took 1.4x as long as 40 chunks of 8).
_CHUNK_ROWS = 2048


def check_kernel_gradient(method: str) -> None:
  if method not in KERNEL_GRADIENTS:
    raise ValueError(f"unknown kernel gradient {method!r}; valid: "
                     f"{', '.join(KERNEL_GRADIENTS)}")


def check_unroll(unroll) -> None:
  if not (unroll == "auto" or (isinstance(unroll, int) and not isinstance(unroll, bool)
                               and unroll >= 1)):
    raise ValueError(f"unroll={unroll!r}: choose 'auto' or an integer >= 1")


def time_loop(body: Callable, carry, num_steps: int, unroll):
  """`lax.scan(body, carry, arange(num_steps))`'s final carry, with the loop
  unrolled as `unroll` says (an integer, or 'auto': see the module's docstring)."""
  check_unroll(unroll)

  def run(factor):
    return lambda c: lax.scan(body, c, jnp.arange(num_steps), unroll=factor)[0]

  if unroll != "auto":
    return run(unroll)(carry)
  if num_steps > MAX_UNROLLED_STEPS or num_steps <= 1:
    return run(1)(carry)
  unrolled = run(num_steps)
  return lax.platform_dependent(carry, cuda=unrolled, rocm=unrolled, default=run(1))


def conv2d(x: Array, kernel: Array) -> Array:
  """Stride-1 'SAME' 2-D convolution, NHWC x HWIO, as `flax.linen.Conv` does it."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding="SAME",
      dimension_numbers=_DIMENSION_NUMBERS)


def input_gradient(kernel: Array, cotangent: Array) -> Array:
  """Gradient of conv2d(x, kernel) with respect to x."""
  x_shape = cotangent.shape[:-1] + (kernel.shape[2],)
  transpose = jax.linear_transpose(
      lambda x: conv2d(x, kernel), jax.ShapeDtypeStruct(x_shape, cotangent.dtype))
  return transpose(cotangent)[0]


def kernel_gradient(x: Array, cotangent: Array, kernel_shape: Sequence[int],
                    method: str, in_loop: bool = False) -> Array:
  """Gradient of conv2d(x, kernel) with respect to the kernel, summed over frames.

  Args:
    x: [N, H, W, C] frames, batch-major; cotangent: [N, H, W, O], or a tuple of
      such arrays whose channels, concatenated, are the kernel's O outputs (each
      backend then avoids the concatenation or does it, whichever is faster).
    kernel_shape: (kh, kw, C, O).
    method: one of KERNEL_GRADIENTS.
    in_loop: whether this runs inside a loop over time steps; `auto` then takes
      `taps` on CPU for every kernel (XLA:CPU's transposed convolution is about 20x
      slower inside a loop body than batched).

  Returns:
    float32 [kh, kw, C, O].
  """
  kernel_shape = tuple(kernel_shape)
  cotangent = tuple(cotangent) if isinstance(cotangent, (tuple, list)) else (cotangent,)
  if method == "xla":
    return _xla_kernel_gradient(x, cotangent, kernel_shape)
  if method == "taps":
    return _tap_kernel_gradient(x, cotangent, kernel_shape)
  check_kernel_gradient(method)
  if not in_loop and kernel_shape[2] * kernel_shape[3] < _WIDE_KERNEL:
    return _xla_kernel_gradient(x, cotangent, kernel_shape)
  return lax.platform_dependent(
      x, cotangent,
      cpu=functools.partial(_tap_kernel_gradient, kernel_shape=kernel_shape),
      default=functools.partial(_xla_kernel_gradient, kernel_shape=kernel_shape))


def _xla_kernel_gradient(x, cotangents, kernel_shape):
  """XLA's transposed convolution, one per cotangent (no concatenated copy)."""
  def one(cotangent):
    shape = kernel_shape[:3] + cotangent.shape[-1:]
    transpose = jax.linear_transpose(
        lambda k: conv2d(x, k), jax.ShapeDtypeStruct(shape, x.dtype))
    return transpose(cotangent.astype(x.dtype))[0].astype(jnp.float32)
  return jnp.concatenate([one(c) for c in cotangents], axis=-1)


def _tap_kernel_gradient(x, cotangents, kernel_shape):
  """kh*kw matrix products (float32) per chunk of frames, in a loop over chunks;
  several cotangents are concatenated first (one pass over x on XLA:CPU)."""
  cotangent = (cotangents[0] if len(cotangents) == 1
               else jnp.concatenate([c.astype(x.dtype) for c in cotangents], axis=-1))
  n, height, width = x.shape[:3]
  chunk = _frames_per_chunk(n, max(1, _CHUNK_ROWS // (height * width)))
  if chunk == n:
    return _tap_products(x, cotangent, kernel_shape)
  chunks = n // chunk
  # Chunk j holds frames j, j + chunks, j + 2 * chunks, ...: a slice along axis 1
  # of [chunk, chunks, ...], so a batch-sharded axis 0 stays sharded in the loop.
  strided = lambda a: a.reshape((chunk, chunks) + a.shape[1:])
  x, cotangent = strided(x), strided(cotangent)

  def add_chunk(total, j):
    take = lambda a: lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False)
    return total + _tap_products(take(x), take(cotangent), kernel_shape), None

  total, _ = lax.scan(add_chunk, jnp.zeros(kernel_shape, jnp.float32),
                      jnp.arange(chunks))
  return total


def _frames_per_chunk(n: int, target: int) -> int:
  """A divisor of n near `target`, preferring multiples of the device count so
  that every chunk splits evenly over data-parallel devices."""
  divisors = [d for d in range(1, n + 1) if n % d == 0]
  devices = jax.device_count()
  even = [d for d in divisors if d % devices == 0] or divisors
  at_most = [d for d in even if d <= target]
  return max(at_most) if at_most else min(even)


def _tap_products(x, cotangent, kernel_shape):
  kh, kw = kernel_shape[:2]
  n, height, width, channels = x.shape
  top, left = (kh - 1) // 2, (kw - 1) // 2      # 'SAME', as lax pads it
  padded = jnp.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))

  def tap(_, offset):
    zero = jnp.zeros((), offset.dtype)  # one index type, also under jax_enable_x64
    window = lax.dynamic_slice(padded, (zero, offset[0], offset[1], zero),
                               (n, height, width, channels))
    return None, jnp.einsum("nhwc,nhwo->co", window, cotangent.astype(x.dtype),
                            preferred_element_type=jnp.float32)

  offsets = jnp.array([(i, j) for i in range(kh) for j in range(kw)], jnp.int32)
  _, taps = lax.scan(tap, None, offsets)
  return taps.reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def batched_conv2d(x: Array, kernel: Array, method: str = "auto") -> Array:
  """conv2d whose kernel gradient is `kernel_gradient(..., method)`: for the
  convolutions over all B*T frames at once."""
  return conv2d(x, kernel)


def _batched_conv2d_forward(x, kernel, method):
  return conv2d(x, kernel), (x, kernel)


def _batched_conv2d_backward(method, residuals, cotangent):
  x, kernel = residuals
  return (input_gradient(kernel, cotangent),
          kernel_gradient(x, cotangent, kernel.shape, method).astype(kernel.dtype))


batched_conv2d.defvjp(_batched_conv2d_forward, _batched_conv2d_backward)


@functools.lru_cache(maxsize=None)
def flax_conv(method: str = "auto"):
  """A drop-in for `nn.Conv(conv_general_dilated=...)`: stride-1 'SAME' NHWC
  convolutions go through `batched_conv2d(..., method)`, anything else to lax."""
  check_kernel_gradient(method)

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None,
                           feature_group_count=1, precision=None):
    plain = (tuple(window_strides) == (1, 1) and padding == "SAME"
             and not any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
             and feature_group_count == 1 and lhs.ndim == 4
             and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
             and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1))
    if plain:
      return batched_conv2d(lhs, rhs, method)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers,
                                    feature_group_count=feature_group_count,
                                    precision=precision)
  return conv_general_dilated
