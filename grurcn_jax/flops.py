"""FLOPs of a model's forward pass and training step, counted from the model's own
operations.

`forward_flops` traces `model.apply` abstractly (parameter shapes from
`jax.eval_shape(model.init, ...)`, features as `jax.ShapeDtypeStruct`s: nothing is
computed and no memory allocated) and walks the resulting jaxpr, so the count
follows whatever the model does, whichever model, variant or recurrence
implementation built it.

What counts: the multiply-adds of the contractions, at 2 FLOPs per multiply-add:

  conv_general_dilated  2 x output elements x kernel spatial taps x input channels
                        per feature group (every tap of every output position,
                        including taps that fall on 'SAME' padding, which XLA's
                        cost analysis leaves out);
  dot_general           2 x batch dims x contracting dims x free dims of both sides.

Everything else is left out: the elementwise gate arithmetic (sigmoid, tanh, the
products and sums of the GRU update), bias additions, pooling, softmax, slicing,
casts.

Control flow: sub-jaxprs are found generically (every equation parameter that is a
Jaxpr or ClosedJaxpr: jit, closed calls, custom_vjp/custom_jvp calls, remat, ...)
and counted once; a `scan` body counts `length` times (whatever its `unroll`);
`cond` counts its most expensive branch; a `shard_map` body counts once per
shard of its manual mesh axes. A `while` loop's trip count is a runtime value, so
a `while` whose body or condition contains a counted operation raises
`FlopCountError` instead of silently undercounting (loops whose bounds are
Python ints, `lax.scan` and `lax.fori_loop` with static bounds, trace to `scan`).
The model's recurrences trace to `scan` both ways: 'fused' is a custom_vjp whose
primal runs a `lax.scan`, 'scan' is Flax's `nn.scan` (a `lax.scan`).

A training step counts 3x the forward (backward = 2x forward).
"""

import functools
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax.extend import core as jax_core
import jax.numpy as jnp

from grurcn_jax.errors import FlopCountError


def _size(shape: Sequence[int]) -> int:
  return math.prod(int(d) for d in shape)


def _conv_flops(eqn) -> int:
  out = eqn.outvars[0].aval
  rhs = eqn.invars[1].aval
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
  taps = _size(rhs.shape[d] for d in rhs_spec[2:])
  in_channels_per_group = int(rhs.shape[rhs_spec[1]])
  return 2 * _size(out.shape) * taps * in_channels_per_group


def _dot_flops(eqn) -> int:
  lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
  batch = _size(lhs.shape[d] for d in lhs_batch)
  contract = _size(lhs.shape[d] for d in lhs_contract)
  lhs_free = _size(lhs.shape[d] for d in range(lhs.ndim)
                   if d not in lhs_contract and d not in lhs_batch)
  rhs_free = _size(rhs.shape[d] for d in range(rhs.ndim)
                   if d not in rhs_contract and d not in rhs_batch)
  return 2 * batch * contract * lhs_free * rhs_free


_COUNTED = {"conv_general_dilated": _conv_flops, "dot_general": _dot_flops}


def _as_jaxpr(value):
  if isinstance(value, jax_core.ClosedJaxpr):
    return value.jaxpr
  if isinstance(value, jax_core.Jaxpr):
    return value
  return None


def _sub_jaxprs(eqn):
  """(single jaxprs, groups of alternative jaxprs) among the equation's params."""
  single, alternatives = [], []
  for value in eqn.params.values():
    jaxpr = _as_jaxpr(value)
    if jaxpr is not None:
      single.append(jaxpr)
    elif isinstance(value, (tuple, list)):
      group = [_as_jaxpr(v) for v in value]
      group = [j for j in group if j is not None]
      if group:
        alternatives.append(group)
  return single, alternatives


def jaxpr_flops(jaxpr) -> int:
  """Counted FLOPs of a (closed) jaxpr, recursing into sub-jaxprs (see module doc)."""
  jaxpr = _as_jaxpr(jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in _COUNTED:
      total += _COUNTED[name](eqn)
      continue
    single, alternatives = _sub_jaxprs(eqn)
    if not single and not alternatives:
      continue
    # Branches (cond): only one runs; count the most expensive.
    inner = (sum(jaxpr_flops(j) for j in single)
             + sum(max(jaxpr_flops(j) for j in group) for group in alternatives))
    if name == "scan":
      inner *= int(eqn.params["length"])
    elif name == "while":
      if inner:
        raise FlopCountError(
            f"a while loop performs {inner} counted FLOPs per iteration but its trip "
            "count is a runtime value (a lax.while_loop, or a fori_loop with traced "
            "bounds), so the FLOPs cannot be counted statically; use lax.scan or a "
            "fori_loop with Python-int bounds")
    elif name == "shard_map":
      mesh = eqn.params["mesh"]
      inner *= _size(mesh.shape[axis] for axis in eqn.params["newly_manual_axes"])
    total += inner
  return total


def _abstract_features(level_shapes: Mapping[str, Sequence[int]], batch: int,
                       clip_length: int):
  return {level: jax.ShapeDtypeStruct((batch, clip_length) + tuple(shape), jnp.float32)
          for level, shape in level_shapes.items()}


def forward_jaxpr(model: nn.Module, level_shapes: Mapping[str, Sequence[int]],
                  batch: int, clip_length: int) -> Any:
  """The closed jaxpr of `model.apply(variables, features, train=False)`, traced
  abstractly (no parameters initialised, nothing computed)."""
  features = _abstract_features(level_shapes, batch, clip_length)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), features)
  return jax.make_jaxpr(
      lambda v, f: model.apply(v, f, train=False))(variables, features)


def forward_flops(model: nn.Module, level_shapes: Mapping[str, Sequence[int]],
                  batch: int, clip_length: int) -> int:
  """Forward FLOPs of `batch` clips of `clip_length` frames.

  Args:
    model: the Flax module (e.g. `grurcn_jax.models.build_model(config.model)`).
    level_shapes: level -> per-frame feature shape, e.g. {'pool2': (56, 56, 128),
      'fc7': (4096,)}; the model gets float32 [batch, clip_length, *shape].
  """
  return jaxpr_flops(forward_jaxpr(model, level_shapes, batch, clip_length))


def train_step_flops(model: nn.Module, level_shapes: Mapping[str, Sequence[int]],
                     batch: int, clip_length: int) -> int:
  """FLOPs of a training step: forward + backward, with backward = 2x forward."""
  return 3 * forward_flops(model, level_shapes, batch, clip_length)
