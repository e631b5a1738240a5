"""The convolutional GRU of GRU-RCN: a cell for `nn.RNN`, and a fast sequence layer.

Both compute exactly the paper's equations and share one parameter layout:

    input             conv, 3*features outputs (z, r, candidate), with bias
    hidden_gates      conv, 2*features outputs (z, r), no bias
    hidden_candidate  conv, features outputs, no bias

so parameters trained with one load into the other: `ConvGRU`'s parameters are
`nn.RNN(ConvGRUCell)`'s under the key 'cell'.
"""

from typing import Any, Optional, Sequence, Tuple, Union

import einops
from flax import linen as nn
import jax
import jax.numpy as jnp

from grurcn_jax.models import backend_tuning, recurrence

Array = jax.Array
Dtype = Any

RECURRENCES = ("fused", "scan")


def level_remat(remat: Union[bool, Sequence[str]], level: str) -> bool:
  """Whether `level` recomputes: `remat` is a bool for every level, or the tuple of
  levels that do (an empty tuple: none; `build.remat_setting` turns the config's
  `remat_levels=()` into True)."""
  return remat if isinstance(remat, bool) else level in remat


class ConvGRUCell(nn.RNNCellBase):
  """A GRU-RCN cell, a drop-in for `flax.linen.RNN` like `nn.ConvLSTMCell`.

  Carry and output are [*batch, H, W, features]. The carry keeps the compute dtype:
  with `dtype=jnp.bfloat16` the recurrence stays in bfloat16 (params stay in
  `param_dtype`).
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  carry_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, carry: Array, inputs: Array) -> Tuple[Array, Array]:
    conv = lambda features, name, use_bias, init: nn.Conv(
        features, tuple(self.kernel_size), padding="SAME", use_bias=use_bias,
        dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init,
        bias_init=self.bias_init, name=name)
    h = carry
    input_proj = conv(3 * self.features, "input", True, self.kernel_init)(inputs)
    gates_proj = conv(2 * self.features, "hidden_gates", False,
                      self.recurrent_kernel_init)(h)
    candidate_conv = conv(self.features, "hidden_candidate", False,
                          self.recurrent_kernel_init)
    h_new, _ = recurrence.gate_update(input_proj, gates_proj, h, candidate_conv)
    h_new = h_new.astype(carry.dtype)
    return h_new, h_new

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: Tuple[int, ...]) -> Array:
    """Zero state [*batch, H, W, features] in the compute dtype."""
    del rng
    shape = tuple(input_shape[:-1]) + (self.features,)
    return self.carry_init(None, shape, self.dtype or self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return len(self.kernel_size) + 1


class _Kernel(nn.Module):
  """A bare convolution kernel with `nn.Conv`'s parameter layout {'kernel': HWIO}."""

  features: int
  kernel_size: Tuple[int, int]
  kernel_init: nn.initializers.Initializer
  param_dtype: Dtype

  @nn.compact
  def __call__(self, in_features: int) -> Array:
    shape = tuple(self.kernel_size) + (in_features, self.features)
    return self.param("kernel", self.kernel_init, shape, self.param_dtype)


class _ConvParameters(nn.Module):
  """`nn.Conv`'s parameters {'kernel': HWIO, 'bias'} without the convolution: the
  fused layer convolves itself (in the backward pass it keeps the inputs in their
  own dtype, and with remat it convolves step by step)."""

  features: int
  kernel_size: Tuple[int, int]
  kernel_init: nn.initializers.Initializer
  bias_init: nn.initializers.Initializer
  param_dtype: Dtype

  @nn.compact
  def __call__(self, in_features: int) -> Tuple[Array, Array]:
    shape = tuple(self.kernel_size) + (in_features, self.features)
    return (self.param("kernel", self.kernel_init, shape, self.param_dtype),
            self.param("bias", self.bias_init, (self.features,), self.param_dtype))


@jax.custom_vjp
def _add_bias(x: Array, bias: Array) -> Array:
  """x + bias in x's dtype; the bias's gradient is summed in float32."""
  return x + bias.astype(x.dtype)


def _add_bias_forward(x, bias):
  return _add_bias(x, bias), bias


def _add_bias_backward(bias, cotangent):
  summed = jnp.sum(cotangent, tuple(range(cotangent.ndim - 1)), dtype=jnp.float32)
  return cotangent, summed.astype(bias.dtype)


_add_bias.defvjp(_add_bias_forward, _add_bias_backward)


class ConvGRU(nn.Module):
  """GRU-RCN over a clip [B, T, H, W, C]; the fast equivalent of nn.RNN(ConvGRUCell).

  The input convolution of all T frames runs once over B*T frames (batch-major,
  so a batch-sharded clip stays sharded), outside the recurrence; only the
  hidden-to-hidden part is a loop over time.

  Attributes:
    features: hidden channels F.
    kernel_size: kernel of all convolutions.
    reverse: run from the last frame to the first. States stay aligned with the
      input frames; the final state is then the one at frame 0.
    return_sequences: return every state [B, T, H, W, F] instead of the final one
      [B, H, W, F] (an attention decoder needs every step).
    recurrence: 'fused' (default): `recurrence.convgru_sequence`, a
      hand-written VJP whose weight gradients are computed once after the loop;
      'scan': the same batched input convolution, then a Flax `nn.scan`
      differentiated by JAX (the reference path).
    remat: trade compute for memory on long clips. 'fused': keep only the input
      frames and the states, and recompute each step's input convolution and gates
      in the backward loop; 'scan': `nn.remat` of the step.
    unroll: loop unroll factor (1 keeps the program size independent of T), or
      'auto': the backend's choice (`backend_tuning.time_loop`; 'scan' then
      takes 1).
    kernel_gradient: how kernel gradients are computed (`backend_tuning`): 'auto'
      picks per backend.
    dtype: compute dtype; the carry is kept in it. param_dtype: parameter dtype.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  reverse: bool = False
  return_sequences: bool = False
  recurrence: str = "fused"
  remat: bool = False
  unroll: Union[int, str] = "auto"
  kernel_gradient: str = "auto"
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  def setup(self):
    if self.recurrence not in RECURRENCES:
      raise ValueError(f"unknown recurrence {self.recurrence!r}; valid: "
                       f"{', '.join(RECURRENCES)}")
    backend_tuning.check_kernel_gradient(self.kernel_gradient)
    backend_tuning.check_unroll(self.unroll)
    kernel_size = tuple(self.kernel_size)
    # The input convolution's parameters, named as nn.Conv's; both recurrences
    # convolve with them themselves (batched over B*T frames).
    self.input = _ConvParameters(3 * self.features, kernel_size, self.kernel_init,
                                 self.bias_init, self.param_dtype)
    self.hidden_gates = _Kernel(2 * self.features, kernel_size,
                                self.recurrent_kernel_init, self.param_dtype)
    self.hidden_candidate = _Kernel(self.features, kernel_size,
                                    self.recurrent_kernel_init, self.param_dtype)
    # Stacked GRU-RCN: the lower level's state feeds the two gates only, through
    # a batched convolution over B*T frames with the backend's kernel gradient.
    self.lower_gates = nn.Conv(
        2 * self.features, kernel_size, padding="SAME", use_bias=False,
        dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init,
        conv_general_dilated=backend_tuning.flax_conv(self.kernel_gradient))

  def __call__(self, inputs: Array, initial_carry: Optional[Array] = None,
               gate_inputs: Optional[Array] = None) -> Array:
    """Runs the layer.

    Args:
      inputs: [B, T, H, W, C].
      initial_carry: optional [B, H, W, F]; cast to the compute dtype.
      gate_inputs: optional [B, T, H, W, C'] extra input to the z and r gates only
        (stacked GRU-RCN), through its own convolution 'lower_gates'.

    Returns:
      [B, T, H, W, F] if `return_sequences`, else the final state [B, H, W, F].
    """
    if inputs.ndim != 5:
      raise ValueError(f"ConvGRU expects [batch, time, H, W, C], got {inputs.shape}")
    if not isinstance(self.remat, bool):   # a level tuple is the encoder's to resolve
      raise TypeError(f"ConvGRU.remat must be True or False, got {self.remat!r} "
                      f"(see level_remat)")
    # The compute dtype; the carry is kept in it (never upcast by a float32 h0).
    dtype = self.dtype or jnp.promote_types(inputs.dtype, self.param_dtype)
    if initial_carry is None:
      initial_carry = jnp.zeros(inputs.shape[:1] + inputs.shape[2:4] + (self.features,),
                                dtype)
    initial_carry = initial_carry.astype(dtype)
    lower = None
    if gate_inputs is not None:   # [B, T, ..., 2F], batch-major like the inputs
      lower = self.lower_gates(gate_inputs).astype(dtype)
    if self.recurrence == "fused":
      kernel, bias = self.input(inputs.shape[-1])
      # The inputs stay in their own dtype (float16 features): they are what is kept.
      states = recurrence.convgru_sequence(
          inputs, kernel.astype(dtype), bias.astype(dtype), initial_carry,
          self.hidden_gates(self.features).astype(dtype),
          self.hidden_candidate(self.features).astype(dtype), lower,
          reverse=self.reverse, remat=self.remat, unroll=self.unroll,
          kernel_gradient=self.kernel_gradient)
      if self.return_sequences:
        return states
      return states[:, 0] if self.reverse else states[:, -1]

    # The input convolution batch-major over B*T frames (as nn.Conv would), the
    # bias's gradient summed in float32: in bfloat16 a sum over B*T*H*W positions
    # loses several percent.
    kernel, bias = self.input(inputs.shape[-1])
    input_proj = backend_tuning.batched_conv2d(
        einops.rearrange(inputs.astype(dtype), "b t h w c -> (b t) h w c"),
        kernel.astype(dtype), self.kernel_gradient)
    input_proj = einops.rearrange(_add_bias(input_proj, bias), "(b t) h w c -> b t h w c",
                                  b=inputs.shape[0])
    if lower is not None:
      gates, candidate = jnp.split(input_proj, [2 * self.features], axis=-1)
      input_proj = jnp.concatenate([gates + lower, candidate], axis=-1)
    # Time-major from here on: nn.scan walks the leading axis. The convolution
    # ran batch-major; the transpose keeps the batch axis sharded.
    input_proj = einops.rearrange(input_proj.astype(dtype), "b t h w c -> t b h w c")
    step = nn.remat(ConvGRU._scan_step) if self.remat else ConvGRU._scan_step
    scan = nn.scan(step, variable_broadcast="params",
                   split_rngs={"params": False}, reverse=self.reverse,
                   unroll=1 if self.unroll == "auto" else self.unroll)
    final, states = scan(self, initial_carry, input_proj)
    if self.return_sequences:
      return einops.rearrange(states, "t b h w f -> b t h w f")
    return final

  def _scan_step(self, h: Array, input_proj: Array) -> Tuple[Array, Array]:
    gates_kernel = self.hidden_gates(self.features).astype(h.dtype)
    candidate_kernel = self.hidden_candidate(self.features).astype(h.dtype)
    h_new, _ = recurrence.step(input_proj, h, gates_kernel, candidate_kernel)
    return h_new, h_new
