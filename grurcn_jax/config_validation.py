"""Checks a whole experiment config before any work starts.

The schema is `configs/default.py` itself: every experiment config starts from it,
so a field it does not have is a typo and a field it has must be present. Values are
checked here (training and data) and by `models.build.build_model` (the model).
Every error lists what is allowed.
"""

import functools
import math
from typing import Any, Dict, Mapping

import ml_collections

from grurcn_jax.data.loaders import LOADERS
from grurcn_jax.errors import ConfigError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")
INPUTS = ("features", "frames")
TASKS = ("classification", "captioning")
CAPTION_ENCODERS = ("grurcn", "first_frame", "frame_average")


@functools.lru_cache(maxsize=1)
def _schema() -> Dict[str, Any]:
  from configs import default
  return default.get_config().to_dict()


def schema(subtree: str = "") -> Dict[str, Any]:
  """The default config (or one of its subtrees, e.g. 'model') as a dict."""
  tree = _schema()
  for part in filter(None, subtree.split(".")):
    tree = tree[part]
  return tree


def _is_tree(value) -> bool:
  # A ConfigDict is not a collections.abc.Mapping.
  return isinstance(value, (Mapping, ml_collections.ConfigDict))


def flatten(config: Mapping, prefix: str = "") -> Dict[str, Any]:
  """{'model': {'levels': ...}} -> {'model.levels': ...}."""
  out = {}
  for key, value in config.items():
    if _is_tree(value):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check_fields(config: Mapping, subtree: str = "") -> None:
  """Raises ConfigError if `config` (the whole config, or the subtree at `subtree`)
  lacks a field of the default config or has one it does not. A field whose
  default is None (data.demo) takes any value, a dict of settings included."""
  def walk(given: Mapping, expected: Mapping, where: str):
    unknown = sorted(set(given) - set(expected))
    if unknown:
      raise ConfigError(f"unknown config field(s) {', '.join(where + n for n in unknown)}; "
                        f"valid: {', '.join(where + n for n in expected)}")
    missing = sorted(set(expected) - set(given))
    if missing:
      raise ConfigError(f"the config lacks field(s) {', '.join(where + n for n in missing)} "
                        f"(configs/default.py has them: start from its get_config())")
    for name, default in expected.items():
      if _is_tree(default) and _is_tree(given[name]):
        walk(given[name], default, f"{where}{name}.")
  walk(config, schema(subtree), f"{subtree}." if subtree else "")


def _finite_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _positive_int(config, name, where=""):
  value = config[name]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f"{where}{name}={value!r} must be a positive integer")


def validate_config(config: Mapping) -> None:
  """Field names against the schema; training and data values. (The model's
  values are checked when it is built.)"""
  check_fields(config)
  for name in ("batch_size", "eval_batch_size", "num_train_steps", "log_every_steps",
               "checkpoint_every_steps", "eval_every_steps", "keep_checkpoints"):
    _positive_int(config, name)
  data = config["data"]
  for name in ("clip_length", "frame_stride", "eval_clips"):
    _positive_int(data, name, "data.")
  if data["input"] not in INPUTS:
    raise ConfigError(f"data.input={data['input']!r} is not valid; choose one of: "
                      f"{', '.join(INPUTS)}")
  if data["loader"] not in LOADERS:
    raise ConfigError(f"data.loader={data['loader']!r} is not valid; choose one of: "
                      f"{', '.join(LOADERS)}")
  prefetch = data["device_prefetch"]
  if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
    raise ConfigError(f"data.device_prefetch={prefetch!r} must be an integer >= 0")
  streams = data["num_streams"]
  if not isinstance(streams, int) or isinstance(streams, bool) or streams < 0:
    raise ConfigError(f"data.num_streams={streams!r} must be 0 (one per host) or a "
                      f"positive multiple of the host count")
  if config["optimizer"] not in OPTIMIZERS:
    raise ConfigError(f"optimizer={config['optimizer']!r} is not valid; choose one of: "
                      f"{', '.join(OPTIMIZERS)}")
  if config["schedule"] not in SCHEDULES:
    raise ConfigError(f"schedule={config['schedule']!r} is not valid; choose one of: "
                      f"{', '.join(SCHEDULES)}")
  if not (_finite_number(config["learning_rate"]) and config["learning_rate"] > 0):
    raise ConfigError(f"learning_rate={config['learning_rate']} must be positive")
  for name in ("warmup_steps", "weight_decay", "grad_clip_norm"):
    if not (_finite_number(config[name]) and config[name] >= 0):   # nan included
      raise ConfigError(f"{name}={config[name]!r} must be a number >= 0")
  if not (_finite_number(config["momentum"]) and 0 <= config["momentum"] < 1):
    raise ConfigError(f"momentum={config['momentum']!r} must be in [0, 1)")
  boundaries = tuple(config["step_boundaries"])
  if (not all(_finite_number(f) and 0 <= f <= 1 for f in boundaries)
      or list(boundaries) != sorted(boundaries)
      or not (_finite_number(config["step_decay"]) and config["step_decay"] > 0)):
    raise ConfigError(f"step_boundaries={boundaries} must be increasing fractions of "
                      f"num_train_steps in [0, 1], and step_decay="
                      f"{config['step_decay']} positive")
  model = config["model"]
  if data["input"] != "frames" and (model["backbone_trainable"] or model["backbone_dropout"]):
    raise ConfigError("model.backbone_trainable and model.backbone_dropout act on the "
                      "VGG-16 inside the step: they need data.input=frames")
  if config["task"] not in TASKS:
    raise ConfigError(f"task={config['task']!r} is not valid; choose one of: "
                      f"{', '.join(TASKS)}")
  if config["task"] == "captioning":
    _validate_caption(config)


def _validate_caption(config: Mapping) -> None:
  caption = config["caption"]
  if caption["encoder"] not in CAPTION_ENCODERS:
    raise ConfigError(f"caption.encoder={caption['encoder']!r} is not valid; choose "
                      f"one of: {', '.join(CAPTION_ENCODERS)}")
  for name in ("segments", "max_length", "embed_dim", "hidden", "attention_dim",
               "beam_size"):
    _positive_int(caption, name, "caption.")
  if caption["max_length"] < 2:
    raise ConfigError("caption.max_length must leave room for a word and <eos>")
  if not 0.0 <= caption["dropout_rate"] < 1.0:
    raise ConfigError(f"caption.dropout_rate={caption['dropout_rate']} must be in [0, 1)")
  if not (_finite_number(caption["attention_weight"]) and caption["attention_weight"] >= 0):
    raise ConfigError("caption.attention_weight must be >= 0")
  if caption["eval_samples"] < 0:
    raise ConfigError("caption.eval_samples must be >= 0")
  if caption["freeze_encoder"] and not caption["encoder_checkpoint"]:
    raise ConfigError("caption.freeze_encoder=True needs caption.encoder_checkpoint "
                      "(a frozen random encoder learns nothing)")
  if config["data"]["input"] != "features":
    raise ConfigError("captioning reads stored features (data.input=features)")
