"""The input loader a config names (`data.loader`); all give the same batches.

- `threads`: Python threads (`threaded`), no TensorFlow needed: local directories
  of raw rows (float16 or int8 levels, uint8 frames). 1.4-1.7x tf.data's clips/s
  on a 2-core AMD EPYC, 2-3x for int8 levels (README, "Features").
- `tf`: the tf.data pipeline (`pipeline`): also reads gs:// and other remote file
  systems, and JPEG frames.
- `auto` (the default): `threads` where it can read the directory, else `tf`.
"""

from types import ModuleType
from typing import Mapping, Optional, Sequence

LOADERS = ("auto", "threads", "tf")


def resolve(data: Mapping, levels: Optional[Sequence[str]] = None) -> str:
  """The loader that reads `levels` (default: all) of `data.dir`: `threads` or `tf`."""
  loader = data.get("loader", "auto")
  if loader != "auto":
    return loader
  from grurcn_jax import files
  from grurcn_jax.data import features
  if not files.is_local(data["dir"]):
    return "tf"
  infos = features.read_metadata(data["dir"])["levels"]
  read = levels or list(infos)
  return "tf" if any(features.is_encoded(infos.get(level, {})) for level in read) \
      else "threads"


def for_config(data: Mapping, levels: Optional[Sequence[str]] = None) -> ModuleType:
  """The module whose train_batches, eval_batches, caption_train_batches,
  caption_eval_batches and check_split read `levels` of `data` (the config's data
  subtree)."""
  if resolve(data, levels) == "threads":
    from grurcn_jax.data import threaded
    return threaded
  from grurcn_jax.data import pipeline
  return pipeline
