"""Every config file: valid, buildable, and documents the command that runs it."""

import glob
import re
import importlib
import os

import pytest

from grurcn_jax import config_validation
from grurcn_jax.models import build_model

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
               if not p.endswith("__init__.py"))


def test_every_experiment_is_here():
  assert {"default", "demo", "demo_captioning", "tpu", "ucf101_grurcn", "ucf101_bigrurcn",
          "ucf101_stacked", "ucf101_vgg_frames", "ucf101_vgg_rnn", "demo_flow",
          "ucf101_flow_grurcn", "ucf101_flow_vgg_frames", "msvd_bigrurcn_captioning"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_is_valid_and_documents_its_command(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  if not config.data.dir:  # paper configs point at features the user extracts
    config.data.dir = "/features"
  config_validation.validate_config(config)
  build_model(config.model)
  assert "python -m grurcn_jax.main --config=configs/" in module.__doc__ or \
      "launch/tpu.sh" in module.__doc__


# Stage 1 (VGG-16 fine-tuning) trains on single frames: not the paper's clips.
@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("ucf101_")
                                  and n != "ucf101_vgg16_finetune"])
def test_paper_configs_use_the_paper_settings(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.data.clip_length == 10 and config.batch_size == 64
  assert config.model.num_classes == 101 and config.model.dropout_rate == 0.7
  if config.model.name == "grurcn":
    assert tuple(config.model.levels) == ("pool2", "pool3", "pool4", "pool5")
    assert tuple(config.model.hidden) == (64, 128, 256, 256)
    assert config.model.kernel_size == 3


def test_the_default_config_is_the_schema(monkeypatch):
  """Validation reads the field names from configs/default.py, not from a copy: a
  field added there is accepted everywhere, one removed is rejected."""
  from configs import default
  from grurcn_jax.errors import ConfigError
  original = default.get_config

  def with_extra_fields():
    config = original()
    config.new_option = 1
    config.model.new_model_option = "x"
    return config
  monkeypatch.setattr(default, "get_config", with_extra_fields)
  config_validation._schema.cache_clear()
  try:
    config = with_extra_fields()
    config_validation.validate_config(config)
    build_model(config.model)
    del config.model["new_model_option"]
    with pytest.raises(ConfigError, match=r"lacks field\(s\) model\.new_model_option"):
      config_validation.validate_config(config)
  finally:
    config_validation._schema.cache_clear()


def _set(config, changes):
  """Fields given as caption__encoder=... (dots as double underscores)."""
  for key, value in changes.items():
    *path, last = key.split("__")
    target = config
    for part in path:
      target = target[part]
    target[last] = value


@pytest.mark.parametrize("changes,message", [
    (dict(task="detection"), "task='detection' is not valid; choose one of: "
                             "classification, captioning"),
    (dict(caption__encoder="c3d"), "caption.encoder='c3d' is not valid; choose one of: "
                                   "grurcn, first_frame, frame_average"),
    (dict(caption__segments=0), "caption.segments=0 must be a positive integer"),
    (dict(caption__max_length=1), "caption.max_length must leave room"),
    (dict(caption__freeze_encoder=True), "needs caption.encoder_checkpoint"),
    (dict(data__input="frames"), "captioning reads stored features"),
])
def test_captioning_settings_are_checked(changes, message):
  from configs import demo_captioning
  from grurcn_jax.errors import ConfigError
  config = demo_captioning.get_config()
  _set(config, changes)
  with pytest.raises(ConfigError, match=re.escape(message)):
    config_validation.validate_config(config)


@pytest.mark.parametrize("changes,message", [
    (dict(model__backbone_trainable=True), "they need data.input=frames"),
    (dict(model__backbone_dropout=0.5), "they need data.input=frames"),
    (dict(data__num_streams=True), "data.num_streams=True must be 0"),
    (dict(step_boundaries=(0.75, 0.5)), "must be increasing fractions"),
    (dict(step_boundaries=(0.5, 1.5)), "must be increasing fractions"),
    (dict(step_decay=0.0), "step_decay=0.0 positive"),
    # nan compares false with everything: it passed `< 0` checks, and training then
    # stopped on a non-finite loss that blamed the learning rate.
    (dict(weight_decay=float("nan")), "weight_decay=nan must be a number >= 0"),
    (dict(grad_clip_norm=-1.0), "grad_clip_norm=-1.0 must be a number >= 0"),
    (dict(learning_rate=float("inf")), "learning_rate=inf must be positive"),
    (dict(momentum=1.0), "momentum=1.0 must be in [0, 1)"),
    (dict(step_boundaries=(0.5, "abc")), "must be increasing fractions"),
])
def test_settings_that_would_be_ignored_or_meaningless_are_refused(changes, message):
  from configs import default
  from grurcn_jax.errors import ConfigError
  config = default.get_config()
  config.data.dir = "/features"
  _set(config, changes)
  with pytest.raises(ConfigError, match=re.escape(message)):
    config_validation.validate_config(config)


def test_msvd_training_evaluates_on_validation_not_test():
  # The paper stops early on validation; the step chosen on test clips would be
  # selected on them.
  from configs import msvd_bigrurcn_captioning
  from grurcn_jax.data import msvd
  split = msvd_bigrurcn_captioning.get_config().data.eval_split
  assert split == "val" and split in msvd.SPLIT_NAMES
  assert "--config.data.eval_split=test" in msvd_bigrurcn_captioning.__doc__
