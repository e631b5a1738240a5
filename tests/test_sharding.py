"""Data parallelism that survives compilation, and device prefetch.

The train step is compiled on the 8 simulated devices with the batch sharded over
`data`; the per-device program must hold only its own clips: no all-gather of
activations, no convolution over more frames than the device's own.
"""

import itertools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from configs import default
from grurcn_jax import hlo, sharding
from grurcn_jax.data.prepare import FeatureSpec
from grurcn_jax.experiment import assemble

# What real runs compile, XLA's optimisations included.
pytestmark = pytest.mark.optimized

GLOBAL_BATCH, CLIP_LENGTH = 16, 3   # 2 clips, 6 frames per device
# Sizes chosen so that no other dimension of the program equals these two.
GLOBAL_SIZES = {GLOBAL_BATCH, GLOBAL_BATCH * CLIP_LENGTH}


def compiled_train_step(variant, recurrence, remat):
  config = default.get_config()
  # One level where the levels run side by side (half the compilation); stacked
  # feeds pool3's states into pool4's gates, so it takes both.
  config.model.levels, config.model.hidden = (
      (("pool3", "pool4"), (6, 5)) if variant == "stacked" else (("pool3",), (6,)))
  config.model.num_classes = 7
  config.model.variant, config.model.recurrence = variant, recurrence
  config.model.remat = remat
  config.data.clip_length = CLIP_LENGTH
  experiment = assemble(config, spec=FeatureSpec.at_image_size(config.model, 32))
  shapes = experiment.spec.level_shapes
  batch = sharding.batch_sharding(experiment.mesh)
  clips = {"features": {l: jax.ShapeDtypeStruct((GLOBAL_BATCH, CLIP_LENGTH, *s),
                                                jnp.float16, sharding=batch)
                        for l, s in shapes.items()},
           "label": jax.ShapeDtypeStruct((GLOBAL_BATCH,), jnp.int32, sharding=batch)}
  return experiment.train_step().lower(experiment.abstract_state(),
                                       clips).compile().as_text()


def global_sized_dimensions(program):
  """Dimensions of convolutions and all-gathers that only the global batch has."""
  found = [dims for shapes in hlo.convolution_shapes(program) for dims in shapes
           if GLOBAL_SIZES & set(dims)]
  found += [i.shapes for i in hlo.all_gathers(program)]
  return found


@pytest.mark.parametrize("recurrence,remat",
                         [("fused", False), ("fused", True), ("scan", False)])
@pytest.mark.parametrize("variant", ["uni", "bi", "stacked"])
def test_every_device_computes_only_its_own_clips(variant, recurrence, remat):
  program = compiled_train_step(variant, recurrence, remat)
  assert hlo.convolution_shapes(program), "no convolutions found: parser out of date?"
  assert global_sized_dimensions(program) == []
  # The local input convolutions are there: each device's 6 frames of pool3
  # (4x4x256) at once, or with remat its 2 clips' frame per step.
  local = 2 if (recurrence, remat) == ("fused", True) else 2 * CLIP_LENGTH
  assert any(shapes[0] == (local, 4, 4, 256)
             for shapes in hlo.convolution_shapes(program))
  # Gradients are summed over devices: parameter-sized all-reduces only.
  assert 0 < hlo.collective_bytes(program)["all-reduce"] < 1_000_000


def test_time_major_merge_is_caught():
  """The check above fails on the layout that lost data parallelism: time folded
  into the batch time-major puts the sharded axis inside."""
  mesh = sharding.make_mesh()
  clips = NamedSharding(mesh, P(sharding.DATA_AXIS))
  x = jax.ShapeDtypeStruct((GLOBAL_BATCH, CLIP_LENGTH, 4, 4, 8), jnp.float32,
                           sharding=clips)
  kernel = jnp.ones((3, 3, 8, 8))

  def time_major_conv(x):
    frames = jnp.swapaxes(x, 0, 1).reshape((-1, 4, 4, 8))
    return jax.lax.conv_general_dilated(frames, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  program = jax.jit(time_major_conv).lower(x).compile().as_text()
  assert global_sized_dimensions(program)


def test_prefetch_to_device_yields_global_batches_in_order_ahead_of_use():
  mesh = sharding.make_mesh()
  pulled = []

  def host_batches():
    for i in itertools.count():
      pulled.append(i)
      yield {"x": np.full((8, 3), i, np.float32), "label": np.arange(8) + i}

  batches = sharding.prefetch_to_device(host_batches(), mesh, size=2)
  first = next(batches)
  assert pulled == [0, 1]                      # the next one is already on its way
  assert first["x"].sharding == sharding.batch_sharding(mesh)
  np.testing.assert_array_equal(first["x"], np.zeros((8, 3)))
  second = next(batches)
  assert pulled == [0, 1, 2]
  np.testing.assert_array_equal(second["label"], np.arange(8) + 1)

  # An iterator that restarts when iter() is called on it again (as the
  # pipeline's Batches does) is read on, not restarted.
  class Restarting:
    def __iter__(self):
      self.position = 0
      return self

    def __next__(self):
      self.position += 1
      if self.position > 4:
        raise StopIteration
      return {"x": np.full((8,), self.position, np.float32)}

  for size in (0, 2):
    got = [int(b["x"][0]) for b in sharding.prefetch_to_device(Restarting(), mesh, size)]
    assert got == [1, 2, 3, 4], (size, got)

  # size=0 copies on demand; a finite stream ends.
  plain = list(sharding.prefetch_to_device(
      ({"x": np.full((8,), i, np.float32)} for i in range(3)), mesh, size=0))
  assert [int(b["x"][0]) for b in plain] == [0, 1, 2]
  ahead = list(sharding.prefetch_to_device(
      ({"x": np.full((8,), i, np.float32)} for i in range(3)), mesh, size=5))
  assert [int(b["x"][0]) for b in ahead] == [0, 1, 2]


def test_hosts_that_left_out_other_records_are_an_error(monkeypatch):
  # Two hosts, one of which found a shard unreadable (another copy of the files):
  # they would read other videos and split the work differently.
  from jax.experimental import multihost_utils
  from grurcn_jax.data.sampling import InputStats
  from grurcn_jax.errors import FeatureFormatError
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  other = np.array([0, 0], np.int64)   # the other host: nothing left out
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda mine: np.stack([mine, other]))
  sharding.check_hosts_read_alike("test", InputStats())
  with pytest.raises(FeatureFormatError, match=r"split 'test' \(records left out per "
                                               r"host: \[3, 0\]\)"):
    sharding.check_hosts_read_alike(
        "test", InputStats(skipped_records=3, bad_files=["/data/test-00001.fc7"]))
  # The same count, other files: still not the same videos.
  other = np.array([3, 0], np.int64)
  with pytest.raises(FeatureFormatError):
    sharding.check_hosts_read_alike(
        "test", InputStats(skipped_records=3, bad_files=["/data/test-00001.fc7"]))


def test_asynchronous_collectives_count_the_data_they_produce():
  # GPU/TPU programs split a collective into -start (a tuple of its operand and
  # result) and -done (its result): 8 x 1024 float32 gathered is 32 KiB, not
  # 36 KiB; a permute's -start also holds context words.
  program = """
  %ag-start = (f32[1,1024]{1,0}, f32[8,1024]{1,0}) all-gather-start(f32[1,1024]{1,0} %p), dimensions={0}
  %ag-done = f32[8,1024]{1,0} all-gather-done((f32[1,1024]{1,0}, f32[8,1024]{1,0}) %ag-start)
  %cp-start = (f32[256]{0}, f32[256]{0}, u32[], u32[]) collective-permute-start(f32[256]{0} %q), source_target_pairs={{0,1}}
  %cp-done = f32[256]{0} collective-permute-done((f32[256]{0}, f32[256]{0}, u32[], u32[]) %cp-start)
  %ar = f32[64]{0} all-reduce(f32[64]{0} %r), to_apply=%sum
  """
  counted = hlo.collective_bytes(program)
  assert counted["all-gather"] == 8 * 1024 * 4
  assert counted["collective-permute"] == 256 * 4
  assert counted["all-reduce"] == 64 * 4
  assert [i.op for i in hlo.all_gathers(program)] == ["all-gather-done"]


@pytest.mark.parametrize("trainable", [False, True])
def test_frames_mode_every_device_runs_vgg16_on_its_own_frames(tiny_demo_dir, trainable):
  """Frames mode puts VGG-16 in the step: its convolutions must see each device's
  frames only, as the model's do; a frozen backbone sums no gradients."""
  from grurcn_jax.data import pipeline
  from tests.training_setup import tiny_config
  batch_size, clip_length = 40, 3   # 5 clips, 15 frames of 32 px per device
  config = tiny_config(tiny_demo_dir, data__input="frames", data__clip_length=clip_length,
                       model__backbone_trainable=trainable, batch_size=batch_size)
  experiment = assemble(config)
  host = next(pipeline.train_batches(config.data, batch_size=8, levels=("frames",)))
  batch = sharding.batch_sharding(experiment.mesh)
  clips = jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype,
                                                      sharding=batch), host)
  assert clips["features"]["frames"].shape == (batch_size, clip_length, 32, 32, 3)
  program = experiment.train_step().lower(experiment.abstract_state(),
                                          clips).compile().as_text()
  convolutions = hlo.convolution_shapes(program)
  global_sizes = {batch_size, batch_size * clip_length}
  assert [dims for shapes in convolutions for dims in shapes
          if global_sizes & set(dims)] == []
  assert [i.shapes for i in hlo.all_gathers(program)] == []
  assert any(shapes[0] == (15, 32, 32, 3) for shapes in convolutions)   # conv1_1
  # VGG-16 up to pool3 has 1.7 M parameters: 6.9 MB of float32 gradients.
  summed = hlo.collective_bytes(program)["all-reduce"]
  assert (summed > 6_000_000) if trainable else (0 < summed < 1_000_000)
