"""grurcn_jax.flops: FLOPs counted from the model's traced operations.

Checked against (1) an independent closed-form count of every architecture (the
formula the counter replaced), exactly, whatever the recurrence implementation,
remat or unroll; (2) the jaxpr walker on small functions with known counts (loops,
branches, custom derivatives, shard_map); (3) XLA's own cost analysis of the
compiled forward.
"""

import functools
import math
import types

import jax
from jax import lax
from jax.extend import core as jax_core
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import default
from grurcn_jax import flops
from grurcn_jax.models import build_model

SHAPES = {"pool2": (8, 8, 4), "pool3": (4, 4, 6), "fc7": (16,)}
BATCH, CLIP = 2, 3


def model_config(**changes):
  cfg = default.get_config().model
  cfg.levels, cfg.hidden, cfg.num_classes = ("pool2", "pool3"), (3, 5), 7
  for key, value in changes.items():
    cfg[key] = value
  return cfg


def level_shapes(cfg, shapes=SHAPES):
  return {level: shapes[level] for level in cfg.levels}


# -- the closed-form reference --------------------------------------------------

def reference_forward_flops(cfg, shapes, batch, clip_length, train=False):
  """Per level: input conv 2*P*taps*C*3F and hidden convs 2*P*taps*F*3F per frame,
  classifier 2*width*K per clip; bi doubles the recurrent part (concat doubles the
  classifier width); stacked adds the lower level's conv 2*P*taps*F_lower*2F;
  vgg_frames is 2*C*K per frame; vgg_rnn has P = taps = 1 (per-frame vectors).

  `train`: a training step. Products of the features (the input convolutions,
  vgg_frames' classifier) add their kernel's gradient (2x); products of the states
  (hidden and lower-level convolutions, the classifiers of recurrent models) also
  the state's gradient (3x)."""
  data, state = (2, 3) if train else (1, 1)
  frames = batch * clip_length
  k = cfg.num_classes
  total, lower = 0, None
  for index, level in enumerate(cfg.levels):
    shape = tuple(shapes[level])
    c = shape[-1]
    if cfg.name == "vgg_frames":
      total += data * frames * 2 * c * k
      continue
    f = cfg.hidden[index]
    is_map = len(shape) == 3
    positions = shape[0] * shape[1] if is_map and cfg.name == "grurcn" else 1
    taps = cfg.kernel_size ** 2 if is_map and cfg.name == "grurcn" else 1
    per_frame = (data * 2 * positions * taps * c * 3 * f
                 + state * 2 * positions * taps * f * 3 * f)
    width = f
    if cfg.name == "grurcn" and cfg.variant == "bi":
      per_frame *= 2
      width = 2 * f if cfg.bi_merge == "concat" else f
    if cfg.name == "grurcn" and cfg.variant == "stacked" and lower is not None:
      per_frame += state * 2 * positions * taps * lower * 2 * f
    lower = f
    total += frames * per_frame + state * batch * 2 * width * k
  return total


def count(cfg, shapes=SHAPES, batch=BATCH, clip_length=CLIP):
  return flops.forward_flops(build_model(cfg), level_shapes(cfg, shapes), batch,
                             clip_length)


IMPLEMENTATIONS = [dict(recurrence=r, remat=m) for r in ("fused", "scan")
                   for m in (False, True)]
IMPLEMENTATION_IDS = [f"{d['recurrence']}-remat{int(d['remat'])}" for d in IMPLEMENTATIONS]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=IMPLEMENTATION_IDS)
@pytest.mark.parametrize("variant,bi_merge", [("uni", "concat"), ("bi", "concat"),
                                              ("bi", "sum"), ("stacked", "concat")])
def test_grurcn_matches_closed_form(variant, bi_merge, implementation):
  cfg = model_config(variant=variant, bi_merge=bi_merge, **implementation)
  assert count(cfg) == reference_forward_flops(cfg, SHAPES, BATCH, CLIP)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=IMPLEMENTATION_IDS)
@pytest.mark.parametrize("variant", ["uni", "bi", "stacked"])
def test_grurcn_with_fc7_matches_closed_form(variant, implementation):
  # fc7 is read as a (16,) vector here: the model takes its shape from its input.
  cfg = model_config(variant=variant, levels=("pool2", "pool3", "fc7"),
                     hidden=(3, 5, 2), **implementation)
  assert count(cfg) == reference_forward_flops(cfg, SHAPES, BATCH, CLIP)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=IMPLEMENTATION_IDS)
@pytest.mark.parametrize("name", ["vgg_frames", "vgg_rnn"])
def test_baselines_match_closed_form(name, implementation):
  cfg = model_config(name=name, levels=("pool3", "fc7"), hidden=(5, 2),
                     **implementation)
  assert count(cfg) == reference_forward_flops(cfg, SHAPES, BATCH, CLIP)


@pytest.mark.parametrize("changes", [dict(unroll=3), dict(unroll=2, recurrence="scan"),
                                     dict(dtype="bfloat16"), dict(kernel_size=1),
                                     dict(kernel_size=5, variant="stacked")],
                         ids=["unroll3", "scan-unroll2", "bfloat16", "kernel1",
                              "kernel5-stacked"])
def test_count_follows_config_not_implementation(changes):
  cfg = model_config(**changes)
  assert count(cfg) == reference_forward_flops(cfg, SHAPES, BATCH, CLIP)


def test_scales_with_batch_and_clip_length():
  cfg = model_config()
  for batch, clip_length in ((1, 1), (3, 5)):
    assert count(cfg, batch=batch, clip_length=clip_length) == \
        reference_forward_flops(cfg, SHAPES, batch, clip_length)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=IMPLEMENTATION_IDS)
@pytest.mark.parametrize("changes", [
    dict(variant="uni"), dict(variant="bi", bi_merge="sum"), dict(variant="stacked"),
    dict(variant="bi", levels=("pool2", "pool3", "fc7"), hidden=(3, 5, 2)),
    dict(name="vgg_rnn", levels=("pool3", "fc7"), hidden=(5, 2)),
    dict(name="vgg_frames", levels=("pool3", "fc7"), hidden=(5, 2))],
    ids=["uni", "bi-sum", "stacked", "bi-fc7", "vgg_rnn", "vgg_frames"])
def test_train_step_computes_no_gradient_for_the_data(changes, implementation):
  # The input convolutions' operands are the features: their backward is the
  # kernel's gradient alone. Remat's recomputation is not counted (model FLOPs).
  cfg = model_config(**changes, **implementation)
  model, shapes = build_model(cfg), level_shapes(cfg)
  assert flops.train_step_flops(model, shapes, BATCH, CLIP) == \
      reference_forward_flops(cfg, SHAPES, BATCH, CLIP, train=True)


def test_frozen_parameters_and_stop_gradient_take_no_backward():
  # y = x W1 (frozen) -> stop_gradient or not -> z = y W2: the backward of the
  # first product needs W1's gradient only when W1 trains, and y's gradient only
  # when it reaches the loss.
  def apply(variables, x):
    y = x @ variables["params"]["first"]
    if variables["params"].get("cut") is not None:
      y = lax.stop_gradient(y)
    return y @ variables["params"]["second"]
  x, w1, w2 = spec(4, 3), spec(3, 5), spec(5, 2)
  one, two = 2 * 4 * 3 * 5, 2 * 4 * 5 * 2
  params = {"params": {"first": w1, "second": w2}}
  assert flops.step_flops(apply, params, x) == 2 * one + 3 * two
  assert flops.step_flops(apply, params, x, frozen=("first",)) == one + 2 * two
  cut = {"params": {"first": w1, "second": w2, "cut": spec(1)}}
  assert flops.step_flops(apply, cut, x) == one + 2 * two


def test_a_scan_carry_needs_its_gradient_once_any_iteration_makes_it_depend_on_params():
  # The carry starts as data (zeros); the first iteration's product with W makes
  # it a function of W, so every iteration's product needs the carry's gradient.
  def apply(variables, x):
    w = variables["params"]["w"]
    def body(h, x_t):
      h = jnp.tanh(x_t + h @ w)
      return h, None
    return lax.scan(body, jnp.zeros((2, 4)), x)[0]
  step = 2 * 2 * 4 * 4
  assert flops.step_flops(apply, {"params": {"w": spec(4, 4)}}, spec(5, 2, 4)) == \
      5 * 3 * step


def reference_decoder_flops(batch, length, segments, width, vocab, caption,
                            segments_trained=None):
  """The attention LSTM's contractions (models/caption_decoder.py), per video:
  once h_0, c_0 (2 x D x H each) and the segments' projection (K x D x A); per
  word the attention (H x A, K x A scores, K x D context), the gates from the
  word, h and the context (E, H, D each x 4H), and the output layer (H x E,
  D x E, E x V). The embedding is a lookup, not a product.

  `segments_trained` (True / False): a training step. Every product then also
  computes the gradient of its parameter and of its other operand (3x), except the
  products of the segment vectors when they depend on no trained parameter (a
  frozen encoder, no learned segment positions): their gradient is not needed
  (2x)."""
  e, h, a = caption.embed_dim, caption.hidden, caption.attention_dim
  k, d = segments, width
  of_segments = 2 * d * h * 2 + 2 * k * d * a + length * 2 * k * d
  per_word = (2 * h * a + 2 * k * a + 2 * 4 * h * (e + h + d)
              + 2 * e * (h + d) + 2 * e * vocab)
  if segments_trained is None:
    return batch * (of_segments + length * per_word)
  return batch * ((3 if segments_trained else 2) * of_segments + 3 * length * per_word)


@pytest.mark.parametrize("freeze_encoder,segment_positions",
                         [(False, True), (True, True), (True, False)])
def test_captioning_step_counts_the_encoder_backward_only_when_trained(
    tiny_captions_dir, freeze_encoder, segment_positions):
  from grurcn_jax import experiment as experiment_lib
  from tests.training_setup import tiny_captioning_config
  # A frozen encoder needs a checkpoint to start from; counting FLOPs never reads it.
  config = tiny_captioning_config(
      tiny_captions_dir, caption__freeze_encoder=freeze_encoder,
      caption__encoder_checkpoint="/not/read" if freeze_encoder else "",
      caption__segment_positions=segment_positions)
  experiment = experiment_lib.assemble(config)
  batch, caption = 3, config.caption
  cfg = config.model.copy_and_resolve_references()
  cfg.num_classes = 0                    # the encoder without a classifier
  shapes = {l: tuple(s) for l, s in experiment.spec.input_shapes.items()}
  # Every segment of every video is a clip of clip_length frames.
  encoder = reference_forward_flops(cfg, shapes, batch * caption.segments,
                                    config.data.clip_length,
                                    train=not freeze_encoder)
  decoder = functools.partial(reference_decoder_flops, batch, caption.max_length,
                              caption.segments, sum(cfg.hidden),
                              experiment.vocabulary.size, caption)
  # Learned segment positions are added to the segment vectors: a frozen encoder's
  # vectors then depend on trained parameters all the same.
  assert experiment.train_step_flops(batch) == encoder + decoder(
      segments_trained=not freeze_encoder or segment_positions)
  assert decoder(segments_trained=True) == 3 * decoder()


# -- the jaxpr walker on functions with known counts ----------------------------

def walk(fn, *args):
  return flops.jaxpr_flops(jax.make_jaxpr(fn)(*args))


def spec(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_dot_general_counts_batch_contracting_and_free_dims():
  assert walk(lambda a, b: jnp.einsum("bij,bjk->bik", a, b),
              spec(2, 3, 4), spec(2, 4, 5)) == 2 * 2 * 3 * 4 * 5
  assert walk(lambda a, b: a @ b, spec(3, 4), spec(4)) == 2 * 3 * 4


def test_conv_counts_taps_and_channels_per_group():
  def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # out [2, 5, 5, 6]; kernel 3x3 taps; 4 input channels in 2 groups: 2 per group.
  assert walk(conv, spec(2, 5, 5, 4), spec(3, 3, 2, 6)) == 2 * (2 * 5 * 5 * 6) * 9 * 2
  strided = lambda x, w: lax.conv_general_dilated(
      x, w, (2, 2), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
  # out [1, 8, 3, 3] from a 7x7 input, 3x3 kernel, stride 2; 5 input channels.
  assert walk(strided, spec(1, 5, 7, 7), spec(8, 5, 3, 3)) == 2 * (8 * 3 * 3) * 9 * 5


def test_elementwise_ops_are_left_out():
  assert walk(lambda x: jnp.tanh(x) * jax.nn.sigmoid(x) + 1, spec(4, 4)) == 0


def test_scan_body_counts_length_times_whatever_the_unroll():
  def f(x, unroll):
    return lax.scan(lambda c, _: (c @ c, None), x, None, length=5, unroll=unroll)[0]
  for unroll in (1, 2, 5):
    assert walk(functools.partial(f, unroll=unroll), spec(3, 3)) == 5 * 2 * 27
  # A fori_loop with Python-int bounds is a scan.
  loop = lambda x: lax.fori_loop(0, 4, lambda i, c: c @ c, x)
  assert walk(loop, spec(3, 3)) == 4 * 2 * 27
  nested = lambda x: lax.scan(
      lambda c, _: (lax.scan(lambda d, _: (d @ d, None), c, None, length=3)[0], None),
      x, None, length=2)[0]
  assert walk(nested, spec(3, 3)) == 2 * 3 * 2 * 27


def test_cond_counts_the_most_expensive_branch():
  heavy = lambda x: (x @ x) @ x     # 2 products
  light = lambda x: x @ x           # 1 product
  cheap = lambda x: x + 1
  assert walk(lambda p, x: lax.cond(p, light, heavy, x), jnp.bool_(True),
              spec(3, 3)) == 2 * 2 * 27
  assert walk(lambda i, x: lax.switch(i, [cheap, light, heavy], x), jnp.int32(0),
              spec(3, 3)) == 2 * 2 * 27


def test_while_with_counted_work_raises():
  loop = lambda n, x: lax.fori_loop(0, n, lambda i, c: c @ c, x)  # traced bound
  with pytest.raises(flops.FlopCountError, match="trip count"):
    walk(loop, jnp.int32(3), spec(3, 3))
  converge = lambda x: lax.while_loop(lambda c: jnp.sum(c) < 10, lambda c: c @ c, x)
  with pytest.raises(flops.FlopCountError, match="while loop"):
    walk(converge, spec(3, 3))
  # Nothing counted in the loop: nothing to undercount.
  counter = lambda n, x: lax.fori_loop(0, n, lambda i, c: c * 2, x) @ x
  assert walk(counter, jnp.int32(3), spec(3, 3)) == 2 * 27


def test_sub_jaxprs_are_found_in_calls_and_custom_derivatives():
  @jax.custom_vjp
  def custom(x):
    return x @ x
  custom.defvjp(lambda x: (x @ x, x), lambda x, g: (g,))

  @jax.custom_jvp
  def custom_jvp(x):
    return x @ x
  custom_jvp.defjvp(lambda primals, tangents: (custom_jvp(*primals), tangents[0]))

  inner = jax.jit(lambda x: x @ x)
  remat = jax.checkpoint(lambda x: x @ x)
  fn = lambda x: custom(x) + custom_jvp(x) + inner(x) + remat(x) + jax.jit(
      lambda y: inner(y) @ y)(x)
  assert walk(fn, spec(3, 3)) == 6 * 2 * 27


def test_shard_map_body_counts_once_per_shard():
  devices = jax.device_count()           # 8 simulated CPU devices (conftest)
  mesh = jax.make_mesh((devices,), ("d",))
  fn = jax.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P("d"), P()),
                     out_specs=P("d"))
  rows = jax.ShapeDtypeStruct((devices, 4), jnp.float32,
                              sharding=NamedSharding(mesh, P("d")))
  weights = jax.ShapeDtypeStruct((4, 5), jnp.float32, sharding=NamedSharding(mesh, P()))
  # Each shard multiplies its [1, 4] rows by [4, 5]: the global [8, 4] @ [4, 5].
  assert walk(fn, rows, weights) == 2 * devices * 4 * 5


def test_model_while_loop_is_reported(monkeypatch):
  # Were the recurrence ever a while loop, the count must fail, not undercount.
  def while_scan(body, init, xs, unroll=1, **kwargs):
    del unroll, kwargs
    n = xs.shape[0]
    def loop_body(state):
      i, carry = state
      carry, _ = body(carry, xs[i])
      return i + 1, carry
    _, carry = lax.while_loop(lambda s: s[0] < n, loop_body, (jnp.int32(0), init))
    return carry, None
  from grurcn_jax.models import backend_tuning
  # Only the module that runs the recurrence's time loops sees the replacement
  # (jax.lax itself is untouched).
  monkeypatch.setattr(backend_tuning, "lax",
                      types.SimpleNamespace(**{**vars(lax), "scan": while_scan}))
  with pytest.raises(flops.FlopCountError):
    count(model_config())


# -- XLA's cost analysis of the compiled forward --------------------------------

def moved_elements(jaxpr) -> int:
  """Elements read or written by every operation other than convolutions and dot
  products (each counts its largest operand or result), scan bodies x length."""
  jaxpr = jaxpr.jaxpr if isinstance(jaxpr, jax_core.ClosedJaxpr) else jaxpr
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      continue
    subs = [v for v in eqn.params.values()
            if isinstance(v, (jax_core.Jaxpr, jax_core.ClosedJaxpr))]
    if subs:
      repeat = eqn.params["length"] if eqn.primitive.name == "scan" else 1
      total += repeat * sum(moved_elements(s) for s in subs)
    else:
      total += max(math.prod(v.aval.shape) for v in [*eqn.invars, *eqn.outvars])
  return total


def compiled_forward(cfg, shapes, batch, clip_length):
  model = build_model(cfg)
  features = {level: jax.ShapeDtypeStruct((batch, clip_length) + shapes[level],
                                          jnp.float32) for level in cfg.levels}
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), features)
  compiled = jax.jit(lambda v, f: model.apply(v, f, train=False)).lower(
      variables, features).compile()
  # unroll = clip_length: the recurrence is straight-line code, so XLA's count
  # (which counts a while loop's body once) covers every step.
  assert "while" not in compiled.as_text()
  return model, compiled.cost_analysis()["flops"]


WIDE = {"pool2": (4, 4, 64), "pool3": (2, 2, 96), "fc7": (128,)}
XLA_CONFIGS = {
    "grurcn-uni": dict(levels=("pool2", "pool3"), hidden=(16, 24)),
    "grurcn-bi-fc7": dict(variant="bi", levels=("pool3", "fc7"), hidden=(24, 32)),
    "grurcn-stacked": dict(variant="stacked", levels=("pool2", "pool3", "fc7"),
                           hidden=(16, 24, 32)),
    "vgg_rnn": dict(name="vgg_rnn", levels=("fc7",), hidden=(32,)),
    "vgg_frames": dict(name="vgg_frames", levels=("fc7",), hidden=(32,),
                       num_classes=16),
}


@pytest.mark.parametrize("recurrence", ["fused", "scan"])
@pytest.mark.parametrize("name", list(XLA_CONFIGS))
def test_within_xla_cost_analysis(name, recurrence):
  """ours <= XLA <= ours + 3 * T * E, with 1x1 contractions (no padding).

  Lower bound: XLA counts a convolution or dot product as 2 FLOPs per multiply-add
  too, over the kernel taps that touch the input; with 1x1 kernels none touches
  padding, so its contraction count is ours exactly, and everything else it counts
  is >= 0.
  Upper bound: every other HLO instruction costs XLA at most 1 FLOP per element,
  except the logistic, which XLA:CPU expands to negate, add and divide (3; its
  exp is a transcendental): at most 3 per element the jaxpr's other operations
  move (E, counting each operation's largest operand). XLA's fusion may recompute
  an elementwise producer in every fusion that consumes it; in a T-step unrolled
  recurrence a clip-wide value (the biased input projection of all T frames) is
  consumed by each step: at most T copies.
  """
  clip_length = 2
  cfg = model_config(kernel_size=1, unroll=clip_length, recurrence=recurrence,
                     **XLA_CONFIGS[name])
  model, xla = compiled_forward(cfg, WIDE, BATCH, clip_length)
  shapes = level_shapes(cfg, WIDE)
  ours = flops.forward_flops(model, shapes, BATCH, clip_length)
  assert ours == reference_forward_flops(cfg, WIDE, BATCH, clip_length)
  elementwise = moved_elements(flops.forward_jaxpr(model, shapes, BATCH, clip_length))
  upper = ours + 3 * clip_length * elementwise
  # The shapes make the contractions dominate, so the check has teeth: a count off
  # by 2x either way fails it.
  assert upper < 2 * ours
  assert ours <= xla <= upper, (ours, xla, upper, xla / ours)


def _valid_pairs(n: int, k: int) -> int:
  """(output, tap) pairs of a stride-1 'SAME' k-tap convolution over n positions
  whose tap lands inside the input (not on padding)."""
  return sum(1 for out in range(n) for tap in range(k)
             if 0 <= out + tap - (k - 1) // 2 < n)


@pytest.mark.parametrize("variant,kernel_size,recurrence", [
    ("uni", 3, "fused"), ("bi", 3, "scan"), ("stacked", 3, "fused"),
    ("uni", 1, "scan")])
def test_input_channel_cost_matches_xla_exactly(variant, kernel_size, recurrence):
  """Only the input convolution touches the input channels, so the FLOPs that extra
  input channels add must be what XLA counts for them, exactly. XLA leaves out
  the taps that fall on 'SAME' padding (ours counts every tap, as the closed form
  does), so with 3x3 kernels its share is valid_pairs(H) * valid_pairs(W) of each
  frame's H * W * 9 (position, tap) pairs."""
  clip_length = 2
  cfg = model_config(variant=variant, kernel_size=kernel_size, recurrence=recurrence,
                     unroll=clip_length)
  narrow = {"pool2": (8, 8, 4), "pool3": (4, 4, 6)}
  wide = {"pool2": (8, 8, 12), "pool3": (4, 4, 10)}
  results = [compiled_forward(cfg, shapes, BATCH, clip_length)
             for shapes in (narrow, wide)]
  xla_delta = results[1][1] - results[0][1]
  ours_delta = (flops.forward_flops(results[1][0], wide, BATCH, clip_length)
                - flops.forward_flops(results[0][0], narrow, BATCH, clip_length))
  directions = 2 if variant == "bi" else 1
  expected_ours = expected_xla = 0
  for level, f in zip(cfg.levels, cfg.hidden):
    h, w, c = narrow[level]
    per_pair = 2 * BATCH * clip_length * (wide[level][-1] - c) * 3 * f * directions
    expected_ours += per_pair * h * w * kernel_size ** 2
    expected_xla += per_pair * (_valid_pairs(h, kernel_size)
                                * _valid_pairs(w, kernel_size))
  assert ours_delta == expected_ours
  assert xla_delta == expected_xla
  if kernel_size == 1:
    assert xla_delta == ours_delta


def test_a_step_counts_the_branch_of_most_forward_and_backward_flops():
  # Branch one: two products of data (forward 2 units, no backward); branch two:
  # w @ w (forward 1, backward 2: both operands are the parameter).
  def apply(variables, x, i):
    w = variables["params"]["w"]
    return lax.cond(i > 0, lambda: x @ x @ x, lambda: w @ w)
  unit = 2 * 4 * 4 * 4
  step = flops.step_flops(apply, {"params": {"w": spec(4, 4)}}, spec(4, 4),
                          jax.ShapeDtypeStruct((), jnp.int32))
  assert step == 3 * unit


def test_integers_carry_no_gradient():
  # one_hot(argmax(x @ w)) depends on w only through an integer: its product with
  # x needs no backward.
  def apply(variables, x):
    y = x @ variables["params"]["w"]
    picked = jax.nn.one_hot(jnp.argmax(y, -1), 4)
    return (picked @ x).sum() + y.sum()
  unit = 2 * 4 * 4 * 4
  assert flops.step_flops(apply, {"params": {"w": spec(4, 4)}}, spec(4, 4)) == 3 * unit


# The step program itself: with the fused recurrence (the default, a hand-written
# backward) every contraction of the traced train step, forward and backward, is
# one the count expects, and no other. (With `scan` JAX's own backward carries
# contractions that XLA removes as unused; with remat it recomputes the forward.)
@pytest.mark.parametrize("changes", [
    dict(), dict(model__variant="stacked"), dict(data__input="frames"),
    dict(data__input="frames", model__backbone_trainable=True)],
    ids=["uni", "stacked", "frames-frozen", "frames-trained"])
def test_the_traced_step_holds_exactly_the_counted_contractions(tiny_demo_dir, changes):
  from grurcn_jax.experiment import assemble
  from tests.training_setup import tiny_config
  config = tiny_config(tiny_demo_dir, **changes)
  experiment = assemble(config)
  assert _traced_step_flops(experiment) == experiment.train_step_flops(config.batch_size)


@pytest.mark.parametrize("freeze_encoder", [False, True])
def test_the_traced_captioning_step_holds_exactly_the_counted_contractions(
    tiny_captions_dir, freeze_encoder):
  # Frozen, the encoder takes no backward in the step (its gradient would only be
  # discarded), as counted.
  from grurcn_jax.experiment import assemble
  from tests.training_setup import tiny_captioning_config
  config = tiny_captioning_config(
      tiny_captions_dir, caption__freeze_encoder=freeze_encoder,
      caption__encoder_checkpoint="/not/read" if freeze_encoder else "")
  experiment = assemble(config)
  assert _traced_step_flops(experiment) == experiment.train_step_flops(config.batch_size)


def _traced_step_flops(experiment):
  batch = next(experiment.train_batches(experiment.config.batch_size, 0))
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  return flops.jaxpr_flops(jax.make_jaxpr(experiment.train_step())(
      experiment.abstract_state(), batch))
