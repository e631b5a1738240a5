"""Checks a whole experiment config before any work starts.

Every name must be known and every value valid; the error lists what is allowed.
The model part is checked by models.build.validate_model_config.
"""

from typing import Any, Dict, Mapping

from grurcn_jax.errors import ConfigError
from grurcn_jax.models.build import validate_model_config

TOP_LEVEL = ("seed", "batch_size", "eval_batch_size", "num_train_steps",
             "log_every_steps", "checkpoint_every_steps", "eval_every_steps",
             "keep_checkpoints", "optimizer", "learning_rate", "momentum",
             "weight_decay", "schedule", "warmup_steps", "step_boundaries", "step_decay",
             "grad_clip_norm", "model", "data")
DATA = ("dir", "train_split", "eval_split", "clip_length", "frame_stride", "eval_clips",
        "shuffle_buffer", "skip_bad_records", "num_streams", "device_prefetch", "demo")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")


def flatten(config: Mapping, prefix: str = "") -> Dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _known(names, valid, where):
  unknown = sorted(set(names) - set(valid))
  if unknown:
    raise ConfigError(f"unknown config field(s) {', '.join(where + n for n in unknown)}; "
                      f"valid: {', '.join(where + v for v in valid)}")


def _positive_int(config, name):
  value = config[name]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f"{name}={value!r} must be a positive integer")


def validate_config(config: Mapping) -> None:
  _known(config.keys(), TOP_LEVEL, "")
  _known(config["data"].keys(), DATA, "data.")
  validate_model_config(config["model"])
  for name in ("batch_size", "eval_batch_size", "num_train_steps", "log_every_steps",
               "checkpoint_every_steps", "eval_every_steps", "keep_checkpoints"):
    _positive_int(config, name)
  for name in ("clip_length", "frame_stride", "eval_clips", "shuffle_buffer"):
    _positive_int(config["data"], name)
  prefetch = config["data"]["device_prefetch"]
  if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
    raise ConfigError(f"data.device_prefetch={prefetch!r} must be an integer >= 0")
  streams = config["data"]["num_streams"]
  if not isinstance(streams, int) or streams < 0:
    raise ConfigError(f"data.num_streams={streams!r} must be 0 (one per host) or a "
                      f"positive multiple of the host count")
  if config["optimizer"] not in OPTIMIZERS:
    raise ConfigError(f"optimizer={config['optimizer']!r} is not valid; choose one of: "
                      f"{', '.join(OPTIMIZERS)}")
  if config["schedule"] not in SCHEDULES:
    raise ConfigError(f"schedule={config['schedule']!r} is not valid; choose one of: "
                      f"{', '.join(SCHEDULES)}")
  if not config["learning_rate"] > 0:
    raise ConfigError(f"learning_rate={config['learning_rate']} must be positive")
  if config["warmup_steps"] < 0 or config["weight_decay"] < 0 or config["grad_clip_norm"] < 0:
    raise ConfigError("warmup_steps, weight_decay and grad_clip_norm must be >= 0")
  if not config["data"]["dir"]:
    raise ConfigError("data.dir is empty: point it at a feature directory "
                      "(python -m grurcn_jax.data.extract writes one)")
