"""Frames mode: VGG-16 in the step gives the model what features mode gives it;
a frozen backbone stays as the directory's, a trainable one learns."""

import jax
import numpy as np
import pytest
from flax import linen as nn

from grurcn_jax import sharding
from grurcn_jax.data import features, pipeline
from grurcn_jax.data.prepare import FeatureSpec
from grurcn_jax.errors import ConfigError
from grurcn_jax.experiment import assemble
from grurcn_jax.models import frames as frames_lib
from grurcn_jax.models import vgg16
from tests.data.fake import write_fake_features
from tests.models.vgg_rounding import stored_level_bound
from tests.training_setup import tiny_config


class Inputs(nn.Module):
  """A head that returns what it is given."""

  @nn.compact
  def __call__(self, features, *, train=False):
    del train
    return features


def test_frames_mode_features_are_the_stored_features(tiny_demo_dir):
  config = tiny_config(tiny_demo_dir, data__input="frames")
  spec = FeatureSpec.from_directory(config.data, config.model)
  assert spec.input_shapes == {"frames": (32, 32, 3)}
  levels = tuple(config.model.levels)
  model = frames_lib.FramesModel(
      head=Inputs(), levels=levels,
      means=tuple(spec.level_stats[l][0] for l in levels),
      scales=tuple(spec.level_stats[l][1] for l in levels))
  data = config.data
  batch = next(pipeline.eval_batches(data, batch_size=8, levels=levels + ("frames",)))
  assert batch["features"]["frames"].dtype == np.uint8
  params = {"backbone": vgg16.backbone_params(spec.backbone, levels)}
  computed = model.apply({"params": params}, {"frames": batch["features"]["frames"]})
  for level in levels:
    stored = batch["features"][level]
    got = np.asarray(computed[level])
    assert got.dtype == np.float16 and got.shape == stored.shape
    # The same float32 VGG-16 on the same frames, in other batch sizes: apart by
    # float32 summation and float16 rounding at most (vgg_rounding).
    bound = stored_level_bound(level, *spec.level_stats[level], got, stored)
    difference = np.abs(got.astype(np.float64) - stored.astype(np.float64))
    assert np.all(difference <= bound), level


@pytest.mark.parametrize("trainable", [False, True])
def test_a_frozen_backbone_stays_and_a_trainable_one_learns(tiny_demo_dir, trainable):
  config = tiny_config(tiny_demo_dir, data__input="frames",
                       model__backbone_trainable=trainable)
  experiment = assemble(config)
  state = experiment.init_state()
  before = jax.device_get(state.params)
  loaded = vgg16.backbone_params(experiment.spec.backbone, config.model.levels)
  jax.tree.map(np.testing.assert_array_equal, before["backbone"], loaded)
  host = next(pipeline.train_batches(config.data, batch_size=8, levels=("frames",)))
  step = experiment.train_step()
  for _ in range(2):
    state, metrics = step(state, sharding.global_batch(experiment.mesh, host))
  assert bool(metrics["finite"])
  after = jax.device_get(state.params)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                       before["backbone"], after["backbone"]))
  assert any(moved) == trainable and (all(moved) or not trainable)
  head = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                      before["head"], after["head"]))
  assert any(head)


def test_frames_mode_needs_stored_frames(tmp_path):
  write_fake_features(tmp_path)
  config = tiny_config(str(tmp_path), data__input="frames")
  config.model.levels, config.model.hidden, config.model.num_classes = (
      ("pool4",), (2,), 3)
  with pytest.raises(ConfigError, match="holds no frames: extract with --store_frames"):
    FeatureSpec.from_directory(config.data, config.model)
  metadata = features.read_metadata(str(tmp_path))
  assert features.FRAMES not in metadata["levels"]


def test_weights_frames_mode_cannot_load_are_said_to_be_the_directorys(tiny_demo_dir,
                                                                       tmp_path):
  # The backbone starts from the weights the directory records: a file of another
  # machine is named with the directory, not as a flag of this run.
  import shutil
  copy = str(tmp_path / "frames")
  shutil.copytree(tiny_demo_dir, copy)
  metadata = features.read_metadata(copy)
  metadata["backbone"]["weights"] = "/elsewhere/vgg16.h5"
  features.write_metadata(copy, metadata)
  experiment = assemble(tiny_config(copy, data__input="frames"))
  with pytest.raises(ConfigError, match=rf"frames mode starts VGG-16 from the weights "
                                        rf"{copy} was extracted with .*'/elsewhere/"
                                        rf"vgg16.h5'.*no such file"):
    experiment.init_state()


def test_a_frozen_backbone_counts_forward_only(tiny_demo_dir):
  """Train-step FLOPs in frames mode: the head forward and backward, VGG-16's
  convolutions (32 px frames up to pool3, counted here by hand) forward only when
  frozen."""
  vgg_per_frame = 2 * 9 * (32 * 32 * (3 * 64 + 64 * 64)
                           + 16 * 16 * (64 * 128 + 128 * 128)
                           + 8 * 8 * (128 * 256 + 2 * 256 * 256))
  frozen = assemble(tiny_config(tiny_demo_dir, data__input="frames"))
  head = assemble(tiny_config(tiny_demo_dir))
  frames = 8 * 4
  assert frozen.train_step_flops(8) == (head.train_step_flops(8)
                                        + frames * vgg_per_frame)
  # Trained: VGG-16 forward and backward, but no gradient for the frames (its first
  # convolution 2x), and the head's input convolutions now pass one back (3x, not
  # the 2x of stored features).
  trained = assemble(tiny_config(tiny_demo_dir, data__input="frames",
                                 model__backbone_trainable=True))
  conv1_1 = 2 * 9 * 32 * 32 * 3 * 64
  config = trained.config.model
  input_convs = sum(2 * h * w * 9 * c * 3 * f for (h, w, c), f in zip(
      (head.spec.level_shapes[l] for l in config.levels), config.hidden))
  assert trained.train_step_flops(8) == (head.train_step_flops(8)
                                         + frames * input_convs
                                         + frames * (3 * vgg_per_frame - conv1_1))
