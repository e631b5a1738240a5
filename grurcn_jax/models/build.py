"""build_model(config.model): the one place a model config becomes a Flax module.

Every name and value is checked before anything is built, so a typo fails at start
with a message listing what is valid instead of a traceback deep inside a trace.
"""

from typing import Any, Mapping

import jax.numpy as jnp
from flax import linen as nn

from grurcn_jax import config_validation, levels as levels_lib
from grurcn_jax.errors import ConfigError
from grurcn_jax.models import backend_tuning, baselines, convgru, grurcn, losses

MODEL_NAMES = ("grurcn", "vgg_frames", "vgg_rnn")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _one_of(field: str, value: Any, valid) -> None:
  if value not in valid:
    raise ConfigError(f"model.{field}={value!r} is not valid; choose one of: "
                      f"{', '.join(map(str, valid))}")


def validate_model_config(cfg: Mapping[str, Any]) -> None:
  """Raises ConfigError naming the first bad field and the valid values."""
  config_validation.check_fields(cfg, "model")  # the fields of configs/default.py
  _one_of("name", cfg["name"], MODEL_NAMES)
  _one_of("variant", cfg["variant"], grurcn.VARIANTS)
  _one_of("bi_merge", cfg["bi_merge"], grurcn.BI_MERGES)
  _one_of("recurrence", cfg["recurrence"], convgru.RECURRENCES)
  _one_of("kernel_gradient", cfg["kernel_gradient"], backend_tuning.KERNEL_GRADIENTS)
  _one_of("dtype", cfg["dtype"], tuple(DTYPES))
  _one_of("loss", cfg["loss"], losses.LOSSES)

  for name, one in (("levels", "a name"), ("hidden", "a size")):
    if not isinstance(cfg[name], (tuple, list)):
      # tuple('pool5') would be five one-letter levels.
      raise ConfigError(f"model.{name}={cfg[name]!r} is {one} alone: give a tuple, "
                        f"one per level, e.g. ({cfg[name]!r},)")
  levels = tuple(cfg["levels"])
  if not levels:
    raise ConfigError("model.levels is empty; choose from: "
                      f"{', '.join(levels_lib.LEVELS)}")
  if any(isinstance(level, str) and set(level) & set("(),") for level in levels):
    # What the command line makes of an unquoted tuple: one name, commas and all.
    raise ConfigError(
        f"model.levels={levels} reads as one name: on the command line, quote each "
        f"name, --config.model.levels=\"('pool2','pool5')\" (or one level alone: "
        f"--config.model.levels=pool5)")
  for level in levels:
    _one_of("levels", level, levels_lib.LEVELS)
  if len(set(levels)) != len(levels):
    raise ConfigError(f"model.levels={levels} names a level twice")
  if cfg["name"] != "grurcn" and cfg["variant"] != "uni":
    raise ConfigError(f"model.variant={cfg['variant']!r} is a GRU-RCN variant; "
                      f"model.name={cfg['name']!r} has none (leave model.variant='uni')")
  if cfg["name"] == "grurcn" and cfg["variant"] == "stacked":
    if len(levels) < 2:
      raise ConfigError(f"the stacked variant feeds each level into the next: "
                        f"model.levels needs two or more levels; got {levels}")
    order = [levels_lib.LEVELS.index(level) for level in levels]
    if order != sorted(order):
      raise ConfigError(f"the stacked variant feeds each level into the next, so "
                        f"model.levels must run fine to coarse "
                        f"({', '.join(levels_lib.LEVELS)}); got {levels}")
  if cfg["name"] != "vgg_frames":
    hidden = tuple(cfg["hidden"])
    if len(hidden) != len(levels):
      raise ConfigError(f"model.hidden={hidden} needs one size per level in "
                        f"model.levels={levels}")
    if not all(isinstance(h, int) and h > 0 for h in hidden):
      raise ConfigError(f"model.hidden={hidden} must be positive integers")
  if not (isinstance(cfg["kernel_size"], int) and cfg["kernel_size"] > 0):
    raise ConfigError(f"model.kernel_size={cfg['kernel_size']!r} must be a positive integer")
  if not 0.0 <= cfg["dropout_rate"] < 1.0:
    raise ConfigError(f"model.dropout_rate={cfg['dropout_rate']} must be in [0, 1)")
  if not (isinstance(cfg["num_classes"], int) and cfg["num_classes"] > 1):
    raise ConfigError(f"model.num_classes={cfg['num_classes']!r} must be an integer > 1")
  if not isinstance(cfg["backbone_trainable"], bool):
    raise ConfigError(f"model.backbone_trainable={cfg['backbone_trainable']!r} must be "
                      f"True or False")
  if not 0.0 <= cfg["backbone_dropout"] < 1.0:
    raise ConfigError(f"model.backbone_dropout={cfg['backbone_dropout']} must be in "
                      f"[0, 1)")
  remat_setting(cfg)
  unroll_setting(cfg["unroll"])


def remat_setting(cfg: Mapping[str, Any]):
  """model.remat and model.remat_levels as the encoder takes them: a bool (every
  level or none), or the tuple of levels that recompute."""
  remat, chosen = cfg["remat"], cfg["remat_levels"]
  if not isinstance(remat, bool):
    raise ConfigError(f"model.remat={remat!r} must be True or False")
  if isinstance(chosen, str):
    raise ConfigError(f"model.remat_levels={chosen!r} must be a tuple of level "
                      f"names, e.g. ('pool2', 'pool3')")
  chosen = tuple(chosen)
  if not chosen:
    return remat
  if not remat:
    raise ConfigError(f"model.remat_levels={chosen} chooses the levels that "
                      f"recompute; it needs model.remat=True")
  levels = tuple(cfg["levels"])
  for level in chosen:
    if level not in levels:
      raise ConfigError(f"model.remat_levels names {level!r}, which is not in "
                        f"model.levels={levels}")
  return chosen


def unroll_setting(value):
  """model.unroll as the layers take it: 0 is 'auto' (the backend's choice,
  `backend_tuning.time_loop`), a positive integer an unroll factor."""
  if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
    raise ConfigError(f"model.unroll={value!r} must be 0 (the backend's choice) or "
                      f"an unroll factor >= 1")
  return value or "auto"


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
  """The Flax module for `config.model` (see configs/default.py for the fields)."""
  validate_model_config(cfg)
  dtype = DTYPES[cfg["dtype"]]
  common = dict(num_classes=cfg["num_classes"], levels=tuple(cfg["levels"]),
                dropout_rate=cfg["dropout_rate"], dtype=dtype)
  recurrent = dict(hidden=tuple(cfg["hidden"]), recurrence=cfg["recurrence"],
                   remat=remat_setting(cfg), unroll=unroll_setting(cfg["unroll"]),
                   kernel_gradient=cfg["kernel_gradient"])
  if cfg["name"] == "vgg_frames":
    return baselines.VGGFrames(**common)
  if cfg["name"] == "vgg_rnn":
    return baselines.VGGRNN(**common, **recurrent)
  return grurcn.GRURCN(**common, **recurrent, variant=cfg["variant"],
                       kernel_size=cfg["kernel_size"], bi_merge=cfg["bi_merge"])


def build_captioning_model(config: Mapping[str, Any], vocab_size: int) -> nn.Module:
  """The captioning model of a config (`config.caption`, and `config.model` for a
  GRU-RCN encoder's levels, sizes and variant) for a vocabulary of `vocab_size`."""
  from grurcn_jax.models import caption_decoder, captioning
  cfg, caption = config["model"], config["caption"]
  validate_model_config(cfg)
  dtype = DTYPES[cfg["dtype"]]
  levels = tuple(cfg["levels"])
  if caption["encoder"] == "grurcn":
    encoder = captioning.GRURCNSegments(grurcn.GRURCNEncoder(
        levels, tuple(cfg["hidden"]), variant=cfg["variant"],
        kernel_size=cfg["kernel_size"], bi_merge=cfg["bi_merge"],
        recurrence=cfg["recurrence"], remat=remat_setting(cfg),
        unroll=unroll_setting(cfg["unroll"]), kernel_gradient=cfg["kernel_gradient"],
        dtype=dtype), spatial=caption["spatial_attention"])
  else:
    encoder = captioning.FrameSegments(
        levels, average_frames=caption["encoder"] == "frame_average",
        spatial=caption["spatial_attention"])
  decoder = caption_decoder.AttentionLSTMDecoder(
      vocab_size, caption["embed_dim"], caption["hidden"], caption["attention_dim"],
      caption["dropout_rate"], dtype)
  return captioning.CaptioningModel(encoder, decoder, caption["segment_positions"])
