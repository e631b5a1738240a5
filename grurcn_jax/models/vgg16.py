"""VGG-16 (configuration D) up to pool2..pool5 and fc7: the feature extractor, and
the backbone of frames mode (`models.frames`). The flow stream's network is the
same module on 2L stacked flow channels (`preprocess_flow`), its first convolution
initialised from the RGB one by `cross_modality`.

Its layers come from `grurcn_jax.levels.BLOCKS`, the table the feature shapes are
derived from too.

The layer names and kernel layouts are Keras' `keras.applications.VGG16`
(block1_conv1 .. block5_conv3, fc1, fc2), whose kernels are already HWIO / [in, out],
so ImageNet weights load by name (`load_keras_weights`): from Keras' full file (all
15 layers) or, when no fc level is asked for, from its 58 MB no-top file (the 13
convolutions).

Frames other than 224x224 keep working: pool5 is adaptively average pooled to 7x7
before fc6, as torchvision does, so fc7 exists for any frame size.
"""

import contextlib
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence

import einops
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from grurcn_jax import files
from grurcn_jax import levels as levels_lib
from grurcn_jax.errors import ConfigError
from grurcn_jax.models import heads

# Keras 'caffe' preprocessing: BGR order, ImageNet mean subtracted, no scaling.
BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)


def preprocess(frames_rgb_uint8: jax.Array) -> jax.Array:
  """[..., H, W, 3] RGB uint8 -> what the Keras VGG-16 weights expect."""
  return frames_rgb_uint8[..., ::-1].astype(jnp.float32) - BGR_MEAN


# Stored flow (data/flow.py: 0..255) centred as the RGB input is (mean subtracted,
# no scaling), so cross-modality weights see a like range. No motion is stored as
# 128 (quantize rounds 127.5 up; TSN's flow JPEGs store it so too): centred on
# 127.5, every still pixel came in as +0.5.
FLOW_CENTRE = 128.0


def preprocess_flow(stacked_uint8: jax.Array) -> jax.Array:
  """[..., H, W, 2L] stored flow windows -> the flow network's input."""
  return stacked_uint8.astype(jnp.float32) - FLOW_CENTRE


class VGG16(nn.Module):
  """Returns the requested levels of preprocessed frames [B, H, W, 3].

  `dropout_rate` drops units after fc6 and after fc7 when `train` (as VGG-16 was
  trained; for fine-tuning it, stage 1): fc7 is then the dropped-out output."""

  levels: Sequence[str] = ("pool2", "pool3", "pool4", "pool5")
  dtype: Optional[jnp.dtype] = None
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    outputs = {}
    deepest = max(levels_lib.depth(level) for level in self.levels)
    for block, convs, channels in levels_lib.BLOCKS:
      if block > deepest:
        break
      for i in range(1, convs + 1):
        x = nn.relu(nn.Conv(channels, (3, 3), padding="SAME", dtype=self.dtype,
                            name=f"block{block}_conv{i}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      outputs[f"pool{block}"] = x
    if "fc7" in self.levels:
      # Keras names VGG-16's fc6 and fc7 "fc1" and "fc2".
      x = einops.rearrange(heads.adaptive_average_pool(x, 7, 7), "b h w c -> b (h w c)")
      drop = nn.Dropout(self.dropout_rate, deterministic=not train)
      x = drop(nn.relu(nn.Dense(levels_lib.FC_UNITS, dtype=self.dtype, name="fc1")(x)))
      outputs["fc7"] = drop(nn.relu(nn.Dense(levels_lib.FC_UNITS, dtype=self.dtype,
                                             name="fc2")(x)))
    return {level: outputs[level] for level in self.levels}


def init_params(levels: Sequence[str], seed: int, image_size: int):
  """Random parameters, seeded (Flax's default initialisers: LeCun-normal kernels,
  zero biases)."""
  model = VGG16(levels=tuple(levels))
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  # One compiled program: run op by op, the initialisers and the forward pass
  # compile one at a time (11 s for the convolutions alone on CPU).
  return jax.jit(model.init)(jax.random.key(seed), x)["params"]


def cross_modality(params: Mapping, channels: int) -> dict:
  """The flow network's parameters from RGB VGG-16's (cross-modality
  initialisation, as TSN does it): block1_conv1's kernel averaged over its 3 input
  channels and copied to each of `channels` (2L stacked flow components); every
  other layer unchanged."""
  first = params["block1_conv1"]
  kernel = jnp.mean(first["kernel"], axis=2, keepdims=True)          # [3, 3, 1, 64]
  return {**params, "block1_conv1": {
      **first, "kernel": jnp.repeat(kernel, channels, axis=2)}}


# Keras' published VGG-16 weights, as `keras.applications.VGG16(weights="imagenet")`
# fetches them (file name, URL, MD5; the same name and hash share Keras' cache):
# the full file (13 convolutions, fc1, fc2, predictions; 528 MB) and the no-top file
# (the 13 convolutions only; 58 MB). Legacy Keras HDF5 weights format, both.
FULL_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
NO_TOP_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
KERAS_IMAGENET_WEIGHTS = {  # include_top -> (file name, URL, MD5)
    True: (FULL_WEIGHTS_FILE, _KERAS_URL + FULL_WEIGHTS_FILE,
           "64373286793e3c8b2b4e3219cbf3544b"),
    False: (NO_TOP_WEIGHTS_FILE, _KERAS_URL + NO_TOP_WEIGHTS_FILE,
            "6d6bbae143d832006294945121d1f1fc"),
}

# Keras' layer names, in the network's order.
CONV_LAYERS = tuple(f"block{block}_conv{i}" for block, convs, _ in levels_lib.BLOCKS
                    for i in range(1, convs + 1))
FC_LAYERS = ("fc1", "fc2")


def param_shapes(levels: Sequence[str]):
  """The parameter tree `init_params` gives for `levels`, as shapes (computes nothing:
  fc1 alone is 103M parameters). Frame size does not matter: fc6 reads the 7x7
  adaptive pool."""
  return jax.eval_shape(lambda: init_params(levels, 0, 32))


def _attr_list(group, name: str) -> List[str]:
  """A list attribute as Keras' legacy writer stores it: whole, or split into
  name0, name1, ... when it would overflow the HDF5 object header."""
  if name in group.attrs:
    values = list(group.attrs[name])
  else:
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
      values.extend(group.attrs[f"{name}{chunk}"])
      chunk += 1
  return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _legacy_layers(root) -> Dict[str, list]:
  """Legacy Keras HDF5 weights (Keras' published files, `model.save('x.h5')`, Keras
  2's `save_weights('x.h5')`): `layer_names` on the root, one group per layer named
  like the layer, whose `weight_names` attribute lists its datasets in order
  (kernel, bias). Layer name -> its datasets (unread)."""
  layers = {}
  for name in _attr_list(root, "layer_names"):
    if name not in root:
      continue
    group = root[name]
    names = _attr_list(group, "weight_names")
    if names and all(w in group for w in names):
      layers[name] = [group[w] for w in names]
  return layers


def _numbered(prefix: str, names) -> List[str]:
  """Keras 3's container names for one layer class, in the model's order:
  prefix, prefix_1, prefix_2, ..."""
  pattern = re.compile(rf"{prefix}(?:_(\d+))?")
  found = [(int(m.group(1) or 0), n) for n in names
           if (m := pattern.fullmatch(n)) is not None]
  return [n for _, n in sorted(found)]


def _keras3_layers(root, not_vgg: str) -> Dict[str, list]:
  """Keras 3's weights layout (`.weights.h5`, and `model.weights.h5` inside a
  `.keras` archive): layers/<class name>[_<k>]/vars/<i>, addressed by each class's
  position in the model, as Keras' own loader reads it. VGG-16's k-th Conv2D is the
  k-th convolution; its first two Dense layers are fc1, fc2 (the third is the
  classifier)."""
  group = root["layers"]
  convs, denses = _numbered("conv2d", group.keys()), _numbered("dense", group.keys())
  if len(convs) != len(CONV_LAYERS) or len(denses) not in (0, 3):
    raise ConfigError(f"{not_vgg}: it has {len(convs)} Conv2D and {len(denses)} "
                      f"Dense layers, VGG-16 has {len(CONV_LAYERS)} and 3 (or 0 "
                      "without its top)")
  layers = {}
  for keras_name, name in zip(convs + denses, CONV_LAYERS + FC_LAYERS):
    vars_group = group[keras_name].get("vars")
    keys = sorted((k for k in vars_group.keys() if k.isdigit()), key=int) \
        if vars_group is not None else []
    layers[name] = [vars_group[k] for k in keys]
  return layers


def _open_weights(path: str, stack):
  """The root HDF5 group of a Keras weights file (.h5, .weights.h5 or .keras)."""
  import h5py  # deferred: a Keras dependency, needed only here
  if path.endswith(".keras"):
    import zipfile
    archive = stack.enter_context(zipfile.ZipFile(path))
    if "model.weights.h5" not in archive.namelist():
      raise ConfigError(f"VGG-16 weights {path!r}: a .keras archive without "
                        "model.weights.h5")
    return stack.enter_context(h5py.File(archive.open("model.weights.h5"), "r"))
  return stack.enter_context(h5py.File(path, "r"))


def _read_weights_file(path: str, levels: Sequence[str]):
  """Parameters for `levels` read from a Keras VGG-16 weights file, checked against
  the Flax module's shapes."""
  import contextlib
  expected = param_shapes(levels)
  if not os.path.isfile(path):
    raise ConfigError(f"VGG-16 weights file {path!r}: no such file (weights must be "
                      "'random', 'imagenet' or a Keras VGG16 weights file: "
                      f"{FULL_WEIGHTS_FILE} or, without fc7, {NO_TOP_WEIGHTS_FILE})")
  not_vgg = (f"{path!r} is not Keras VGG-16 weights (expected a Keras weights file "
             f"such as {FULL_WEIGHTS_FILE} or {NO_TOP_WEIGHTS_FILE}, with layers "
             f"{CONV_LAYERS[0]}..{CONV_LAYERS[-1]}, {', '.join(FC_LAYERS)})")
  with contextlib.ExitStack() as stack:
    try:
      root = _open_weights(path, stack)
    except ConfigError:
      raise
    except Exception as e:  # h5py: OSError for a file that is not HDF5
      raise ConfigError(f"{not_vgg}: cannot read it as HDF5 ({e})") from e
    if "layer_names" not in root.attrs and "layer_names0" not in root.attrs \
        and "model_weights" in root:
      root = root["model_weights"]  # a whole model saved as legacy .h5
    if "layer_names" in root.attrs or "layer_names0" in root.attrs:
      layers = _legacy_layers(root)
    elif "layers" in root:
      layers = _keras3_layers(root, not_vgg)
    else:
      raise ConfigError(f"{not_vgg}: it has neither Keras' legacy layout (attribute "
                        "layer_names) nor Keras 3's (group layers)")
    missing = [name for name in expected if name not in layers]
    has_all_convs = all(name in layers for name in CONV_LAYERS)
    if missing and has_all_convs and set(missing) <= set(FC_LAYERS):
      raise ConfigError(
          f"level fc7 needs VGG-16's fully connected layers ({', '.join(FC_LAYERS)}), "
          f"which {path!r} does not have: it holds the {len(CONV_LAYERS)} convolutions "
          f"only, like Keras' no-top file {NO_TOP_WEIGHTS_FILE}. Use the full file "
          f"{FULL_WEIGHTS_FILE} (or 'imagenet'), or drop fc7 from the levels")
    if missing:
      raise ConfigError(f"{not_vgg}: no weights for layer(s) {', '.join(missing)}")
    # Check every shape before reading anything (fc1 alone is 411 MB).
    for name, shapes in expected.items():
      want = (shapes["kernel"].shape, shapes["bias"].shape)
      got = tuple(tuple(d.shape) for d in layers[name])
      if got != want:
        raise ConfigError(f"{not_vgg}: layer {name} has weights of shapes "
                          f"{list(got)}, VGG-16's are {list(want)} (kernel, bias)")
    return {name: {"kernel": jnp.asarray(np.asarray(layers[name][0][()],
                                                    shapes["kernel"].dtype)),
                   "bias": jnp.asarray(np.asarray(layers[name][1][()],
                                                  shapes["bias"].dtype))}
            for name, shapes in expected.items()}


def load_keras_weights(path_or_name: str, levels: Sequence[str]):
  """Parameters for `levels` from Keras' VGG16 weights: 'imagenet' (Keras downloads
  and caches its published file; needs network once) or a path to a Keras weights
  file: legacy HDF5 (.h5: Keras' published files), Keras 3 `.weights.h5`, or `.keras`.

  Only the layers `levels` need are read (by Keras layer name from legacy .h5; by
  layer position, as Keras itself does, from Keras 3 files), so without fc7 either
  file works: Keras' full VGG-16 file or its no-top file (13 convolutions, 58 MB;
  'imagenet' then downloads that one). fc7 needs the full file. Raises ConfigError
  for a missing file, a file that is not VGG-16 weights, or fc7 from a no-top file.

  The file is read with h5py rather than loaded into a Keras model: Keras 3 loads a
  legacy .h5 into a no-top model only by name (`by_name=True`), which silently skips
  layers a file lacks (any unrelated .h5 "loads"), refuses `by_name` for
  .weights.h5, and would build and randomly initialise the 138M-parameter network
  just to copy it out.
  """
  path_or_name = os.fspath(path_or_name)
  if path_or_name == "imagenet":
    import keras  # deferred: TensorFlow/Keras only when weights are downloaded
    fname, origin, md5 = KERAS_IMAGENET_WEIGHTS[
        any(levels_lib.is_vector_level(level) for level in levels)]
    try:
      path_or_name = keras.utils.get_file(fname, origin, cache_subdir="models",
                                          file_hash=md5)
    except Exception as e:  # noqa: BLE001 (Keras raises plain Exception: no network, ...)
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ConfigError(
          f"weights 'imagenet': Keras could not download {fname} ({reason}). On a "
          f"machine without network, download {origin} elsewhere and give its "
          f"path: --weights=PATH") from None
  return _read_weights_file(path_or_name, levels)


# Where a frames-mode model keeps VGG-16's parameters: params[BACKBONE].
BACKBONE = "backbone"

# Weights of a VGG-16 trained by this package: 'checkpoint:DIR' or
# 'checkpoint:DIR@STEP', DIR a frames-mode run's workdir (stage 1's fine-tuning).
CHECKPOINT_WEIGHTS = "checkpoint:"


def _checkpoint_location(weights: str):
  """'checkpoint:DIR[@STEP]' -> (DIR, STEP or None)."""
  from grurcn_jax import checkpoints  # deferred: orbax only here
  return checkpoints.location(weights[len(CHECKPOINT_WEIGHTS):], f"weights {weights!r}",
                              form="checkpoint:DIR")


@contextlib.contextmanager
def _checkpoint_errors(weights: str):
  """A checkpoint's ConfigError, said of `weights`, with what holds a VGG-16."""
  try:
    yield
  except ConfigError as e:
    raise ConfigError(f"VGG-16 weights {weights!r}: {e}. Only a run in frames mode "
                      "(data.input=frames) holds a VGG-16, e.g. "
                      "configs/ucf101_vgg16_finetune.py") from None


def load_checkpoint_weights(weights: str, levels: Sequence[str]):
  """Parameters for `levels` from the VGG-16 of a frames-mode run's checkpoint
  ('checkpoint:DIR[@STEP]', newest step by default): the same layer names and
  layouts as the Keras files, checked the same way."""
  from grurcn_jax import checkpoints  # deferred: orbax only here
  directory, step = _checkpoint_location(weights)
  with _checkpoint_errors(weights):
    saved, config, step = checkpoints.read_params(directory, BACKBONE, step)
  expected = param_shapes(levels)
  missing = [name for name in expected if name not in saved]
  if missing:
    raise ConfigError(
        f"VGG-16 weights {weights!r} (step {step}): that run computed levels "
        f"{config.get('model.levels')} and has no layer(s) {', '.join(missing)}, "
        f"which levels {tuple(levels)} need")
  params = {}
  for name, shapes in expected.items():
    for part in ("kernel", "bias"):
      got = saved[name][part].shape
      if got != shapes[part].shape:
        raise ConfigError(f"VGG-16 weights {weights!r}: layer {name} {part} has "
                          f"shape {got}, VGG-16's is {shapes[part].shape}")
    params[name] = {part: jnp.asarray(saved[name][part], shapes[part].dtype)
                    for part in ("kernel", "bias")}
  return params


def is_weights_file(weights: str) -> bool:
  """Whether `weights` names a Keras weights file (not 'random', 'imagenet' or a
  'checkpoint:' run)."""
  return bool(weights) and weights not in ("random", "imagenet") and not (
      weights.startswith(CHECKPOINT_WEIGHTS))


def pin_weights(weights: str) -> str:
  """`weights` as a record must keep them, readable from any directory: a
  checkpoint as an absolute directory and the step it has now ('checkpoint:DIR'
  names whichever step is newest, which changes while that run goes on), a
  weights file as an absolute path; 'random' and 'imagenet' as they are."""
  if is_weights_file(weights):
    return files.absolute(weights)
  if not weights.startswith(CHECKPOINT_WEIGHTS):
    return weights
  from grurcn_jax import checkpoints
  directory, step = _checkpoint_location(weights)
  directory = files.absolute(directory)
  if step is None:
    with _checkpoint_errors(weights):
      step = checkpoints.newest_step(directory)   # the listing: no arrays read
  return f"{CHECKPOINT_WEIGHTS}{directory}@{step}"


def load_weights(weights: str, levels: Sequence[str]):
  """Parameters for `levels` from 'imagenet', a Keras VGG-16 weights file, or
  'checkpoint:DIR[@STEP]' (a frames-mode run's VGG-16)."""
  weights = os.fspath(weights)
  if weights.startswith(CHECKPOINT_WEIGHTS):
    return load_checkpoint_weights(weights, levels)
  return load_keras_weights(weights, levels)


def backbone_params(backbone: Mapping, levels: Sequence[str]):
  """The parameters a feature directory's `backbone` record (metadata: weights,
  seed, image_size) names, for `levels`: the very weights its features were
  extracted with."""
  if backbone.get("name") != "vgg16":
    raise ConfigError(f"frames mode runs VGG-16; the directory's backbone is "
                      f"{backbone.get('name')!r}")
  if backbone["weights"] == "random":
    return init_params(levels, backbone["seed"], backbone["image_size"])
  return load_weights(backbone["weights"], levels)
