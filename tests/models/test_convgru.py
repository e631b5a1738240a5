"""ConvGRUCell against the paper's equations; ConvGRU against nn.RNN(ConvGRUCell)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grurcn_jax.models import ConvGRU, ConvGRUCell


# ---------------------------------------------------------------------------
# An independent NumPy implementation of the paper's cell, written from the
# equations (no project code): z = s(Wz*x + Uz*h), r = s(Wr*x + Ur*h),
# c = tanh(W*x + U*(r.h)), h' = (1 - z).h + z.c, with 'SAME' zero padding.

def np_conv_same(x, kernel, bias=None):
  """x [B, H, W, C], kernel [kh, kw, C, O]: cross-correlation, 'SAME' padding."""
  kh, kw, _, out = kernel.shape
  top, left = (kh - 1) // 2, (kw - 1) // 2
  padded = np.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
  b, h, w, _ = x.shape
  y = np.zeros((b, h, w, out), x.dtype)   # float64, or float32 for its own error
  for i in range(kh):
    for j in range(kw):
      y += np.einsum("bhwc,co->bhwo", padded[:, i:i + h, j:j + w, :], kernel[i, j])
  return y if bias is None else y + bias


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_paper_cell(h, x, p):
  """One step of the paper's equations with parameters in ConvGRUCell's layout."""
  f = h.shape[-1]
  wx = np_conv_same(x, p["input"]["kernel"], p["input"]["bias"])
  uh = np_conv_same(h, p["hidden_gates"]["kernel"])
  z = np_sigmoid(wx[..., :f] + uh[..., :f])
  r = np_sigmoid(wx[..., f:2 * f] + uh[..., f:])
  candidate = np.tanh(wx[..., 2 * f:] + np_conv_same(r * h, p["hidden_candidate"]["kernel"]))
  return (1 - z) * h + z * candidate


def random_params(rng, in_channels, features, kernel_size, scale=0.5):
  kh, kw = kernel_size
  draw = lambda *shape: scale * rng.standard_normal(shape)
  return {"input": {"kernel": draw(kh, kw, in_channels, 3 * features),
                    "bias": draw(3 * features)},
          "hidden_gates": {"kernel": draw(kh, kw, features, 2 * features)},
          "hidden_candidate": {"kernel": draw(kh, kw, features, features)}}


@pytest.mark.parametrize("batch,height,width,channels,features,kernel_size", [
    (2, 5, 6, 3, 4, (3, 3)),
    (1, 7, 7, 2, 3, (1, 1)),
    (2, 4, 5, 3, 2, (5, 3)),
    (1, 6, 4, 2, 3, (2, 2)),   # even kernel: 'SAME' pads more on the high side
])
def test_cell_matches_paper_equations(batch, height, width, channels, features,
                                      kernel_size):
  rng = np.random.default_rng(0)
  params = random_params(rng, channels, features, kernel_size)
  cell = ConvGRUCell(features, kernel_size)
  variables = {"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)}
  # The layout is the contract: init creates exactly these shapes.
  x0 = jnp.zeros((batch, height, width, channels))
  init_vars = cell.init(jax.random.key(0), cell.initialize_carry(None, x0.shape), x0)
  assert jax.tree.map(jnp.shape, init_vars["params"]) == jax.tree.map(np.shape, params)

  params32 = jax.tree.map(np.float32, params)
  h = np.zeros((batch, height, width, features))
  h32 = np.zeros_like(h, np.float32)
  h_jax = cell.initialize_carry(jax.random.key(0), x0.shape)
  for _ in range(3):
    x = rng.standard_normal((batch, height, width, channels))
    h = np_paper_cell(h, x, params)
    h32 = np_paper_cell(h32, np.float32(x), params32)   # the same in float32
    h_jax, out = cell.apply(variables, h_jax, jnp.asarray(x, jnp.float32))
    assert_float32_close(h_jax, h32, h)
    np.testing.assert_array_equal(out, h_jax)


def test_cell_is_not_one_of_the_usual_misreadings():
  """Reset applied after the candidate convolution (Flax GRUCell style), or z
  weighting the old state, give different numbers; the cell matches neither."""
  rng = np.random.default_rng(1)
  params = random_params(rng, 2, 3, (3, 3), scale=1.0)
  h = rng.standard_normal((1, 5, 5, 3))
  x = rng.standard_normal((1, 5, 5, 2))
  wx = np_conv_same(x, params["input"]["kernel"], params["input"]["bias"])
  uh = np_conv_same(h, params["hidden_gates"]["kernel"])
  z, r = np_sigmoid(wx[..., :3] + uh[..., :3]), np_sigmoid(wx[..., 3:6] + uh[..., 3:])
  reset_after = np.tanh(wx[..., 6:] + r * np_conv_same(h, params["hidden_candidate"]["kernel"]))
  reset_before = np.tanh(wx[..., 6:] + np_conv_same(r * h, params["hidden_candidate"]["kernel"]))
  misreadings = [(1 - z) * h + z * reset_after, z * h + (1 - z) * reset_before]

  got, _ = ConvGRUCell(3).apply(
      {"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)},
      jnp.asarray(h, jnp.float32), jnp.asarray(x, jnp.float32))
  assert_float32_close(got, np_paper_cell(np.float32(h), np.float32(x),
                                          jax.tree.map(np.float32, params)),
                       np_paper_cell(h, x, params))
  for wrong in misreadings:
    assert np.max(np.abs(np.asarray(got) - wrong)) > 1e-2


# ---------------------------------------------------------------------------
# The fast sequence layer against nn.RNN(ConvGRUCell).

def _perturbed_init(module, rng, *args, **kwargs):
  """init, then random non-zero values everywhere (biases included)."""
  variables = module.init(rng, *args, **kwargs)
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  return jax.tree.unflatten(
      tree, [0.4 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)])


def _sequence_inputs():
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 4, 3))
  h0 = 0.5 * jax.random.normal(jax.random.key(1), (2, 5, 4, 4))
  return x, h0


def _sequence_loss(module):
  def f(v, x, h0):
    states = module.apply(v, x, initial_carry=h0)
    return jnp.sum(jnp.sin(states) * jnp.arange(states.shape[1])[:, None, None, None])
  return f


@functools.partial(jax.jit, static_argnums=0)   # one compilation per module and dtype
def _values_and_gradients(module, v, x, h0):
  return (module.apply(v, x, initial_carry=h0),
          jax.grad(_sequence_loss(module), argnums=(0, 1, 2))(v, x, h0))


def _unwrap(result):
  return (result[0], result[1][0]["params"].get("cell", result[1][0]["params"]),
          result[1][1], result[1][2])


@functools.lru_cache(maxsize=None)
def _rnn_of_cell_reference(reverse):
  """nn.RNN(ConvGRUCell) on the inputs below: the parameters, and its values and
  gradients in float32 and float64. The same for every recurrence, so computed
  once per direction."""
  x, h0 = _sequence_inputs()
  variables = _perturbed_init(ConvGRU(4, (3, 3), reverse=reverse, return_sequences=True),
                              jax.random.key(2), x)
  rnn = nn.RNN(ConvGRUCell(4, (3, 3)), reverse=reverse, keep_order=True)
  rnn_variables = {"params": {"cell": variables["params"]}}
  rnn32 = _unwrap(_values_and_gradients(rnn, rnn_variables, x, h0))
  with jax.enable_x64(True):
    as64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    rnn64 = _unwrap(jax.device_get(_values_and_gradients(rnn, *as64((rnn_variables, x,
                                                                       h0)))))
  return variables, rnn32, rnn64


@pytest.mark.parametrize("recurrence,remat,kernel_gradient", [
    ("fused", False, "auto"), ("fused", True, "auto"), ("scan", False, "auto"),
    ("fused", False, "taps"), ("fused", True, "xla")])
@pytest.mark.parametrize("reverse", [False, True])
def test_sequence_layer_matches_rnn_of_cell(recurrence, remat, kernel_gradient,
                                            reverse):
  x, h0 = _sequence_inputs()
  layer = ConvGRU(4, (3, 3), reverse=reverse, return_sequences=True,
                  recurrence=recurrence, remat=remat,
                  kernel_gradient=kernel_gradient)
  variables, rnn32, rnn64 = _rnn_of_cell_reference(reverse)
  # Every recurrence has the cell's parameters.
  assert (jax.tree.structure(variables)
          == jax.tree.structure(jax.eval_shape(layer.init, jax.random.key(2), x)))
  ours = _values_and_gradients(layer, variables, x, h0)
  assert_float32_close(_unwrap(ours), rnn32, rnn64)

  # The budget still catches a small real error: the candidate kernel off by 0.1%.
  wrong = jax.tree_util.tree_map_with_path(
      lambda path, a: a * 1.001 if "hidden_candidate" in str(path) else a, variables)
  with pytest.raises(AssertionError):
    assert_float32_close(_unwrap(_values_and_gradients(layer, wrong, x, h0)),
                         rnn32, rnn64)


def float64_run(fn, *args):
  """fn on float64 copies of args, computed in float64: the reference that float32
  results are measured against."""
  with jax.enable_x64(True):
    return jax.device_get(fn(*jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), args)))


def assert_float32_close(got, reference32, reference64):
  """`got` (float32) is as close to the float64 reference as float32 arithmetic
  allows: a few times the float32 reference's own error, plus a floor of a few
  dozen float32 roundings of the largest value. Per array of each tree."""
  def check(ours, ref32, ref64):
    ours, ref32, ref64 = np.float64(ours), np.float64(ref32), np.float64(ref64)
    own = np.max(np.abs(ref32 - ref64))
    budget = 8 * own + 32 * np.finfo(np.float32).eps * np.max(np.abs(ref64))
    error = np.max(np.abs(ours - ref64))
    assert error <= budget, f"error {error:.3g} > float32 budget {budget:.3g}"
  jax.tree.map(check, got, reference32, reference64)


@pytest.mark.parametrize("recurrence", ["fused", "scan"])
def test_final_state_is_last_of_sequence(recurrence):
  x = jax.random.normal(jax.random.key(0), (2, 5, 4, 4, 2))
  for reverse, index in [(False, -1), (True, 0)]:
    make = lambda seq: ConvGRU(3, reverse=reverse, return_sequences=seq,
                               recurrence=recurrence)
    variables = _perturbed_init(make(True), jax.random.key(1), x)
    states = make(True).apply(variables, x)
    final = make(False).apply(variables, x)
    # Two programs; states in (-1, 1): a few float32 units apart at most.
    np.testing.assert_allclose(final, states[:, index], rtol=2 ** -22, atol=4 * 2 ** -24)


def test_unroll_and_remat_keep_values_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 7, 4, 4, 3))
  reference = ConvGRU(4, recurrence="scan")
  variables = _perturbed_init(reference, jax.random.key(1), x)
  grad = lambda layer: jax.jit(jax.grad(lambda v, x: jnp.sum(layer.apply(v, x) ** 2)))
  expected = grad(reference)(variables, x)
  expected64 = float64_run(grad(reference), variables, x)
  for layer in [ConvGRU(4, recurrence="scan", remat=True),
                ConvGRU(4, recurrence="fused", remat=True, unroll=2),
                ConvGRU(4, recurrence="scan", unroll=3),
                ConvGRU(4, recurrence="fused", unroll=2)]:
    assert_float32_close(grad(layer)(variables, x), expected, expected64)


def assert_float16_close(got, expected, exact):
  """`got` and `expected`: float16 roundings of float32 results computed in other
  orders; `exact`: the float64 value. `got` is within its own rounding (half a
  float16 unit) plus its float32 error, allowed as assert_float32_close allows it:
  8 times the reference's (before its rounding, at most |expected - exact| plus
  half a float16 unit of it) and a few dozen float32 roundings of the largest
  value. Near zero a float16 unit is smaller than the float32 sums' error."""
  assert got.dtype == expected.dtype == jnp.float16
  half_unit = lambda a: np.float64(np.spacing(np.abs(a).astype(np.float16))) / 2
  got, expected, exact = np.float64(got), np.float64(expected), np.float64(exact)
  own = np.max(np.abs(expected - exact) + half_unit(expected))
  budget = half_unit(got) + 8 * own + 32 * np.finfo(np.float32).eps * np.max(np.abs(exact))
  assert np.all(np.abs(got - exact) <= budget)


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_with_gate_inputs_and_float16_frames(reverse, remat):
  """The stacked model's path (extra gate inputs) and float16 features, which the
  fused layer keeps in float16: same values and gradients as scan."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 4, 4, 6)).astype(jnp.float16)
  lower = jax.random.normal(jax.random.key(1), (2, 5, 4, 4, 3))
  make = lambda **kw: ConvGRU(4, (3, 3), reverse=reverse, return_sequences=True, **kw)
  reference = make(recurrence="scan")
  variables = _perturbed_init(reference, jax.random.key(2), x, gate_inputs=lower)
  def loss(layer):
    def f(v, x, lower):
      states = layer.apply(v, x, gate_inputs=lower)
      return jnp.sum(jnp.sin(states) * jnp.arange(5)[:, None, None, None])
    return f
  fused = make(recurrence="fused", remat=remat)
  apply = lambda layer: jax.jit(lambda v, x, lower: layer.apply(v, x, gate_inputs=lower))
  assert_float32_close(
      apply(fused)(variables, x, lower), apply(reference)(variables, x, lower),
      float64_run(apply(reference), variables, x.astype(jnp.float32), lower))
  grad = lambda layer: jax.jit(jax.grad(loss(layer), argnums=(0, 1, 2)))
  got = grad(fused)(variables, x, lower)
  expected = grad(reference)(variables, x, lower)
  expected64 = float64_run(grad(reference), variables, x.astype(jnp.float32), lower)
  assert_float32_close((got[0], got[2]), (expected[0], expected[2]),
                       (expected64[0], expected64[2]))
  assert_float16_close(got[1], expected[1], expected64[1])


@pytest.mark.parametrize("recurrence,remat",
                         [("fused", False), ("fused", True), ("scan", False)])
def test_bfloat16_recurrence_keeps_bfloat16_carry(recurrence, remat):
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4, 3))
  layer = ConvGRU(4, return_sequences=True, dtype=jnp.bfloat16,
                  recurrence=recurrence, remat=remat)
  variables = jax.jit(layer.init)(jax.random.key(1), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  # A float32 initial carry must not upcast the recurrence.
  states = jax.jit(layer.apply)(variables, x,
                                initial_carry=jnp.zeros((2, 4, 4, 4), jnp.float32))
  assert states.dtype == jnp.bfloat16
  reference = ConvGRU(4, return_sequences=True, recurrence=recurrence)
  # States in (-1, 1); each of the T=4 steps rounds to bfloat16 (8 significant
  # bits: 2^-8 relative) at most 6 times (input projection, two gates, candidate,
  # r*h, the update), and a step passes the state's error on (h + z(c - h): a
  # convex mix, with recurrent kernels this small not amplified): T * 6 * 2^-8.
  np.testing.assert_allclose(states.astype(jnp.float32),
                             jax.jit(reference.apply)(variables, x), atol=4 * 6 * 2 ** -8)
  loss = lambda model: jax.jit(jax.grad(
      lambda v: jnp.sum(model.apply(v, x).astype(jnp.float32))))
  grads, reference_grads = loss(layer)(variables), loss(reference)(variables)
  assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
             for g in jax.tree.leaves(grads))
  # The backward pass rounds as often again, per parameter the same sums: within
  # twice the forward's relative error of the float32 gradients, in norm.
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(reference_grads)):
    assert np.linalg.norm(got - want) <= 2 * 4 * 6 * 2 ** -8 * np.linalg.norm(want)

  cell = ConvGRUCell(4, dtype=jnp.bfloat16)
  carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
  assert carry.dtype == jnp.bfloat16
  rnn = nn.RNN(cell)
  rnn_vars = rnn.init(jax.random.key(1), x)
  carry, _ = rnn.apply(rnn_vars, x, return_carry=True)
  assert carry.dtype == jnp.bfloat16


def _bfloat16_sums(jaxpr, size):
  """reduce_sum equations of `jaxpr` (and the jaxprs inside it) that write `size`
  bfloat16 numbers."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "reduce_sum" and any(
        v.aval.dtype == jnp.bfloat16 and v.aval.shape == (size,) for v in eqn.outvars):
      found.append(eqn)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _bfloat16_sums(sub, size)
  return found


@pytest.mark.parametrize("recurrence", ["fused", "scan"])
def test_the_input_bias_gradient_is_summed_in_float32(recurrence):
  # It sums over every frame and position of the batch: summed in bfloat16 (the
  # scan path's nn.Conv did) it was 11% off the float32 gradient (4 clips of 6
  # frames, 6x6x8 float16 features, 16 channels), against 0.1-0.2% summed in float32.
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 3))
  layer = ConvGRU(4, dtype=jnp.bfloat16, recurrence=recurrence)
  variables = layer.init(jax.random.key(1), x)
  grad = jax.grad(lambda v: jnp.sum(layer.apply(v, x).astype(jnp.float32)))
  assert _bfloat16_sums(jax.make_jaxpr(grad)(variables).jaxpr, 3 * 4) == []


def test_bias_add_sums_its_gradient_in_float32():
  from grurcn_jax.models.convgru import _add_bias
  x = jax.random.normal(jax.random.key(0), (64, 8, 8, 5)).astype(jnp.bfloat16)
  g = jax.random.normal(jax.random.key(1), x.shape).astype(jnp.bfloat16)
  bias = jnp.arange(5, dtype=jnp.float32)
  out, vjp = jax.vjp(_add_bias, x, bias)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out, x + bias.astype(jnp.bfloat16))
  dx, dbias = vjp(g)
  assert dx.dtype == jnp.bfloat16 and dbias.dtype == jnp.float32
  np.testing.assert_array_equal(dx, g)
  # The exact sum of the bfloat16 cotangents; float32 summation of n terms is off
  # by at most (n - 1) * 2^-24 * sum |g|.
  g64 = np.asarray(g.astype(jnp.float32), np.float64).reshape(-1, 5)
  bound = (len(g64) - 1) * 2.0 ** -24 * np.abs(g64).sum(0)
  assert np.all(np.abs(np.asarray(dbias, np.float64) - g64.sum(0)) <= bound)


def test_bad_input_rank_is_a_clear_error():
  with pytest.raises(ValueError, match=r"\[batch, time, H, W, C\]"):
    ConvGRU(2).init(jax.random.key(0), jnp.zeros((2, 3, 4)))


def test_a_level_tuple_as_remat_is_refused():
  """Only the encoder resolves a level tuple; a layer given one would otherwise
  recompute whatever the tuple's truth says."""
  x = jnp.zeros((1, 2, 4, 4, 3))
  with pytest.raises(TypeError, match="ConvGRU.remat must be True or False"):
    ConvGRU(4, remat=("pool2",)).init(jax.random.key(0), x)
