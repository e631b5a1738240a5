"""Assembly: config -> feature spec -> model -> train state -> restore, in one place.

Training, evaluation, the benchmark and the tests all build an experiment here,
so each step is written once:

    experiment = assemble(config)                 # checks the config, reads the spec
    state = experiment.init_state()               # or:
    state = experiment.restore(checkpoints)       # abstract target, sharded restore
    train_step = experiment.train_step()
    batches = experiment.train_batches(host_batch, start_step)

`config.task` picks the experiment: `Experiment` (classification) or
`CaptioningExperiment` (captioning); each brings its model, step and batches, so
the training loop has no task branches.
"""

import dataclasses
import os
from typing import Any, Optional, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections

from grurcn_jax import checkpoints as checkpoints_lib
from grurcn_jax import config_validation, flops, sharding, steps
from grurcn_jax.data.prepare import FeatureSpec
from grurcn_jax.errors import ConfigError
from grurcn_jax.models import build as build_lib
from grurcn_jax.models import build_model
from grurcn_jax.models import frames as frames_lib
from grurcn_jax.models import vgg16

CHECKPOINT_SUBDIR = checkpoints_lib.SUBDIR
# Model fields that change how the step computes, not the state it holds nor what
# the model computes: a checkpoint restores whatever they are set to.
COMPUTE_ONLY_MODEL_FIELDS = ("recurrence", "remat", "remat_levels", "unroll",
                             "kernel_gradient", "dtype")
# Model fields of how the parameters were trained: the parameters themselves are
# the same, so an evaluation (parameters alone) takes any value of them.
TRAINING_ONLY_MODEL_FIELDS = ("dropout_rate", "backbone_dropout", "loss",
                              "backbone_trainable")


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
      try:
        given = {frames_lib.BACKBONE: vgg16.backbone_params(
            self.spec.backbone, self.config.model.levels)}
      except ConfigError as e:
        raise ConfigError(
            f"frames mode starts VGG-16 from the weights {self.config.data.dir} was "
            f"extracted with (its metadata.json: backbone weights "
            f"{self.spec.backbone.get('weights')!r}), and cannot load them here: "
            f"{e}") from None
    return self._create_state(given)

  def abstract_state(self) -> Any:
    """The train state's shapes, dtypes and shardings: a restore target, no memory
    (and no backbone weights read: a restore replaces them)."""
    return checkpoints_lib.abstract_like(jax.eval_shape(self._create_state),
                                         self.state_sharding)

  def _create_state(self, given_params=None) -> steps.TrainState:
    return steps.create_state(self.model, self.config, self.mesh,
                              self.spec.input_shapes, given_params=given_params,
                              frozen=self.frozen())

  def frozen(self) -> Tuple[str, ...]:
    """The top-level parameter keys the optimiser leaves alone (no gradient)."""
    if self.spec.backbone is not None and not self.config.model.backbone_trainable:
      return (frames_lib.BACKBONE,)
    return ()

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
    return checkpoints.restore(self.abstract_state(), self._contract(), step,
                               config=self.config.to_dict(),
                               state_fields=steps.OPTIMIZER_STATE_FIELDS)

  def restore_params(self, checkpoints: checkpoints_lib.Checkpoints,
                     step: Optional[int] = None):
    """(parameters, step) of checkpoint `step` (default: newest), checked as
    `restore` checks it; the optimiser state is not read (evaluation)."""
    contract = self._contract()
    for field in TRAINING_ONLY_MODEL_FIELDS:
      del contract["model"][field]
    return checkpoints.restore_params(self.abstract_state().params, contract, step)

  def _contract(self):
    # The task, the model, and whether it reads frames (a frames-mode state holds
    # VGG-16). Not the model fields that only say how to compute (a run that ran
    # out of memory resumes with remat, a bfloat16 checkpoint evaluates in float32).
    model = {k: v for k, v in self.config.model.to_dict().items()
             if k not in COMPUTE_ONLY_MODEL_FIELDS}
    return {"task": self.config.task, "model": model,
            "data": {"input": self.config.data.input}}

  def train_step_flops(self, batch_size: int) -> int:
    """FLOPs of a train step on `batch_size` clips, counted from the model's
    operations (`flops.train_step_flops`: no gradient for the data, and a frozen
    backbone runs forward only)."""
    return flops.train_step_flops(self.model, self.spec.input_shapes, batch_size,
                                  self.config.data.clip_length, frozen=self.frozen())

  def train_step(self):
    """The jit-compiled, sharded train step: (state, global batch) -> (state, metrics)."""
    return steps.make_train_step(self.model, self.config, self.mesh, self.state_sharding,
                                 prepare_features=self.spec.dequantize,
                                 frozen=self.frozen())

  def train_batches(self, host_batch: int, start_step: int):
    """This host's endless train batches (`data.loaders`), from `start_step` on."""
    from grurcn_jax.data import loaders
    inputs = tuple(self.spec.input_shapes)
    return loaders.for_config(self.config.data, inputs).train_batches(
        self.config.data, batch_size=host_batch, seed=self.config.seed,
        levels=inputs, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count())


@dataclasses.dataclass(frozen=True)
class CaptioningExperiment(Experiment):
  """The paper's second task: segment encoder + attention LSTM decoder
  (`models.captioning`), trained on one reference caption per video and step."""
  vocabulary: Any = None
  references: Any = None      # video id -> reference captions

  def _contract(self):
    # The decoder's shape and what the encoder reads, too.
    caption = self.config.caption
    return dict(super()._contract(), caption={
        k: caption[k] for k in ("encoder", "segments", "segment_positions",
                                "spatial_attention", "embed_dim", "hidden",
                                "attention_dim")})

  def _example_inputs(self, batch: int = 1):
    caption = self.config.caption
    features = {l: jnp.zeros((batch, caption.segments, self.config.data.clip_length, *s),
                             jnp.float32) for l, s in self.spec.input_shapes.items()}
    return features, jnp.zeros((batch, caption.max_length), jnp.int32)

  def init_state(self) -> steps.TrainState:
    """The initial state; with caption.encoder_checkpoint the encoder's GRU-RCN
    starts from that action-recognition run's (params `encoder` there)."""
    given = None
    if self.config.caption.encoder_checkpoint:
      given = {"encoder": {"encoder": self._checkpoint_encoder()}}
    return self._create_state(given)

  def _checkpoint_encoder(self):
    if self.config.caption.encoder != "grurcn":
      raise ConfigError("caption.encoder_checkpoint starts a GRU-RCN encoder; "
                        f"caption.encoder={self.config.caption.encoder!r} has none")
    directory, step = checkpoints_lib.location(self.config.caption.encoder_checkpoint,
                                               "caption.encoder_checkpoint")
    params, trained_config, _ = checkpoints_lib.read_params(directory, "encoder", step)
    expected = jax.eval_shape(self._create_state).params["encoder"]["encoder"]
    got = jax.tree.map(lambda a: tuple(a.shape), params)
    want = jax.tree.map(lambda a: tuple(a.shape), dict(expected))
    if got != want:
      raise ConfigError(
          f"the GRU-RCN of {directory} does not fit this encoder (its model: levels "
          f"{trained_config.get('model.levels')}, hidden {trained_config.get('model.hidden')}"
          f", variant {trained_config.get('model.variant')}); set model.levels, "
          f"model.hidden and model.variant as it was trained")
    return params

  def _create_state(self, given_params=None) -> steps.TrainState:
    return steps.create_state(self.model, self.config, self.mesh,
                              self.spec.input_shapes, given_params=given_params,
                              frozen=self.frozen(), example_inputs=self._example_inputs())

  def frozen(self) -> Tuple[str, ...]:
    return ("encoder",) if self.config.caption.freeze_encoder else ()

  def train_step_flops(self, batch_size: int) -> int:
    """FLOPs of a train step (`flops.step_flops`): no gradient for the data, nor
    for a frozen encoder's parameters."""
    variables = jax.eval_shape(lambda: self.model.init(jax.random.key(0),
                                                       *self._example_inputs()))
    return flops.step_flops(self.model.apply, variables,
                            *self._example_inputs(batch_size), frozen=self.frozen())

  def train_step(self):
    return steps.make_caption_train_step(self.model, self.config, self.mesh,
                                         self.state_sharding,
                                         prepare_features=self.spec.dequantize,
                                         frozen=self.frozen())

  def train_batches(self, host_batch: int, start_step: int):
    from grurcn_jax.data import loaders
    caption = self.config.caption
    inputs = tuple(self.spec.input_shapes)
    return loaders.for_config(self.config.data, inputs).caption_train_batches(
        self.config.data, segments=caption.segments, references=self.references,
        vocabulary=self.vocabulary, max_length=caption.max_length,
        batch_size=host_batch, seed=self.config.seed,
        levels=inputs, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count())


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks `config` whole (names, values, the model's fields) before any work: what
  needs the data (its levels, classes) is checked by `assemble`."""
  config_validation.validate_config(config)
  build_lib.validate_model_config(config.model)


def assemble(config: ml_collections.ConfigDict, *, spec: Optional[FeatureSpec] = None,
             mesh: Optional[Mesh] = None,
             splits: Optional[Tuple[str, ...]] = None) -> Experiment:
  """Checks `config` whole, then builds its parts. `spec` defaults to the feature
  directory `config.data.dir`'s (read and checked against the model, with
  `splits`, default train and eval, required); `mesh` to every device."""
  validate(config)
  if config.task == "captioning":
    return _assemble_captioning(config, spec, mesh, splits)
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


def _assemble_captioning(config, spec, mesh, splits) -> CaptioningExperiment:
  from grurcn_jax.data import captions
  spec = spec or FeatureSpec.from_directory(config.data, config.model, splits,
                                            check_classes=False)
  references, vocabulary = captions.read_captions(config.data.dir)
  model = build_lib.build_captioning_model(config, vocabulary.size)
  return CaptioningExperiment(config, spec, model, mesh or sharding.make_mesh(),
                              vocabulary, references)
