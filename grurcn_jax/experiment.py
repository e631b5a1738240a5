"""Assembly: config -> feature spec -> model -> train state -> restore, in one place.

Training, evaluation, the benchmark and the tests all build an experiment here,
so each step is written once:

    experiment = assemble(config)                 # checks the config, reads the spec
    state = experiment.init_state()               # or:
    state = experiment.restore(checkpoints)       # abstract target, sharded restore
    train_step = experiment.train_step()
"""

import dataclasses
import os
from typing import Any, Optional, Tuple

from flax import linen as nn
import jax
from jax.sharding import Mesh
import ml_collections

from grurcn_jax import checkpoints as checkpoints_lib
from grurcn_jax import config_validation, flops, sharding, steps
from grurcn_jax.data.prepare import FeatureSpec
from grurcn_jax.models import build as build_lib
from grurcn_jax.models import build_model
from grurcn_jax.models import frames as frames_lib
from grurcn_jax.models import vgg16

CHECKPOINT_SUBDIR = checkpoints_lib.SUBDIR


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything built from one config: the data it reads, the model, the mesh."""
  config: ml_collections.ConfigDict
  spec: FeatureSpec
  model: nn.Module
  mesh: Mesh

  def init_state(self) -> steps.TrainState:
    """The initial train state (seeded by config.seed), replicated over the mesh;
    in frames mode the backbone starts from the directory's VGG-16 weights."""
    given = None
    if self.spec.backbone is not None:
      given = {frames_lib.BACKBONE: vgg16.backbone_params(
          self.spec.backbone, self.config.model.levels)}
    return self._create_state(given)

  def abstract_state(self) -> Any:
    """The train state's shapes, dtypes and shardings: a restore target, no memory
    (and no backbone weights read: a restore replaces them)."""
    return checkpoints_lib.abstract_like(jax.eval_shape(self._create_state),
                                         self.state_sharding)

  def _create_state(self, given_params=None) -> steps.TrainState:
    frozen = ()
    if self.spec.backbone is not None and not self.config.model.backbone_trainable:
      frozen = (frames_lib.BACKBONE,)
    return steps.create_state(self.model, self.config, self.mesh,
                              self.spec.input_shapes, given_params=given_params,
                              frozen=frozen)

  @property
  def state_sharding(self):
    return sharding.replicated(self.mesh)

  def checkpoints(self, workdir: str, **options) -> checkpoints_lib.Checkpoints:
    return checkpoints_lib.Checkpoints(os.path.join(workdir, CHECKPOINT_SUBDIR),
                                       **options)

  def restore(self, checkpoints: checkpoints_lib.Checkpoints,
              step: Optional[int] = None) -> steps.TrainState:
    """The state of checkpoint `step` (default: newest), after checking that it was
    trained with this model config."""
    # The model, and whether it reads frames (a frames-mode state holds VGG-16).
    contract = {"model": self.config.model.to_dict(),
                "data": {"input": self.config.data.input}}
    return checkpoints.restore(self.abstract_state(), contract, step)

  def train_step_flops(self, batch_size: int) -> int:
    """FLOPs of a train step on `batch_size` clips, counted from the model's
    operations (`flops.py`): backward = 2x forward, except through a frozen
    backbone, which runs forward only."""
    clip = self.config.data.clip_length
    if self.spec.backbone is None or self.config.model.backbone_trainable:
      return flops.train_step_flops(self.model, self.spec.input_shapes, batch_size, clip)
    return (flops.forward_flops(self.model, self.spec.input_shapes, batch_size, clip)
            + 2 * flops.forward_flops(self.model.head, self.spec.level_shapes,
                                      batch_size, clip))

  def train_step(self):
    """The jit-compiled, sharded train step: (state, global batch) -> (state, metrics)."""
    return steps.make_train_step(self.model, self.config, self.mesh, self.state_sharding,
                                 prepare_features=self.spec.dequantize)


def assemble(config: ml_collections.ConfigDict, *, spec: Optional[FeatureSpec] = None,
             mesh: Optional[Mesh] = None,
             splits: Optional[Tuple[str, ...]] = None) -> Experiment:
  """Checks `config` whole, then builds its parts. `spec` defaults to the feature
  directory `config.data.dir`'s (read and checked against the model, with
  `splits`, default train and eval, required); `mesh` to every device."""
  config_validation.validate_config(config)
  model = build_model(config.model)  # model values are checked before data is read
  spec = spec or FeatureSpec.from_directory(config.data, config.model, splits)
  if spec.backbone is not None:  # frames mode: VGG-16 in the step, then the model
    model = frames_lib.FramesModel(
        head=model, levels=tuple(config.model.levels),
        means=tuple(spec.level_stats[l][0] for l in config.model.levels),
        scales=tuple(spec.level_stats[l][1] for l in config.model.levels),
        backbone_trainable=config.model.backbone_trainable,
        backbone_dropout=config.model.backbone_dropout,
        dtype=build_lib.DTYPES[config.model.dtype])
  return Experiment(config, spec, model, mesh or sharding.make_mesh())
