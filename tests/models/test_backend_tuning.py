"""Kernel gradients per backend: equal to a float64 reference within the bound the
float32 arithmetic allows, sharded loops, and the kernel and time loop each
platform compiles."""

import flax.linen as nn
import jax
from jax import export
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from configs import default
from grurcn_jax import hlo, levels as levels_lib, sharding
from grurcn_jax.models import build_model, classification_loss, backend_tuning

# The kernels' numbers as real runs compute them, XLA's optimisations included.
pytestmark = pytest.mark.optimized

F32_UNIT_ROUNDOFF = 2.0 ** -24


def normal(seed, shape):
  """Random float32 inputs from numpy: jax.random's kernels, compiled with XLA's
  optimisations (this module's mark), take seconds each per shape on a CPU."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def reference_kernel_gradient(x, cotangent, kernel_shape):
  """float64: sum over frames and positions of x(shifted) * cotangent, per tap,
  and the sum of the terms' magnitudes (what rounding errors scale with)."""
  kh, kw = kernel_shape[:2]
  n, height, width, _ = x.shape
  top, left = (kh - 1) // 2, (kw - 1) // 2
  padded = np.pad(np.float64(x), ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left),
                                  (0, 0)))
  cot = np.float64(cotangent)
  value = np.zeros(kernel_shape)
  magnitude = np.zeros(kernel_shape)
  for i in range(kh):
    for j in range(kw):
      window = padded[:, i:i + height, j:j + width]
      value[i, j] = np.einsum("nhwc,nhwo->co", window, cot)
      magnitude[i, j] = np.einsum("nhwc,nhwo->co", np.abs(window), np.abs(cot))
  return value, magnitude


def float32_sum_bound(magnitude, terms):
  """Any order of summing `terms` float32 products: at most (terms + 1) * u times
  the sum of their magnitudes (one rounding per product, n - 1 per sum)."""
  return (terms + 1) * F32_UNIT_ROUNDOFF * magnitude


def assert_within(got, reference, bound):
  error = np.abs(np.float64(got) - reference)
  assert np.all(error <= bound), (
      f"{int(np.sum(error > bound))} of {error.size} entries off by up to "
      f"{float(np.max(error - bound)):.3g} beyond the float32 bound")


@pytest.mark.parametrize("method", ["xla", "taps", "auto"])
@pytest.mark.parametrize("x_shape,channels,features,kernel_size", [
    ((3, 7, 5), 3, 4, (3, 3)),
    ((2, 6, 4), 2, 3, (2, 2)),        # even kernel: 'SAME' pads more on the high side
    ((5, 4, 6), 4, 2, (5, 3)),
    ((40, 8, 8), 8, 8, (3, 3)),       # 2,560 rows: `taps` loops over chunks of frames
    ((6, 7, 5), 256, 256, (3, 3)),    # wide: `auto` takes `taps` on CPU
])
def test_kernel_gradient_equals_float64_reference(method, x_shape, channels, features,
                                                  kernel_size):
  kernel_shape = kernel_size + (channels, features)
  x = normal(0, x_shape + (channels,))
  cotangent = normal(1, x_shape + (features,))
  got = jax.jit(lambda x, c: backend_tuning.kernel_gradient(x, c, kernel_shape, method))(
      x, cotangent)
  assert got.dtype == jnp.float32 and got.shape == kernel_shape
  reference, magnitude = reference_kernel_gradient(x, cotangent, kernel_shape)
  bound = float32_sum_bound(magnitude, int(np.prod(x_shape)))
  assert_within(got, reference, bound)
  # The bound still catches a real error: the same sum with one frame left out.
  wrong, _ = reference_kernel_gradient(x[1:], cotangent[1:], kernel_shape)
  assert np.any(np.abs(wrong - reference) > bound)


def test_tap_products_run_with_64_bit_indices():
  # Under jax_enable_x64 a literal index is int64 and the taps' offsets int32:
  # dynamic_slice refused the mix (float64 gradient checks use this path on CPU).
  x, cotangent = normal(0, (3, 7, 5, 3)), normal(1, (3, 7, 5, 4))
  with jax.enable_x64(True):
    got = backend_tuning.kernel_gradient(x, cotangent, (3, 3, 3, 4), "taps")
  reference, magnitude = reference_kernel_gradient(x, cotangent, (3, 3, 3, 4))
  assert_within(got, reference, float32_sum_bound(magnitude, 105))


@pytest.mark.parametrize("method", ["xla", "taps", "auto"])
def test_kernel_gradient_of_split_cotangents(method):
  """Cotangents given in parts (the gates' and the candidate's columns) give the
  kernel gradient of their concatenation."""
  x = normal(0, (4, 6, 5, 3))
  parts = (normal(1, (4, 6, 5, 4)),
           normal(2, (4, 6, 5, 2)))
  got = backend_tuning.kernel_gradient(x, parts, (3, 3, 3, 6), method)
  reference, magnitude = reference_kernel_gradient(
      x, np.concatenate(parts, axis=-1), (3, 3, 3, 6))
  assert_within(got, reference, float32_sum_bound(magnitude, 120))


def test_chunks_split_evenly_over_devices():
  """`taps` walks chunks of frames; each chunk takes frames spread over the whole
  batch-major axis, so a batch sharded over 8 devices stays sharded in the loop."""
  assert jax.device_count() == 8
  assert backend_tuning._frames_per_chunk(160, 20) == 16   # a multiple of 8 devices
  assert backend_tuning._frames_per_chunk(160, 4) == 8     # the smallest such
  assert backend_tuning._frames_per_chunk(12, 5) == 4      # none: the nearest below
  mesh = sharding.make_mesh()
  frames = NamedSharding(mesh, P(sharding.DATA_AXIS))
  x = jax.device_put(normal(0, (64, 8, 8, 4)), frames)
  cotangent = jax.device_put(normal(1, (64, 8, 8, 4)), frames)
  gradient = jax.jit(lambda x, c: backend_tuning.kernel_gradient(x, c, (3, 3, 4, 4), "taps"))
  compiled = gradient.lower(x, cotangent).compile().as_text()
  assert "while" in compiled            # 4,096 rows: a loop over chunks of 8 frames
  assert not hlo.all_gathers(compiled)
  reference, magnitude = reference_kernel_gradient(x, cotangent, (3, 3, 4, 4))
  assert_within(gradient(x, cotangent), reference, float32_sum_bound(magnitude, 4096))


@pytest.mark.parametrize("method", ["xla", "taps", "auto"])
def test_flax_conv_is_nn_conv_with_its_kernel_gradient(method):
  x = normal(0, (2, 3, 6, 5, 4))   # [B, T, H, W, C]
  plain = nn.Conv(8, (3, 3), padding="SAME")
  batched = nn.Conv(8, (3, 3), padding="SAME",
                    conv_general_dilated=backend_tuning.flax_conv(method))
  variables = {"params": {"kernel": normal(1, (3, 3, 4, 8)), "bias": normal(3, (8,))}}
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, jax.eval_shape(plain.init, jax.random.key(1), x))
  np.testing.assert_array_equal(batched.apply(variables, x), plain.apply(variables, x))
  cotangent = normal(2, (2, 3, 6, 5, 8))
  grads = lambda m: jax.grad(lambda v, x: jnp.sum(m.apply(v, x) * cotangent),
                             argnums=(0, 1))(variables, x)
  (got_v, got_x), (want_v, want_x) = grads(batched), grads(plain)
  frames = lambda a: np.reshape(a, (-1,) + a.shape[2:])
  reference, magnitude = reference_kernel_gradient(frames(x), frames(cotangent),
                                                   (3, 3, 4, 8))
  assert_within(got_v["params"]["kernel"], reference, float32_sum_bound(magnitude, 90))
  np.testing.assert_array_equal(got_v["params"]["bias"], want_v["params"]["bias"])
  np.testing.assert_array_equal(got_x, want_x)   # the same XLA input gradient


def test_unknown_kernel_gradient_is_a_clear_error():
  with pytest.raises(ValueError, match="valid: auto, xla, taps"):
    backend_tuning.flax_conv("cudnn")


def _exported_gradient(platform, method="auto", remat=False, unroll=1):
  """The StableHLO a GPU/TPU/CPU would compile for the paper's pool3 + pool4
  gradient, lowered here without such a device."""
  config = default.get_config()
  config.model.levels, config.model.hidden = ("pool3", "pool4"), (128, 256)
  config.model.kernel_gradient, config.model.remat = method, remat
  config.model.unroll = unroll
  model = build_model(config.model)
  shapes = {l: levels_lib.feature_shape(l, 224) for l in config.model.levels}
  features = {l: jax.ShapeDtypeStruct((4, 10, *s), jnp.float16) for l, s in shapes.items()}
  labels = jax.ShapeDtypeStruct((4,), jnp.int32)
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), {l: jnp.zeros(f.shape, f.dtype) for l, f in features.items()}
  )["params"])

  def loss(params, features, labels):
    out = model.apply({"params": params}, features)
    return jnp.mean(classification_loss(out, labels, "level_mean"))

  exported = export.export(jax.jit(jax.grad(loss)), platforms=[platform])(
      params, features, labels)
  text = exported.mlir_module()
  return text.count("stablehlo.while"), text.count("stablehlo.dot_general")


@pytest.mark.parametrize("platform,remat,loops", [("cuda", False, 0), ("cuda", True, 0)])
def test_auto_unroll_removes_the_time_loops_on_gpu(platform, remat, loops):
  """unroll=auto: a GPU runs the paper's 10-frame clips as straight-line code
  (each loop iteration would cost a launch gap), with remat too; the same XLA
  kernel gradients. (TPU and CPU keep their loops: the TPU counts below, and
  test_time_loop_unrolls_as_asked.)"""
  method = "xla"  # the CPU's own taps add loops of their own
  assert _exported_gradient(platform, method, remat=remat, unroll=0) == (loops, 6)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("remat", [False, True])
def test_accelerators_compile_xla_kernel_gradients(platform, remat):
  """On GPU/TPU `auto` lowers to XLA's own kernel gradients: the only loops are the
  two recurrences (forward, backward) per level, the only matrix products the
  classifiers' (forward, and two backward, per level). The time loops are kept:
  asked for on GPU (unroll=1), the backend's choice (unroll=0) on TPU."""
  unroll = 0 if platform == "tpu" else 1
  assert _exported_gradient(platform, remat=remat, unroll=unroll) == (4, 6)
  # Forcing the per-tap products shows up in the same count: loops over taps.
  loops, products = _exported_gradient(platform, "taps", remat=remat, unroll=unroll)
  assert loops > 4 and products > 6


def test_cpu_compiles_tap_products_for_wide_kernels():
  loops, products = _exported_gradient("cpu")
  assert loops > 4 and products > 6
  assert _exported_gradient("cpu", "xla") == (4, 6)


def test_time_loop_unrolls_as_asked():
  body = lambda c, i: (c * 2 + i, None)
  carry = jnp.float32(1)
  for unroll in ("auto", 1, 3, 10):
    assert backend_tuning.time_loop(body, carry, 10, unroll) == 2 ** 10 + 1013
  # auto keeps the loop for long clips on every platform.
  def loops(num_steps, platform="cuda"):
    fn = lambda c: backend_tuning.time_loop(body, c, num_steps, "auto")
    return export.export(jax.jit(fn), platforms=[platform])(carry).mlir_module().count(
        "stablehlo.while")
  assert loops(backend_tuning.MAX_UNROLLED_STEPS) == 0
  assert loops(backend_tuning.MAX_UNROLLED_STEPS + 1) == 1
  assert loops(4, "tpu") == 1 and loops(4, "cpu") == 1
  for bad in (0, "fast", True, 2.0):
    with pytest.raises(ValueError, match="choose 'auto' or an integer >= 1"):
      backend_tuning.time_loop(body, carry, 4, bad)
