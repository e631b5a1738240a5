"""Loading Keras' VGG-16 weights into the Flax VGG-16: the published legacy .h5 files
(full and no-top), Keras 3's .weights.h5 and .keras, and the errors. No network:
every weights file is made here, from a small Keras VGG16 with seeded weights."""

import inspect
import re

import h5py
import numpy as np
import pytest

from grurcn_jax.models import vgg16
from grurcn_jax.errors import ConfigError

keras = pytest.importorskip("keras")

# Keras' TensorFlow backend converting tensors with numpy 2 (not this package's).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

POOLS = ("pool2", "pool3", "pool4", "pool5")
SIZE = 32  # frame side: pool5 is 1x1


def _weightless(names):
  return [(name, []) for name in names]


def write_legacy_h5(path, layers):
  """Keras' legacy HDF5 weights layout, as in its published VGG-16 files (and as
  keras/src/legacy/saving/legacy_h5_format.py reads it): attribute `layer_names` on
  the root listing every layer in order; one group per layer named like the layer,
  with attribute `weight_names` (empty for layers without weights) naming its
  datasets in order, kernel then bias, e.g. block1_conv1_W_1:0, block1_conv1_b_1:0.

  layers: [(name, [arrays or ('fill', shape, value, head rows)])]. A 'fill' entry
  is a chunked dataset never written except its first rows, so a 411 MB fc1 costs
  almost nothing on disk.
  """
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([name.encode("utf8") for name, _ in layers])
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.0.8"
    for name, weights in layers:
      group = f.create_group(name)
      weight_names = [f"{name}_{'W' if i == 0 else 'b'}_1:0" for i in range(len(weights))]
      group.attrs["weight_names"] = np.array([w.encode("utf8") for w in weight_names],
                                             dtype="S" if weights else "S1")
      for weight_name, value in zip(weight_names, weights):
        if isinstance(value, tuple):
          _, shape, fill, head = value
          ds = group.create_dataset(weight_name, shape, np.float32, fillvalue=fill,
                                    chunks=(min(shape[0], 256),) + tuple(shape[1:]))
          ds[:len(head)] = head
        else:
          group.create_dataset(weight_name, data=value)


@pytest.fixture(scope="module")
def keras_notop():
  """Keras' no-top VGG16 on 32x32 frames, seeded He-normal kernels (so activations
  keep their scale through 13 layers) and non-zero biases (so biases are checked)."""
  net = keras.applications.VGG16(weights=None, include_top=False,
                                 input_shape=(SIZE, SIZE, 3))
  rng = np.random.default_rng(0)
  for name in vgg16.CONV_LAYERS:
    layer = net.get_layer(name)
    kernel, bias = layer.get_weights()
    fan_in = np.prod(kernel.shape[:3])
    layer.set_weights([
        (rng.standard_normal(kernel.shape) * np.sqrt(2 / fan_in)).astype(np.float32),
        (rng.standard_normal(bias.shape) * 0.1).astype(np.float32)])
  return net


def conv_layers(net):
  return [(name, net.get_layer(name).get_weights()) for name in vgg16.CONV_LAYERS]


def notop_layer_list(net):
  """Every layer of the no-top network, in order, as the published no-top file."""
  weights = dict(conv_layers(net))
  return [("input_1", [])] + [(layer.name, weights.get(layer.name, []))
                              for layer in net.layers[1:]]


FC1_HEAD = np.random.default_rng(1).standard_normal((8, 4096)).astype(np.float32)
FC2_HEAD = np.random.default_rng(2).standard_normal((8, 4096)).astype(np.float32)
FC_BIAS = [np.random.default_rng(i).standard_normal(n).astype(np.float32)
           for i, n in ((3, 4096), (4, 4096), (5, 1000))]


@pytest.fixture(scope="module")
def files(keras_notop, tmp_path_factory):
  d = tmp_path_factory.mktemp("vgg16_weights")
  out = {"notop": d / vgg16.NO_TOP_WEIGHTS_FILE, "full": d / vgg16.FULL_WEIGHTS_FILE,
         "notop_keras3": d / "notop.weights.h5", "notop_archive": d / "notop.keras"}
  write_legacy_h5(out["notop"], notop_layer_list(keras_notop))
  # The full file: the same 13 convolutions, then flatten, fc1 [25088, 4096],
  # fc2 [4096, 4096] and the 1000-way classifier (only their first rows written).
  write_legacy_h5(out["full"], notop_layer_list(keras_notop) + _weightless(["flatten"]) + [
      ("fc1", [("fill", (7 * 7 * 512, 4096), 0.25, FC1_HEAD), FC_BIAS[0]]),
      ("fc2", [("fill", (4096, 4096), -0.5, FC2_HEAD), FC_BIAS[1]]),
      ("predictions", [("fill", (4096, 1000), 0.0, FC2_HEAD[:, :1000]), FC_BIAS[2]])])
  keras_notop.save_weights(out["notop_keras3"])
  keras_notop.save(out["notop_archive"])
  return out


def assert_convs_equal(params, net, names):
  assert sorted(params) == sorted(names)
  for name in names:
    kernel, bias = net.get_layer(name).get_weights()
    np.testing.assert_array_equal(np.asarray(params[name]["kernel"]), kernel, err_msg=name)
    np.testing.assert_array_equal(np.asarray(params[name]["bias"]), bias, err_msg=name)


def test_written_files_have_keras_legacy_layout(keras_notop, files):
  """Keras' own legacy loader reads the files written here: the no-top file
  topologically (the strict default: exactly the 13 layers with weights), the full
  one into the no-top network only by name."""
  fresh = keras.applications.VGG16(weights=None, include_top=False,
                                   input_shape=(SIZE, SIZE, 3))
  fresh.load_weights(files["notop"])
  for name, weights in conv_layers(keras_notop):
    for got, want in zip(fresh.get_layer(name).get_weights(), weights):
      np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="Layer count mismatch"):
    fresh.load_weights(files["full"])


@pytest.mark.parametrize("kind", ["notop", "full", "notop_keras3", "notop_archive"])
def test_pool_levels_load_every_conv_exactly(keras_notop, files, kind):
  params = vgg16.load_keras_weights(str(files[kind]), POOLS)
  assert_convs_equal(params, keras_notop, vgg16.CONV_LAYERS)
  # Only the layers the levels need: pool2 is blocks 1 and 2.
  params = vgg16.load_keras_weights(files[kind], ["pool2"])
  assert_convs_equal(params, keras_notop, vgg16.CONV_LAYERS[:4])


def test_param_shapes_is_init_params_tree():
  """The shapes the loader checks files against: init_params' tree, computed
  without initialising fc1's 103M parameters."""
  shapes = vgg16.param_shapes(POOLS + ("fc7",))
  assert set(shapes) == set(vgg16.CONV_LAYERS) | set(vgg16.FC_LAYERS)
  assert shapes["block3_conv1"]["kernel"].shape == (3, 3, 128, 256)
  assert shapes["fc1"]["kernel"].shape == (7 * 7 * 512, 4096)
  assert shapes["fc2"]["bias"].shape == (4096,)
  assert set(vgg16.param_shapes(["pool3"])) == set(vgg16.CONV_LAYERS[:7])


def test_forward_matches_keras_predict(keras_notop, files):
  params = vgg16.load_keras_weights(files["notop"], POOLS)
  frame = np.random.default_rng(7).uniform(-128, 128, (1, SIZE, SIZE, 3)).astype(np.float32)
  ours = vgg16.VGG16(levels=POOLS).apply({"params": params}, frame)
  probe = keras.Model(keras_notop.inputs, [
      keras_notop.get_layer(f"block{level[-1]}_pool").output for level in POOLS])
  theirs = probe.predict(frame, verbose=0)
  for level, want in zip(POOLS, theirs):
    got = np.asarray(ours[level])
    assert got.shape == want.shape
    # Both sides compute in float32 but sum in different orders (XLA vs
    # TensorFlow's convolutions). Each output is a sum of at most 3*3*512 = 4608
    # products; the rounding error of such a sum is ~sqrt(4608) * 2**-24 ~ 4e-6 of
    # the magnitudes summed, and it compounds over at most 13 layers (~5e-5).
    # That is the random-walk estimate, rounding errors of independent sign (the
    # worst case, all of one sign, is 4608 * 2**-24 ~ 3e-4 a layer, never seen):
    # measured here ~2e-6, 50x under the bound.
    # Measured against the level's largest activation, not element by element:
    # ReLU outputs near zero come from cancellation and have no relative accuracy.
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_array_less(np.abs(got - want).max(), 1e-4 * scale, err_msg=level)


def test_full_file_gives_fc7(keras_notop, files):
  params = vgg16.load_keras_weights(files["full"], ["pool3", "fc7"])
  assert_convs_equal({k: v for k, v in params.items() if k.startswith("block")},
                     keras_notop, vgg16.CONV_LAYERS)
  assert sorted(params) == sorted(vgg16.CONV_LAYERS + ("fc1", "fc2"))
  for name, head, fill, bias in (("fc1", FC1_HEAD, 0.25, FC_BIAS[0]),
                                 ("fc2", FC2_HEAD, -0.5, FC_BIAS[1])):
    kernel = np.asarray(params[name]["kernel"])
    assert kernel.shape == ((7 * 7 * 512, 4096) if name == "fc1" else (4096, 4096))
    np.testing.assert_array_equal(kernel[:8], head)  # [in, out], not transposed
    assert np.all(kernel[8:] == fill)
    np.testing.assert_array_equal(np.asarray(params[name]["bias"]), bias)


@pytest.mark.parametrize("kind", ["notop", "notop_keras3"])
def test_fc7_from_notop_file_is_config_error(files, kind):
  path = str(files[kind])
  with pytest.raises(ConfigError, match="fc7") as e:
    vgg16.load_keras_weights(path, ["pool5", "fc7"])
  message = str(e.value)
  for part in (path, vgg16.FULL_WEIGHTS_FILE, vgg16.NO_TOP_WEIGHTS_FILE):
    assert part in message


def test_full_keras3_file(keras_notop, tmp_path):
  """A full VGG16 saved by Keras 3 (.weights.h5; classes=10 to keep it small): its
  convolutions load; its fc1 made for 32x32 frames ([512, 4096]) is not the 224x224
  fc1 the Flax module's 7x7 pool needs: a ConfigError naming the layer."""
  full = keras.applications.VGG16(weights=None, include_top=True,
                                  input_shape=(SIZE, SIZE, 3), classes=10)
  full.set_weights(keras_notop.get_weights() + full.get_weights()[26:])
  path = tmp_path / "full.weights.h5"
  full.save_weights(path)
  assert_convs_equal(vgg16.load_keras_weights(path, POOLS), keras_notop, vgg16.CONV_LAYERS)
  with pytest.raises(ConfigError, match=r"fc1 has weights of shapes \[\(512, 4096\)"):
    vgg16.load_keras_weights(path, ["fc7"])


def test_missing_file(tmp_path):
  path = str(tmp_path / "nowhere" / vgg16.NO_TOP_WEIGHTS_FILE)
  with pytest.raises(ConfigError, match=re.escape(path)):
    vgg16.load_keras_weights(path, POOLS)


def test_not_vgg16_weights(keras_notop, tmp_path):
  junk = tmp_path / "junk.h5"
  junk.write_text("not HDF5")
  empty = tmp_path / "empty.h5"
  h5py.File(empty, "w").close()
  other = tmp_path / "other.h5"  # legacy layout, other layers
  write_legacy_h5(other, [("dense", [np.ones((4, 3), np.float32), np.zeros(3, np.float32)])])
  wrong = tmp_path / "wrong.h5"  # block3_conv1 with 128 filters instead of 256
  layers = notop_layer_list(keras_notop)
  layers = [(n, [w[0][..., :128], w[1][:128]] if n == "block3_conv1" else w)
            for n, w in layers]
  write_legacy_h5(wrong, layers)
  other_archive = tmp_path / "other.keras"
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
  model.save(other_archive)
  bad_zip = tmp_path / "bad.keras"
  bad_zip.write_text("not a zip")
  for path, detail in ((junk, "HDF5"), (empty, "layout"), (other, "block1_conv1"),
                       (wrong, r"block3_conv1 has weights of shapes"),
                       (other_archive, "0 Conv2D"), (bad_zip, "")):
    with pytest.raises(ConfigError, match=re.escape(str(path))) as e:
      vgg16.load_keras_weights(str(path), POOLS)
    assert re.search(detail, str(e.value)), str(e.value)


def test_imagenet_downloads_notop_file_without_fc7(files, monkeypatch):
  """'imagenet' asks Keras for its published file (never downloaded here): the
  58 MB no-top one unless fc7 is asked for. Names, URLs and hashes are Keras'."""
  from keras.src.applications import vgg16 as keras_vgg16
  assert vgg16.KERAS_IMAGENET_WEIGHTS[True][1] == keras_vgg16.WEIGHTS_PATH
  assert vgg16.KERAS_IMAGENET_WEIGHTS[False][1] == keras_vgg16.WEIGHTS_PATH_NO_TOP
  source = inspect.getsource(keras_vgg16.VGG16)
  for fname, _, md5 in vgg16.KERAS_IMAGENET_WEIGHTS.values():
    assert f'"{fname}"' in source and f'"{md5}"' in source

  asked = []

  def fake_get_file(fname, origin, cache_subdir, file_hash):
    asked.append((fname, origin, cache_subdir, file_hash))
    return str(files["notop" if fname == vgg16.NO_TOP_WEIGHTS_FILE else "full"])

  monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
  vgg16.load_keras_weights("imagenet", POOLS)
  assert asked[-1] == (vgg16.NO_TOP_WEIGHTS_FILE, keras_vgg16.WEIGHTS_PATH_NO_TOP,
                       "models", vgg16.KERAS_IMAGENET_WEIGHTS[False][2])
  params = vgg16.load_keras_weights("imagenet", ["pool2", "fc7"])
  assert asked[-1][0] == vgg16.FULL_WEIGHTS_FILE and "fc1" in params

  def offline(fname, origin, cache_subdir, file_hash):
    raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or "
                    f"service not known")
  monkeypatch.setattr(keras.utils, "get_file", offline)
  with pytest.raises(ConfigError, match=re.escape(
      f"weights 'imagenet': Keras could not download {vgg16.NO_TOP_WEIGHTS_FILE} (URL "
      f"fetch failure on {keras_vgg16.WEIGHTS_PATH_NO_TOP}") + ".* download "
      + re.escape(keras_vgg16.WEIGHTS_PATH_NO_TOP) + " elsewhere and give its path"):
    vgg16.load_keras_weights("imagenet", POOLS)


def mean_of_three_bound(kernels, mean):
  """How far float32's mean of the 3 RGB filters may be from the exact one: the
  sum's two roundings (2^-24 of the partial sums, at most sum |x| each) shared by
  3, then the division's and the result's own (2^-24 of |mean| each)."""
  return 2 * 2.0 ** -24 * np.abs(kernels).sum(axis=2) / 3 + 2 * 2.0 ** -24 * np.abs(mean)


def test_flow_network_takes_stacked_flows_and_starts_from_rgb_by_channel_mean():
  import jax
  from grurcn_jax import levels as levels_lib
  rgb = vgg16.param_shapes(("pool2", "pool5", "fc7"))
  rgb = jax.tree.map(lambda s: np.random.default_rng(s.size % 97).normal(
      size=s.shape).astype(np.float32), rgb)
  flow = vgg16.cross_modality(rgb, 20)
  kernel = np.asarray(flow["block1_conv1"]["kernel"])
  assert kernel.shape == (3, 3, 20, 64)
  rgb_kernel = np.asarray(rgb["block1_conv1"]["kernel"], np.float64)
  mean = rgb_kernel.mean(axis=2)
  for channel in range(20):   # every input channel: the mean of the RGB filters
    assert np.all(np.abs(kernel[:, :, channel] - mean)
                  <= mean_of_three_bound(rgb_kernel, mean))
  for name in rgb:            # the rest is the RGB network
    for part in ("kernel", "bias"):
      if (name, part) != ("block1_conv1", "kernel"):
        np.testing.assert_array_equal(flow[name][part], rgb[name][part])
  # 224 px windows of L=10 flows: the RGB network's level shapes.
  model = vgg16.VGG16(levels=("pool2", "pool5", "fc7"))
  out = jax.eval_shape(lambda p, x: model.apply({"params": p}, vgg16.preprocess_flow(x)),
                       flow, jax.ShapeDtypeStruct((2, 224, 224, 20), np.uint8))
  assert {l: out[l].shape[1:] for l in out} == {
      l: levels_lib.feature_shape(l, 224) for l in ("pool2", "pool5", "fc7")}


def test_flow_extractor_starts_from_a_weights_file_by_cross_modality(keras_notop, files):
  from grurcn_jax.data import extract
  settings = extract.Settings(levels=("pool2",), image_size=SIZE, modality="flow",
                              flow_length=10, weights=str(files["notop"]))
  params = extract.FeatureExtractor(settings)._params
  rgb_kernel, rgb_bias = keras_notop.get_layer("block1_conv1").get_weights()
  kernel = np.asarray(params["block1_conv1"]["kernel"])
  assert kernel.shape == (3, 3, 20, 64)
  rgb_kernel = np.asarray(rgb_kernel, np.float64)
  mean = rgb_kernel.mean(axis=2)
  assert np.all(np.abs(kernel - mean[:, :, None])
                <= mean_of_three_bound(rgb_kernel, mean)[:, :, None])
  np.testing.assert_array_equal(params["block1_conv1"]["bias"], rgb_bias)
  for name in vgg16.CONV_LAYERS[1:4]:   # blocks 1 and 2: the file's, as for RGB
    for got, want in zip((params[name]["kernel"], params[name]["bias"]),
                         keras_notop.get_layer(name).get_weights()):
      np.testing.assert_array_equal(got, want)
