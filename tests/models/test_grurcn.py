"""The multi-level GRU-RCN: variants, paper configurations, program size."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grurcn_jax import levels as levels_lib
from grurcn_jax.models import GRURCN, build_model, classification_loss
from grurcn_jax.models.grurcn import max_pool_to

PAPER_CONFIGS = ["ucf101_grurcn", "ucf101_bigrurcn", "ucf101_stacked",
                 "ucf101_vgg_frames", "ucf101_vgg_rnn"]


def tiny_features(key, batch=2, time=5, image_size=32,
                  levels=("pool3", "pool4", "pool5", "fc7"), channels=3):
  """Random features shaped like VGG-16 levels of tiny frames, few channels."""
  feats = {}
  for i, level in enumerate(levels):
    shape = levels_lib.feature_shape(level, image_size)[:-1] + (channels,)
    feats[level] = jax.random.normal(jax.random.fold_in(key, i), (batch, time) + shape)
  return feats


def tiny_model(variant, levels=("pool3", "pool4", "pool5", "fc7"), **kwargs):
  return GRURCN(num_classes=5, levels=levels, hidden=(3,) * len(levels),
                variant=variant, **kwargs)


# Jitted with the model static (modules compare by value): one compilation per
# model and shapes, shared by the tests that use the same ones. Called eagerly,
# each scan would be traced and compiled again on every call.
@functools.partial(jax.jit, static_argnums=0)
def init(model, feats, seed=1):
  return model.init(jax.random.key(seed), feats)


@functools.partial(jax.jit, static_argnums=0)
def encode(model, variables, feats):
  return model.apply(variables, feats, method=GRURCN.encode)


@functools.partial(jax.jit, static_argnums=(0, 3))
def apply(model, variables, feats, train=False, dropout_seed=0):
  rngs = {"dropout": jax.random.key(dropout_seed)} if train else {}
  return model.apply(variables, feats, train=train, rngs=rngs)


@pytest.mark.parametrize("variant", ["uni", "stacked"])
def test_uni_and_stacked_are_causal(variant):
  model = tiny_model(variant)
  feats = tiny_features(jax.random.key(0))
  variables = init(model, feats)
  states = encode(model, variables, feats)
  t = 2
  changed = {k: v.at[:, t + 1:].add(1.0) for k, v in feats.items()}
  changed_states = encode(model, variables, changed)
  for level in feats:
    np.testing.assert_array_equal(changed_states[level][:, :t + 1],
                                  states[level][:, :t + 1])
    assert not np.allclose(changed_states[level][:, t + 1:], states[level][:, t + 1:])


def test_bidirectional_sees_the_future():
  model = tiny_model("bi")
  feats = tiny_features(jax.random.key(0))
  variables = init(model, feats)
  states = encode(model, variables, feats)
  changed = {k: v.at[:, -1].add(1.0) for k, v in feats.items()}
  changed_states = encode(model, variables, changed)
  for level in feats:
    # Concatenated [forward, backward]: the backward half at t=0 sees frame T-1.
    assert states[level].shape[-1] == 6
    assert not np.allclose(changed_states[level][:, 0, ..., 3:], states[level][:, 0, ..., 3:])
    np.testing.assert_array_equal(changed_states[level][:, 0, ..., :3],
                                  states[level][:, 0, ..., :3])


def test_bidirectional_sum_merge():
  feats = tiny_features(jax.random.key(0))
  concat, summed = tiny_model("bi"), tiny_model("bi", bi_merge="sum")
  variables = init(concat, feats)
  both = encode(concat, variables, feats)
  added = encode(summed, variables, feats)
  # One float32 addition of states in (-1, 1), in two programs: their directions'
  # states may differ in the last bit, so the sums by at most 4 * 2^-24 absolute
  # (relative alone fails where the two directions cancel).
  for level in feats:
    np.testing.assert_allclose(added[level], both[level][..., :3] + both[level][..., 3:],
                               rtol=2 ** -23, atol=4 * 2 ** -24)


def test_stacked_level_responds_to_the_level_below_and_uni_does_not():
  feats = tiny_features(jax.random.key(0))
  changed = dict(feats, pool3=feats["pool3"] + 1.0)
  for variant, responds in [("stacked", True), ("uni", False)]:
    model = tiny_model(variant)
    variables = init(model, feats)
    before = encode(model, variables, feats)
    after = encode(model, variables, changed)
    for level in ("pool4", "pool5", "fc7"):
      assert (not np.allclose(before[level], after[level])) == responds, (variant, level)


def test_stacked_feeds_the_lower_state_to_the_gates_only():
  model = tiny_model("stacked", levels=("pool4", "pool5"))
  feats = tiny_features(jax.random.key(0), levels=("pool4", "pool5"))
  params = init(model, feats)["params"]["encoder"]
  assert "lower_gates" not in params["pool4"]
  # 2F outputs: the update and reset gates, not the candidate.
  assert params["pool5"]["lower_gates"]["kernel"].shape == (3, 3, 3, 2 * 3)


def _numpy_max_pool(x, windows_h, windows_w):
  """[B, T, H, W, C] -> max over the given (start, stop) row and column windows."""
  return np.stack([np.stack([x[:, :, r0:r1, c0:c1].max(axis=(2, 3))
                             for c0, c1 in windows_w], axis=2)
                   for r0, r1 in windows_h], axis=2)


@pytest.mark.parametrize("side", [7, 13, 25])
def test_max_pool_to_pools_as_vgg16_between_levels(side):
  # VGG-16's 2x2, stride-2 pooling takes an odd side 2k+1 to k (the last row and
  # column dropped): the next level's size at image sizes such as 208 (pool4 13 ->
  # pool5 6) or 400 (pool3 25 -> pool4 12). Padding such a map to ceil windows left
  # windows wholly in the -inf border.
  x = np.random.default_rng(side).normal(size=(2, 1, side, side, 3)).astype(np.float32)
  half = side // 2
  windows = [(2 * i, 2 * i + 2) for i in range(half)]
  y = max_pool_to(jnp.asarray(x), half, half)
  np.testing.assert_array_equal(y, _numpy_max_pool(x, windows, windows))
  # pool5 -> fc7: the whole map.
  np.testing.assert_array_equal(max_pool_to(jnp.asarray(x), 1, 1)[:, :, 0, 0],
                                x.max(axis=(2, 3)))


@pytest.mark.parametrize("side,size", [(7, 4), (6, 5), (10, 4)])
def test_max_pool_to_other_ratios_pools_adaptively(side, size):
  # Sizes no VGG-16 pooling produces: window i covers [floor(i n / size),
  # ceil((i + 1) n / size)), so every window holds real cells.
  x = np.random.default_rng(side).normal(size=(2, 1, side, side + 1, 2)).astype(np.float32)
  windows = lambda n: [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]
  y = max_pool_to(jnp.asarray(x), size, size)
  np.testing.assert_array_equal(y, _numpy_max_pool(x, windows(side), windows(side + 1)))
  with pytest.raises(ValueError, match="cannot max-pool"):
    max_pool_to(jnp.asarray(x), side + 1, side)


def test_stacked_is_finite_at_odd_level_sides():
  # image_size 208: pool4 is 13x13 and pool5 6x6.
  model = tiny_model("stacked", levels=("pool4", "pool5"))
  feats = tiny_features(jax.random.key(0), image_size=208, levels=("pool4", "pool5"))
  assert feats["pool4"].shape[2:4] == (13, 13) and feats["pool5"].shape[2:4] == (6, 6)
  variables = init(model, feats)
  states = encode(model, variables, feats)
  for level, state in states.items():
    assert np.isfinite(np.asarray(state)).all(), level


def test_prediction_averages_level_probabilities():
  model = tiny_model("uni")
  feats = tiny_features(jax.random.key(0))
  variables = init(model, feats)
  out = apply(model, variables, feats)
  probs = np.mean([jax.nn.softmax(l) for l in out["level_logits"].values()], axis=0)
  np.testing.assert_allclose(jax.nn.softmax(out["logits"]), probs, rtol=1e-5, atol=1e-7)
  assert out["logits"].dtype == jnp.float32


def test_dropout_only_in_training():
  model = tiny_model("uni", dropout_rate=0.5)
  feats = tiny_features(jax.random.key(0))
  variables = init(model, feats)
  eval_a = apply(model, variables, feats)["logits"]
  np.testing.assert_array_equal(eval_a, apply(model, variables, feats)["logits"])
  train = lambda k: apply(model, variables, feats, True, k)["logits"]
  assert not np.allclose(train(0), train(1))
  assert not np.allclose(train(0), eval_a)


def _paper_config(name):
  return importlib.import_module(f"configs.{name}").get_config()


def _paper_features(cfg, batch=2, time=10):
  return {level: jax.ShapeDtypeStruct((batch, time) + levels_lib.feature_shape(level, 224),
                                      jnp.float32)
          for level in cfg.model.levels}


def expected_param_count(cfg):
  """The closed formula of the paper's cell: per level 9*C*3F + 3F + 9*F*2F + 9*F*F (3x3
  kernels; 1x1 on fc7), plus each level's classifier."""
  model = cfg.model
  k = model.num_classes
  total = 0
  lower_hidden = None
  for index, level in enumerate(model.levels):
    c = levels_lib.feature_shape(level)[-1]
    if model.name == "vgg_frames":
      total += c * k + k
      continue
    f = model.hidden[index]
    taps = 1 if level == "fc7" or model.name == "vgg_rnn" else model.kernel_size ** 2
    recurrent = taps * c * 3 * f + 3 * f + taps * f * 2 * f + taps * f * f
    width = f
    if model.variant == "bi" and model.name == "grurcn":
      recurrent *= 2
      width = 2 * f if model.bi_merge == "concat" else f
    if model.variant == "stacked" and model.name == "grurcn" and lower_hidden:
      recurrent += taps * lower_hidden * 2 * f          # W_zl and W_rl, no bias
    lower_hidden = f
    total += recurrent + width * k + k
  return total


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configurations_trace_at_224_and_match_the_param_formula(name):
  cfg = _paper_config(name)
  model = build_model(cfg.model)
  feats = _paper_features(cfg)
  variables = jax.eval_shape(lambda f: model.init(jax.random.key(0), f), feats)
  count = sum(np.prod(p.shape) for p in jax.tree.leaves(variables))
  assert count == expected_param_count(cfg)
  out = jax.eval_shape(lambda v, f: model.apply(v, f), variables, feats)
  assert out["logits"].shape == (2, 101)
  assert set(out["level_logits"]) == set(cfg.model.levels)


def test_paper_grurcn_parameter_count_by_hand():
  # pool2..pool5 with 64/128/256/256 hidden, 3x3, 101 classes; numbers written out.
  per_level = [9 * 128 * 192 + 192 + 9 * 64 * 128 + 9 * 64 * 64 + 64 * 101 + 101,
               9 * 256 * 384 + 384 + 9 * 128 * 256 + 9 * 128 * 128 + 128 * 101 + 101,
               9 * 512 * 768 + 768 + 9 * 256 * 512 + 9 * 256 * 256 + 256 * 101 + 101,
               9 * 512 * 768 + 768 + 9 * 256 * 512 + 9 * 256 * 256 + 256 * 101 + 101]
  assert expected_param_count(_paper_config("ucf101_grurcn")) == sum(per_level) == 12349332


def _train_step_program_size(time, recurrence):
  model = GRURCN(num_classes=4, levels=("pool4", "pool5"), hidden=(4, 4),
                 recurrence=recurrence, dropout_rate=0.5)
  feats = {"pool4": jax.ShapeDtypeStruct((2, time, 4, 4, 3), jnp.float32),
           "pool5": jax.ShapeDtypeStruct((2, time, 2, 2, 3), jnp.float32)}
  labels = jax.ShapeDtypeStruct((2,), jnp.int32)
  params = jax.eval_shape(lambda f: model.init(jax.random.key(0), f), feats)["params"]
  tx = optax.adam(1e-3)
  opt_state = jax.eval_shape(tx.init, params)

  def train_step(params, opt_state, feats, labels, rng):
    def loss_fn(p):
      out = model.apply({"params": p}, feats, train=True, rngs={"dropout": rng})
      return jnp.mean(classification_loss(out, labels))
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  lowered = jax.jit(train_step).lower(params, opt_state, feats, labels,
                                      jax.random.key(0))
  return len(lowered.as_text())


@pytest.mark.parametrize("recurrence", ["fused", "scan"])
def test_program_size_does_not_grow_with_clip_length(recurrence):
  short, long = (_train_step_program_size(t, recurrence) for t in (4, 64))
  assert abs(long - short) <= 0.1 * short, (short, long)


def test_bfloat16_model_keeps_float32_params_and_outputs():
  feats = tiny_features(jax.random.key(0))
  for variant in ("uni", "bi", "stacked"):
    model, reference = tiny_model(variant, dtype=jnp.bfloat16), tiny_model(variant)
    # Dtypes from the traced programs alone (nothing compiled for them).
    shapes = jax.eval_shape(lambda f: model.init(jax.random.key(1), f), feats)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    # The same parameters as the float32 model's (compiled once for the tests).
    variables = init(reference, feats)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == jax.tree.map(
        lambda a: (a.shape, a.dtype), shapes)
    states = jax.eval_shape(lambda v, f: encode(model, v, f), variables, feats)
    assert all(s.dtype == jnp.bfloat16 for s in states.values())
    out = apply(model, variables, feats)
    assert out["logits"].dtype == jnp.float32
    # Each state within T * 6 * 2^-8 of float32's (test_convgru's bound: bfloat16
    # rounds to 2^-8; T=5 steps), the pooled states too; a class's logit sums |W|
    # times that, plus the dense layer's own roundings (2^-8 of the products and
    # of the bias). The levels' log mean probability moves at most twice its
    # inputs' largest error.
    params = variables["params"]
    level_error = max(
        float(np.max((5 * 6 + 1) * 2.0 ** -8 * np.abs(head["kernel"]).sum(0)
                     + 2.0 ** -8 * np.abs(head["bias"])))
        for head in (params[f"{level}_classifier"]["linear"] for level in feats))
    np.testing.assert_allclose(out["logits"], apply(reference, variables, feats)["logits"],
                               rtol=0, atol=2 * level_error)


def test_remat_levels_recompute_only_those_levels(monkeypatch):
  """remat=('pool3',): pool3's layer recomputes and pool4's keeps its gates, and
  the gradients equal those without remat (the same sums in another order)."""
  from grurcn_jax.models import recurrence
  from tests.models.test_convgru import assert_float32_close, float64_run
  calls = []
  sequence = recurrence.convgru_sequence

  def spy(inputs, *args, remat=False, **kwargs):
    calls.append((inputs.shape[2], remat))   # the level's map side, and remat
    return sequence(inputs, *args, remat=remat, **kwargs)

  monkeypatch.setattr(recurrence, "convgru_sequence", spy)
  levels = ("pool3", "pool4")
  feats = tiny_features(jax.random.key(0), time=3, levels=levels)
  labels = jnp.array([1, 3])
  grad = lambda model: jax.jit(jax.grad(lambda v, feats: classification_loss(
      model.apply(v, feats), labels, "level_mean").mean()))
  plain, chosen = (tiny_model("uni", levels=levels, remat=remat)
                   for remat in (False, ("pool3",)))
  variables = init(plain, feats)
  calls.clear()
  got = grad(chosen)(variables, feats)
  assert sorted(set(calls)) == [(2, False), (4, True)]   # pool4 is 2x2, pool3 4x4
  assert_float32_close(got, grad(plain)(variables, feats),
                       float64_run(grad(plain), variables, feats))


@pytest.mark.parametrize("make,message", [
    (lambda: GRURCN(3, ("pool5",), (4,), bi_merge="mean", variant="bi"),
     "unknown bi_merge 'mean'; valid: concat, sum"),
    (lambda: GRURCN(3, ("pool5",), (4,), variant="deep"),
     "unknown variant 'deep'; valid: uni, bi, stacked"),
    (lambda: GRURCN(3, ("pool5", "fc7"), (4,)),
     "hidden=(4,) needs one size per level of ('pool5', 'fc7')"),
    (lambda: GRURCN(3, (), ()), "the model has no levels"),
    (lambda: GRURCN(3, ("pool4",), (4,)),
     "the model expects level(s) pool4 in the features; got ['fc7', 'pool5']"),
])
def test_a_module_used_alone_checks_its_own_settings(make, message):
  # build_model checks a config; a module built by hand checks itself: a sum where
  # 'mean' was meant, or levels zip() would have dropped, are errors, not results.
  with pytest.raises(ValueError) as error:
    make().init(jax.random.key(0), ALONE_FEATURES)
  assert str(error.value) == message


ALONE_FEATURES = {"pool5": jnp.zeros((1, 2, 7, 7, 5)), "fc7": jnp.zeros((1, 2, 6))}


def test_the_baselines_used_alone_check_their_levels():
  from grurcn_jax.models import VGGFrames, VGGRNN
  features = ALONE_FEATURES
  with pytest.raises(ValueError, match=r"the model expects level\(s\) pool2"):
    VGGFrames(3, ("pool2",)).init(jax.random.key(0), features)
  with pytest.raises(ValueError, match=r"hidden=\(4, 4\) needs one size per level"):
    VGGRNN(3, ("fc7",), (4, 4)).init(jax.random.key(0), features)
