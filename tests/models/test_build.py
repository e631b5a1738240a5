"""build_model: names and values checked up front; losses against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from grurcn_jax.errors import ConfigError
from grurcn_jax.models import (GRURCN, VGGFrames, VGGRNN, build_model,
                               classification_loss)


def model_config(**overrides):
  cfg = default.get_config().model
  cfg.update(overrides)
  return cfg


@pytest.mark.parametrize("overrides,message", [
    (dict(name="c3d"), "model.name='c3d' is not valid; choose one of: grurcn, vgg_frames, vgg_rnn"),
    (dict(variant="deep"), "choose one of: uni, bi, stacked"),
    (dict(levels=("pool2", "conv5")), "model.levels='conv5' is not valid; choose one of: pool2, pool3, pool4, pool5, fc7"),
    (dict(levels=()), "model.levels is empty"),
    (dict(levels=("pool4", "pool4"), hidden=(8, 8)), "names a level twice"),
    (dict(hidden=(64, 128)), "needs one size per level"),
    (dict(hidden=(64, 128, 0, 256)), "positive integers"),
    (dict(dtype="float16"), "choose one of: float32, bfloat16"),
    (dict(bi_merge="mean"), "choose one of: concat, sum"),
    (dict(recurrence="unrolled"), "choose one of: fused, scan"),
    (dict(kernel_gradient="cudnn"), "model.kernel_gradient='cudnn' is not valid; "
                                    "choose one of: auto, xla, taps"),
    (dict(loss="focal"), "choose one of: level_mean, ensemble"),
    (dict(unroll=-1), "model.unroll=-1 must be 0 (the backend's choice) or an unroll "
                      "factor >= 1"),
    (dict(dropout_rate=1.0), "must be in [0, 1)"),
    (dict(kernel_size=0), "positive integer"),
    (dict(num_classes=1), "must be an integer > 1"),
    (dict(variant="stacked", levels=("pool5", "pool4"), hidden=(8, 8)), "fine to coarse"),
    (dict(variant="stacked", levels=("pool4",), hidden=(8,)),
     "model.levels needs two or more levels"),
    (dict(name="vgg_rnn", variant="bi", levels=("fc7",), hidden=(8,)),
     "model.variant='bi' is a GRU-RCN variant; model.name='vgg_rnn' has none"),
    (dict(remat_levels=("pool2",)), "model.remat_levels=('pool2',) chooses the levels "
                                    "that recompute; it needs model.remat=True"),
    (dict(remat=True, remat_levels=("pool2", "fc7")),
     "model.remat_levels names 'fc7', which is not in model.levels"),
    # --config.model.levels=(pool2,pool5), unquoted, as the command line gives it.
    (dict(levels=("(pool2,pool5)",), hidden=(8,)),
     "model.levels=('(pool2,pool5)',) reads as one name: on the command line, quote "
     "each name, --config.model.levels=\"('pool2','pool5')\""),
])
def test_bad_config_fails_at_once_listing_valid_values(overrides, message):
  with pytest.raises(ConfigError) as error:
    build_model(model_config(**overrides))
  assert message in str(error.value)


@pytest.mark.parametrize("value,unroll", [(0, "auto"), (10, 10)])
def test_unroll_zero_is_the_backends_choice(value, unroll):
  assert build_model(model_config(unroll=value)).unroll == unroll


def test_remat_levels_must_be_a_tuple_of_names():
  cfg = dict(model_config(remat=True))   # a plain dict: ConfigDict refuses the type
  cfg["remat_levels"] = "pool2"
  with pytest.raises(ConfigError, match=r"remat_levels='pool2' must be a tuple of level names"):
    build_model(cfg)


@pytest.mark.parametrize("field,value,message", [
    ("levels", "pool5", "model.levels='pool5' is a name alone: give a tuple, one per "
                        "level, e.g. ('pool5',)"),
    ("hidden", 64, "model.hidden=64 is a size alone: give a tuple, one per level, "
                   "e.g. (64,)")])
def test_a_bare_level_or_size_is_an_error_not_its_letters(field, value, message):
  cfg = dict(model_config(levels=("pool5",), hidden=(8,)))   # a plain dict, as above
  cfg[field] = value
  with pytest.raises(ConfigError) as error:
    build_model(cfg)
  assert str(error.value) == message


@pytest.mark.parametrize("remat,levels,expected", [
    (False, (), False), (True, (), True), (True, ("pool2", "pool3"), ("pool2", "pool3"))])
def test_remat_levels_choose_the_levels_that_recompute(remat, levels, expected):
  assert build_model(model_config(remat=remat, remat_levels=levels)).remat == expected


def test_unknown_field_is_named():
  cfg = model_config()
  cfg.hiden = (1, 2)
  with pytest.raises(ConfigError, match=r"unknown config field\(s\) model\.hiden; valid: .*"
                     r"model\.hidden"):
    build_model(cfg)


def test_backbone_trainable_must_be_a_bool():
  cfg = dict(model_config())   # a plain dict: ConfigDict itself refuses the type
  cfg["backbone_trainable"] = "yes"
  with pytest.raises(ConfigError, match="backbone_trainable='yes' must be True or False"):
    build_model(cfg)


def test_a_missing_field_is_named():
  cfg = dict(model_config())
  del cfg["kernel_gradient"]
  with pytest.raises(ConfigError, match=r"lacks field\(s\) model\.kernel_gradient"):
    build_model(cfg)


def test_build_model_maps_names_to_modules():
  assert isinstance(build_model(model_config()), GRURCN)
  assert isinstance(build_model(model_config(name="vgg_frames", levels=("fc7",))), VGGFrames)
  rnn = build_model(model_config(name="vgg_rnn", levels=("pool5",), hidden=(16,)))
  assert isinstance(rnn, VGGRNN)
  bf16 = build_model(model_config(dtype="bfloat16", variant="bi", recurrence="scan",
                                  remat=True))
  assert bf16.dtype == jnp.bfloat16 and bf16.variant == "bi" and bf16.remat


def test_losses_against_numpy():
  rng = np.random.default_rng(0)
  level_logits = {"pool4": rng.standard_normal((3, 4)), "pool5": rng.standard_normal((3, 4))}
  labels = np.array([0, 3, 1])

  def np_xent(logits):
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -log_probs[np.arange(3), labels]

  mean_probs = np.mean([np.exp(l) / np.exp(l).sum(-1, keepdims=True)
                        for l in level_logits.values()], axis=0)
  from grurcn_jax.models.heads import model_output
  outputs = model_output({k: jnp.asarray(v, jnp.float32) for k, v in level_logits.items()})
  np.testing.assert_allclose(classification_loss(outputs, labels, "level_mean"),
                             np.mean([np_xent(l) for l in level_logits.values()], axis=0),
                             rtol=1e-5)
  np.testing.assert_allclose(classification_loss(outputs, labels, "ensemble"),
                             -np.log(mean_probs[np.arange(3), labels]), rtol=1e-5)


def test_frame_average_ignores_order_and_rnn_does_not():
  x = {"fc7": jax.random.normal(jax.random.key(0), (2, 6, 8)),
       "pool5": jax.random.normal(jax.random.key(1), (2, 6, 2, 2, 8))}
  shuffled = {k: v[:, ::-1] for k, v in x.items()}
  for model, order_matters in [
      (VGGFrames(num_classes=3, levels=("fc7", "pool5")), False),
      (VGGRNN(num_classes=3, levels=("fc7", "pool5"), hidden=(4, 4)), True)]:
    variables = model.init(jax.random.key(2), x)
    a, b = model.apply(variables, x)["logits"], model.apply(variables, shuffled)["logits"]
    assert (not np.allclose(a, b, atol=1e-6)) == order_matters


def test_frame_average_is_mean_of_frame_probabilities():
  x = {"fc7": jax.random.normal(jax.random.key(0), (2, 5, 8))}
  model = VGGFrames(num_classes=3)
  variables = model.init(jax.random.key(1), x)
  p = variables["params"]["fc7_classifier"]["linear"]
  frame_probs = jax.nn.softmax(np.asarray(x["fc7"]) @ np.asarray(p["kernel"]) + p["bias"])
  np.testing.assert_allclose(jax.nn.softmax(model.apply(variables, x)["logits"]),
                             frame_probs.mean(axis=1), rtol=1e-5)
