"""The paper's stage 1 and what follows it: VGG-16 fine-tuned in frames mode, then
its checkpoint (`--weights=checkpoint:DIR`) driving extraction, and frames mode
over the features it made starting from it."""

import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ucf101_vgg16_finetune
from grurcn_jax import config_validation
from grurcn_jax.data import extract, features
from grurcn_jax.errors import ConfigError
from grurcn_jax.experiment import assemble
from grurcn_jax.models import vgg16
from tests.models.vgg_rounding import stored_level_bound
from tests.training_setup import tiny_config

LEVELS = ("pool2", "pool3")


def _save(config, workdir, change_backbone=False, step=2):
  """The initial state of `config`, checkpointed at `step` (no training: what is
  tested is where the weights go, not how they were learnt); with
  `change_backbone`, VGG-16's weights first moved away from the initial ones, as
  fine-tuning leaves them. Returns the saved and the initial parameters (host
  arrays)."""
  experiment = assemble(config)
  state = experiment.init_state()
  initial = jax.device_get(state.params)
  if change_backbone:
    moved = jax.tree.map(lambda a: a + 0.01 * jnp.sign(a) + 0.001,
                         state.params["backbone"])
    state = state.replace(params={**state.params, "backbone": moved})
  checkpoints = experiment.checkpoints(workdir)
  checkpoints.save(step, state, config.to_dict())
  checkpoints.close()
  return jax.device_get(state.params), initial


@pytest.fixture(scope="module")
def finetuned(tiny_demo_dir, tmp_path_factory):
  """The checkpoint of a stage-1-like run (vgg_frames on pool3 in frames mode,
  VGG-16 trainable) whose VGG-16 is no longer the initial one; returns (workdir,
  saved parameters, initial backbone)."""
  workdir = str(tmp_path_factory.mktemp("stage1"))
  config = tiny_config(tiny_demo_dir, data__input="frames", model__name="vgg_frames",
                       model__levels=("pool3",), model__hidden=(),
                       model__backbone_trainable=True)
  saved, initial = _save(config, workdir, change_backbone=True)
  return workdir, saved, initial["backbone"]


def _assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_checkpoint_weights_are_the_trained_backbone(finetuned):
  workdir, params, initial = finetuned
  loaded = vgg16.load_weights(f"checkpoint:{workdir}", LEVELS)
  trained = {name: params["backbone"][name] for name in loaded}
  _assert_tree_equal(loaded, trained)
  # Not the initial weights: the checkpoint's own.
  assert all(np.any(loaded[n]["kernel"] != initial[n]["kernel"]) for n in loaded)
  # The checkpoints folder itself, and an explicit step, name the same weights.
  _assert_tree_equal(vgg16.load_weights(
      f"checkpoint:{os.path.join(workdir, 'checkpoints')}@2", LEVELS), trained)


def test_checkpoint_weights_errors(finetuned, tiny_demo_dir, tmp_path, monkeypatch):
  workdir, _, _ = finetuned
  with pytest.raises(ConfigError, match=r"computed levels \['pool3'\] and has no "
                                        r"layer\(s\) block4_conv1"):
    vgg16.load_weights(f"checkpoint:{workdir}", ("pool4",))
  with pytest.raises(ConfigError, match=r"no checkpoint for step 7 .* available: \[2\]"):
    vgg16.load_weights(f"checkpoint:{workdir}@7", LEVELS)
  with pytest.raises(ConfigError, match="no checkpoints at"):
    vgg16.load_weights(f"checkpoint:{tmp_path / 'nothing'}", LEVELS)
  with pytest.raises(ConfigError, match="needs a directory"):
    vgg16.load_weights("checkpoint:", LEVELS)
  with pytest.raises(ConfigError, match="the step after '@' must be a number"):
    vgg16.load_weights(f"checkpoint:{workdir}@last", LEVELS)
  # A relative DIR is the run's, as the shell gives it.
  with monkeypatch.context() as patch:
    patch.chdir(os.path.dirname(workdir))
    relative = vgg16.load_weights(f"checkpoint:{os.path.basename(workdir)}", LEVELS)
  jax.tree.map(np.testing.assert_array_equal, relative,
               vgg16.load_weights(f"checkpoint:{workdir}", LEVELS))
  # A features-mode run has no VGG-16 to give.
  features_run = str(tmp_path / "features_run")
  _save(tiny_config(tiny_demo_dir), features_run)
  with pytest.raises(ConfigError, match="no 'backbone' parameters .* Only a run in "
                                        "frames mode"):
    vgg16.load_weights(f"checkpoint:{features_run}", LEVELS)


def test_pinned_weights_name_one_step_absolutely(finetuned, monkeypatch, tmp_path):
  workdir, _, _ = finetuned
  monkeypatch.chdir(os.path.dirname(workdir))
  relative = os.path.basename(workdir)
  assert vgg16.pin_weights(f"checkpoint:{relative}") == f"checkpoint:{workdir}@2"
  assert vgg16.pin_weights("imagenet") == "imagenet"
  assert vgg16.pin_weights("random") == "random"
  # Recorded for frames mode, which reads them from another working directory:
  # a weights file absolute, ~ expanded (a shell leaves it after '=').
  assert vgg16.pin_weights("weights/vgg16.h5") == os.path.join(
      os.path.dirname(workdir), "weights", "vgg16.h5")
  monkeypatch.setenv("HOME", os.path.dirname(workdir))
  assert vgg16.pin_weights(f"checkpoint:~/{relative}") == f"checkpoint:{workdir}@2"
  # The step comes from the folder's listing: no parameters are read for it.
  from grurcn_jax import checkpoints
  monkeypatch.setattr(checkpoints, "read_params", pytest.fail)
  assert vgg16.pin_weights(f"checkpoint:{workdir}") == f"checkpoint:{workdir}@2"
  # Its errors say what holds a VGG-16, as loading does.
  empty = tmp_path / "empty_run" / "checkpoints"
  empty.mkdir(parents=True)
  with pytest.raises(ConfigError, match=r"no checkpoints in .*empty_run/checkpoints\. "
                                        r"Only a run in frames mode"):
    vgg16.pin_weights(f"checkpoint:{empty.parent}")


def _video(video_id, label, split, seed, num_frames=4):
  frames = np.random.default_rng(seed).integers(0, 256, (num_frames, 32, 32, 3),
                                                dtype=np.uint8)
  return extract.Video(video_id=video_id, label=label, split=split,
                       load=lambda: (frames, np.arange(num_frames)),
                       estimate_frames=lambda: num_frames)


def test_checkpoint_drives_extraction_and_frames_mode(finetuned, tmp_path):
  workdir, params, _ = finetuned
  videos = [_video(f"v{i}", i % 2, "train" if i < 4 else "test", seed=i)
            for i in range(6)]
  out = str(tmp_path / "features")
  settings = extract.Settings(levels=LEVELS, image_size=32, videos_per_shard=4,
                              weights=vgg16.pin_weights(f"checkpoint:{workdir}"),
                              store_frames=True, batch_size=8)
  extract.extract(videos, ["a", "b"], out, settings, source="test", progress=False,
                  out=io.StringIO())
  metadata = features.read_metadata(out)
  assert metadata["backbone"]["weights"] == f"checkpoint:{workdir}@2"

  # The stored features are the fine-tuned VGG-16's, normalised as recorded:
  # computed here from the trained parameters directly.
  trained = {name: params["backbone"][name] for name in vgg16.param_shapes(LEVELS)}
  model = vgg16.VGG16(levels=LEVELS)
  for video in features.read_videos(out, "train", metadata):
    frames = video.features[features.FRAMES]
    maps = model.apply({"params": trained}, vgg16.preprocess(jnp.asarray(frames)))
    for level in LEVELS:
      expected = features.normalize(np.asarray(maps[level], np.float32),
                                    metadata["levels"][level])
      # The same float32 network in other batch sizes: apart by float32 summation
      # and float16 rounding at most (vgg_rounding).
      stats = metadata["levels"][level]
      stored = video.features[level]
      bound = stored_level_bound(level, stats["mean"], stats["scale"], expected, stored)
      difference = np.abs(expected.astype(np.float64) - stored.astype(np.float64))
      assert np.all(difference <= bound), level

  # GRU-RCN's frames mode over that directory starts from the fine-tuned VGG-16.
  state = assemble(tiny_config(out, data__input="frames",
                               model__num_classes=2)).init_state()
  _assert_tree_equal(jax.device_get(state.params["backbone"]), trained)


def test_the_stage1_config_fine_tunes_vgg16_on_frames():
  config = ucf101_vgg16_finetune.get_config()
  config_validation.validate_config(config)
  assert config.data.input == "frames" and config.model.backbone_trainable
  assert config.model.name == "vgg_frames" and tuple(config.model.levels) == ("fc7",)
  assert config.data.clip_length == 1 and config.model.backbone_dropout > 0


def test_backbone_dropout_acts_in_training_only():
  # Constant positive weights on bright frames: every unit of fc7 is positive, so
  # a zero in training is a dropped unit (fc1 alone is 103M parameters: filled,
  # not initialised).
  params = jax.tree.map(lambda s: jnp.full(s.shape, 1e-3, s.dtype),
                        vgg16.param_shapes(("fc7",)))
  x = vgg16.preprocess(jnp.full((2, 32, 32, 3), 255, jnp.uint8))
  model = vgg16.VGG16(levels=("fc7",), dropout_rate=0.5)
  apply = lambda train, seed=1: np.asarray(model.apply(
      {"params": params}, x, train=train, rngs={"dropout": jax.random.key(seed)})["fc7"])
  evaluated = apply(False)
  np.testing.assert_array_equal(evaluated, np.asarray(
      vgg16.VGG16(levels=("fc7",)).apply({"params": params}, x)["fc7"]))
  assert np.all(evaluated > 0)
  trained = apply(True)
  assert 0.4 < np.mean(trained == 0) < 0.6          # about half dropped
  assert not np.array_equal(trained, apply(True, seed=2))
