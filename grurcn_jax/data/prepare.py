"""Data preparation: the demo dataset when a config asks for it, and the feature
spec a model is built for, checked against the model config before any work.

TensorFlow (the feature format) is imported only when a directory is read: a spec
at an image size serves the benchmark on machines without TensorFlow.
"""

import dataclasses
import os
import re
from typing import Mapping, Optional, Tuple

from grurcn_jax import levels as levels_lib
from grurcn_jax.errors import ConfigError, FeatureFormatError

FRAMES = levels_lib.FRAMES


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """What a model is fed: each level's per-frame feature shape, and the classes.

  `int8_steps` holds the levels stored as int8 and their step: their batches
  arrive as int8 (half the bytes of float16 on the way to the device) and
  `dequantize`, inside the jitted step, turns them into the float16 values the
  other levels arrive as.

  Frames mode (`data.input=frames`): batches hold the frames ({'frames': [S, S, 3]
  uint8 per frame}, `input_shapes`) and VGG-16 computes the levels in the step;
  `backbone` is the directory's backbone record (its weights) and `level_stats`
  the (channel means, scale) each level was normalised with.
  """
  level_shapes: Mapping[str, Tuple[int, ...]]
  class_names: Tuple[str, ...]
  int8_steps: Optional[Mapping[str, float]] = None
  frame_shape: Optional[Tuple[int, ...]] = None
  backbone: Optional[Mapping] = None
  level_stats: Optional[Mapping[str, Tuple[Tuple[float, ...], float]]] = None

  @property
  def input_shapes(self) -> Mapping[str, Tuple[int, ...]]:
    """What a batch holds per frame: the levels, or in frames mode the frames."""
    return {FRAMES: self.frame_shape} if self.frame_shape else dict(self.level_shapes)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def dequantize(self, features):
    """{level: stored batch} -> {level: float16 values}; jit-traceable."""
    import jax.numpy as jnp
    steps = self.int8_steps or {}
    return {level: (x.astype(jnp.float16) * jnp.float16(steps[level])
                    if level in steps else x)
            for level, x in features.items()}

  @classmethod
  def from_directory(cls, data: Mapping, model: Mapping,
                     splits: Optional[Tuple[str, ...]] = None, *,
                     check_classes: bool = True) -> "FeatureSpec":
    """The spec of the feature directory `data.dir`, for the levels `model` uses;
    a level it lacks, another class count (unless not `check_classes`: captioning
    has no classes) or a missing split (of `splits`, default the train and eval
    splits) is an error."""
    if not data["dir"]:
      raise ConfigError("data.dir is empty: point it at a feature directory "
                        "(python -m grurcn_jax.data.extract writes one)")
    from grurcn_jax.data import features as features_lib
    metadata = features_lib.read_metadata(data["dir"])
    missing = [l for l in model["levels"] if l not in metadata["levels"]]
    if missing:
      raise ConfigError(f"model.levels names {', '.join(missing)}, which {data['dir']} "
                        f"does not hold; it has {', '.join(metadata['levels'])}")
    if check_classes and model["num_classes"] != len(metadata["class_names"]):
      raise ConfigError(f"model.num_classes={model['num_classes']} but {data['dir']} has "
                        f"{len(metadata['class_names'])} classes")
    for split in splits or (data["train_split"], data["eval_split"]):
      try:
        features_lib.split_shards(metadata, split)
      except FeatureFormatError as e:
        raise FeatureFormatError(f"{data['dir']}: {e}") from None
    levels = {l: metadata["levels"][l] for l in model["levels"]}
    shapes = {l: tuple(info["shape"]) for l, info in levels.items()}
    class_names = tuple(metadata["class_names"])
    if data["input"] == "features":
      return cls(shapes, class_names, {l: float(info["int8_step"])
                                       for l, info in levels.items()
                                       if info["dtype"] == "int8"})
    if FRAMES not in metadata["levels"]:
      raise ConfigError(f"data.input=frames, but {data['dir']} holds no frames: "
                        f"extract with --store_frames")
    return cls(shapes, class_names,
               frame_shape=tuple(metadata["levels"][FRAMES]["shape"]),
               backbone=dict(metadata["backbone"]),
               level_stats={l: (tuple(info["mean"]), float(info["scale"]))
                            for l, info in levels.items()})

  @classmethod
  def at_image_size(cls, model: Mapping, image_size: int = 224, *,
                    frames: bool = False) -> "FeatureSpec":
    """The spec of VGG-16 features of square frames of side `image_size`, with no
    data behind it (benchmarks, compiled-program checks); with `frames`, of frames
    mode over a randomly initialised VGG-16 (levels normalised by mean 0, scale 1)."""
    shapes = {l: levels_lib.feature_shape(l, image_size) for l in model["levels"]}
    classes = tuple(f"class_{i}" for i in range(model["num_classes"]))
    if not frames:
      return cls(shapes, classes)
    return cls(shapes, classes, frame_shape=(image_size, image_size, 3),
               backbone={"name": "vgg16", "weights": "random", "seed": 0,
                         "image_size": image_size},
               level_stats={l: ((0.0,) * s[-1], 1.0) for l, s in shapes.items()})


def ensure_demo(data: Mapping, *, task: str = "classification",
                progress: bool = True) -> None:
  """Builds the synthetic demo dataset into `data.dir` when `data.demo` asks for
  one and it is not complete there yet (process 0 builds, the others wait): the
  motion classes, or for `task='captioning'` the captioned videos
  (`demo_captions`). An interrupted build is finished (it resumes)."""
  if not data.get("demo"):
    return
  from absl import logging
  import jax
  if task == "captioning":
    from grurcn_jax.data import demo_captions
    spec_type, build = demo_captions.CaptionDemoSpec, demo_captions.build
  else:
    from grurcn_jax.data import demo as demo_lib
    spec_type, build = demo_lib.DemoSpec, demo_lib.build
  try:
    spec = spec_type(**dict(data["demo"]))
  except TypeError as e:
    raise ConfigError(f"data.demo does not fit the demo's settings: {e}") from None
  # Only process 0 looks at the directory: every process then meets at the one
  # barrier, whatever it would have seen there.
  if jax.process_index() == 0:
    if _demo_complete(data["dir"], task):
      _check_demo_spec(data["dir"], spec)
    else:
      _check_demo_target(data["dir"])
      logging.info("Building the demo dataset in %s (once; cached) ...", data["dir"])
      build(data["dir"], spec, progress=progress)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("demo dataset built")


def _check_demo_target(directory: str) -> None:
  """The demo is built into a new or empty directory, or finishes its own: a demo
  config given another run's workdir as data.dir wrote 262 MB of shards beside
  its checkpoints."""
  from grurcn_jax import files
  from grurcn_jax.data import features as features_lib
  if (not files.is_local(directory) or not os.path.isdir(directory)
      or os.path.exists(os.path.join(directory, features_lib.METADATA_FILE))):
    return   # (an extraction's metadata: its resume checks what it holds)
  # What an unfinished build leaves before its metadata: shard files, a metadata
  # file cut short by a kill; hidden files (.DS_Store) are nobody's.
  others = sorted(n for n in os.listdir(directory)
                  if not re.match(r"(train|test)-\d{5}\.|metadata\.json\.tmp-|\.", n))
  if others:
    shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    raise ConfigError(f"data.dir {directory} holds other files ({shown}) and no demo: "
                      f"the demo is built into a new or empty directory. Point data.dir "
                      f"at one, or at extracted features to train on them")


def _check_demo_spec(directory: str, spec) -> None:
  """A complete demo built with other `data.demo` settings is used as it is (a
  config pointed at another demo's directory), with a warning that names the
  settings: before, a changed `data.demo` trained on the old demo without a word."""
  from absl import logging
  from grurcn_jax.data import demo as demo_lib
  from grurcn_jax.data import features as features_lib
  built = features_lib.read_metadata(directory).get("demo")
  wanted = demo_lib.spec_record(spec)
  if built is None or built == wanted:   # none: built before specs were recorded
    return
  differ = "; ".join(f"{k}: {built.get(k)} there, {wanted.get(k)} in the config"
                     for k in sorted(set(built) | set(wanted))
                     if built.get(k) != wanted.get(k))
  logging.warning("data.dir %s holds a demo built with other data.demo settings (%s): "
                  "it is used as it is; delete it, or give another data.dir, to build "
                  "the demo the config asks for", directory, differ)


def _demo_complete(directory: str, task: str) -> bool:
  """Whether a whole demo is in `directory`: the captioned one writes its captions
  last; metadata.json is written from the first shard on, so for the motion
  classes the extraction's completion mark says it. Features that are not the
  demo's own extraction (converted from it, written by the benchmark, extracted
  before the mark existed elsewhere) are used as they are."""
  from grurcn_jax.data import features as features_lib
  if task == "captioning":
    from grurcn_jax.data import captions
    return features_lib.exists(features_lib.join(directory, captions.CAPTIONS_FILE))
  if not features_lib.exists(features_lib.join(directory, features_lib.METADATA_FILE)):
    return False
  metadata = features_lib.read_metadata(directory)
  extraction = metadata.get("extraction", {})
  if extraction.get("source") != "demo" or "converted_from" in extraction:
    return True
  return features_lib.is_complete(metadata)
