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

A training step counts the forward and, for each contraction, one more forward's
FLOPs for the gradient of each operand that needs one: one that depends on a
trained parameter and that the loss's gradient reaches. An input convolution of
the features costs 2x its forward (the kernel's gradient; the data needs none), a
hidden-to-hidden convolution 3x, a frozen backbone (stop_gradient after it) 1x.
Recomputation under remat is not counted: these are the model's FLOPs.
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
  return _walk(jaxpr, [False] * len(jaxpr.invars), [False] * len(jaxpr.outvars))[0]


def _is_var(v) -> bool:
  return isinstance(v, jax_core.Var)


def _sub_flags(eqn, jaxpr, flags, n):
  """Map an equation's operand (or result) flags onto a sub-jaxpr's `n` inputs (or
  outputs): one to one, or after cond's branch index; otherwise any flag for all."""
  if len(flags) == n:
    return list(flags)
  if eqn.primitive.name == "cond" and len(flags) == n + 1:
    return list(flags[1:])
  return [any(flags)] * n


def _inexact(v) -> bool:
  # Integers and booleans (an argmax, a comparison) carry no gradient.
  return jnp.issubdtype(v.aval.dtype, jnp.inexact)


def _propagate(jaxpr, tainted_in):
  """Per equation, which of its operands depend on an input flagged in
  `tainted_in` (not through stop_gradient, nor through integers); and which of the
  jaxpr's outputs do."""
  tainted = {v for v, t in zip(jaxpr.invars, tainted_in) if t}
  operands = []
  for eqn in jaxpr.eqns:
    ins = [_is_var(v) and v in tainted for v in eqn.invars]
    operands.append(ins)
    if eqn.primitive.name != "stop_gradient" and any(ins):
      tainted.update(v for v, t in zip(eqn.outvars, _sub_taint(eqn, ins))
                     if t and _inexact(v))
  return operands, [_is_var(v) and v in tainted for v in jaxpr.outvars]


def _taint(jaxpr, tainted_in):
  return _propagate(jaxpr, tainted_in)[1]


def _sub_taint(eqn, ins):
  """Which results of an equation with sub-jaxprs (or none) are tainted."""
  single, alternatives = _sub_jaxprs(eqn)
  if eqn.primitive.name == "scan":
    n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    return _taint(single[0], ins[:n_consts] + _sub_taint_carry(eqn, ins)
                  + ins[n_consts + n_carry:])
  jaxprs = single + [j for group in alternatives for j in group]
  if not jaxprs or any(len(j.outvars) != len(eqn.outvars) for j in jaxprs):
    return [True] * len(eqn.outvars)
  outs = [False] * len(eqn.outvars)
  for j in jaxprs:
    outs = [a or b for a, b in zip(
        outs, _taint(j, _sub_flags(eqn, j, ins, len(j.invars))))]
  return outs


def _walk(jaxpr, tainted_in, live_out):
  """(forward FLOPs, backward FLOPs, live inputs) of `jaxpr`. An input is tainted when it
  depends on a trained parameter; an output is live when the loss's gradient
  reaches it. A contraction's backward computes the gradient of each tainted
  operand whose result is live, at the forward's FLOPs each."""
  taints, _ = _propagate(jaxpr, tainted_in)   # forward: what depends on the parameters
  live = {v for v, l in zip(jaxpr.outvars, live_out) if l and _is_var(v)}
  forward = backward = 0
  for eqn, ins in zip(reversed(jaxpr.eqns), reversed(taints)):   # backward
    outs = [v in live for v in eqn.outvars]
    name = eqn.primitive.name
    if name in _COUNTED:
      flops = _COUNTED[name](eqn)
      forward += flops
      if any(outs):
        backward += flops * sum(ins[:2])
      live_in = [any(outs)] * len(eqn.invars)
    elif name == "stop_gradient":
      live_in = [False] * len(eqn.invars)
    else:
      f, b, live_in = _walk_sub(eqn, ins, outs)
      forward += f
      backward += b
    live.update(v for v, l in zip(eqn.invars, live_in) if l and _is_var(v))
  return forward, backward, [v in live for v in jaxpr.invars]


def _walk_sub(eqn, ins, outs):
  """(forward, backward, live operands) of an equation with sub-jaxprs (or none)."""
  name = eqn.primitive.name
  single, alternatives = _sub_jaxprs(eqn)
  if not single and not alternatives:
    return 0, 0, [any(outs)] * len(eqn.invars)
  if name == "scan":
    (body,) = single
    n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    body_ins = ins[:n_consts] + _sub_taint_carry(eqn, ins) + ins[n_consts + n_carry:]
    carry_live = outs[:n_carry]
    while True:   # a carried value is live once any later iteration needs it
      f, b, live_in = _walk(body, body_ins, carry_live + outs[n_carry:])
      grown = [a or c for a, c in zip(carry_live, live_in[n_consts:n_consts + n_carry])]
      if grown == carry_live:
        break
      carry_live = grown
    length = int(eqn.params["length"])
    return f * length, b * length, live_in
  forward = backward = 0
  live_in = [False] * len(eqn.invars)
  for jaxprs in [[j] for j in single] + alternatives:   # a group: one branch runs
    best = (0, 0, 0)   # (forward + backward, forward, backward): the costliest runs
    for j in jaxprs:
      f, b, l = _walk(j, _sub_flags(eqn, j, ins, len(j.invars)),
                      _sub_flags(eqn, j, outs, len(j.outvars)))
      best = max(best, (f + b, f, b))
      if len(l) == len(eqn.invars):
        live_in = [a or c for a, c in zip(live_in, l)]
      elif name == "cond" and len(l) + 1 == len(eqn.invars):
        live_in = [live_in[0]] + [a or c for a, c in zip(live_in[1:], l)]
      elif any(l):
        live_in = [True] * len(eqn.invars)
    forward += best[1]
    backward += best[2]
  if name == "while" and forward:
    raise FlopCountError(
        f"a while loop performs {forward} counted FLOPs per iteration but its trip "
        "count is a runtime value (a lax.while_loop, or a fori_loop with traced "
        "bounds), so the FLOPs cannot be counted statically; use lax.scan or a "
        "fori_loop with Python-int bounds")
  if name == "shard_map":
    shards = _size(eqn.params["mesh"].shape[axis]
                   for axis in eqn.params["newly_manual_axes"])
    forward, backward = forward * shards, backward * shards
  return forward, backward, live_in


def _sub_taint_carry(eqn, ins):
  """A scan's carry flags once every iteration has had its say (see _sub_taint)."""
  (body,), _ = _sub_jaxprs(eqn)
  n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
  carry = ins[n_consts:n_consts + n_carry]
  while True:
    outs = _taint(body, ins[:n_consts] + carry + ins[n_consts + n_carry:])
    grown = [a or b for a, b in zip(carry, outs[:n_carry])]
    if grown == carry:
      return carry
    carry = grown


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
                     batch: int, clip_length: int, frozen: Sequence[str] = ()) -> int:
  """FLOPs of a training step of `model` on `batch` clips (see `step_flops`)."""
  features = _abstract_features(level_shapes, batch, clip_length)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), features)
  return step_flops(lambda v, f: model.apply(v, f, train=False), variables, features,
                    frozen=frozen)


def step_flops(apply, variables, *inputs, frozen: Sequence[str] = ()) -> int:
  """FLOPs of a training step of `apply(variables, *inputs)`: the forward, and a
  backward that computes, for each contraction, the gradient of each operand that
  depends on a trained parameter (one of variables['params'] outside the top-level
  collections `frozen`, which the optimiser leaves alone; never the data) where the
  loss's gradient reaches it (not through stop_gradient), at the forward's FLOPs
  each: 3x the forward for a hidden-to-hidden convolution, 2x for an input
  convolution of the features, 1x for a frozen backbone."""
  jaxpr = jax.make_jaxpr(apply)(variables, *inputs).jaxpr
  trained = [path[0].key == "params" and path[1].key not in frozen
             for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
  tainted = trained + [False] * (len(jaxpr.invars) - len(trained))
  forward, backward, _ = _walk(jaxpr, tainted, [True] * len(jaxpr.outvars))
  return forward + backward
