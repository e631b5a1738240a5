"""Training: `train_and_evaluate(config, workdir)`.

One jit-compiled step with explicit shardings over a data-parallel mesh, the train
state donated, dropout RNG `fold_in(rng, step)`. Resumes from the newest checkpoint
in `workdir` without being asked; the input stream restarts at the same step, so a
resumed run ends exactly where an uninterrupted one does. SIGTERM (preemption) saves
a checkpoint and stops. A non-finite loss or gradient is never applied: training
stops with an error and the last good checkpoint stays as it was.
"""

import os
import signal
import threading
import time
from typing import Any, Dict, Optional

from absl import logging
from clu import metric_writers, periodic_actions
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from grurcn_jax import checkpoints as checkpoints_lib
from grurcn_jax import config_validation, evaluate, flops, sharding
from grurcn_jax.data import demo as demo_lib
from grurcn_jax.data import features as features_lib
from grurcn_jax.data import pipeline
from grurcn_jax.errors import ConfigError, TrainingError
from grurcn_jax.models import build_model, classification_loss

TrainState = train_state.TrainState
# Fault injection for the resume test: SIGKILL this process right after the
# checkpoint of this step is durable, as a preemption without warning would.
_KILL_AFTER_CHECKPOINT = "GRURCN_KILL_AFTER_CHECKPOINT"


def learning_rate_schedule(config) -> optax.Schedule:
  lr, steps, warmup = config.learning_rate, config.num_train_steps, config.warmup_steps
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1))
  if config.schedule == "step":
    boundaries = {int(f * steps): config.step_decay for f in config.step_boundaries}
    decay = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    decay = optax.constant_schedule(lr)
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def create_optimizer(config) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(config)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.optimizer == "adam":
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
  else:
    if config.weight_decay:
      parts.append(optax.add_decayed_weights(config.weight_decay))
    parts.append(optax.sgd(schedule, momentum=config.momentum, nesterov=True))
  return optax.chain(*parts)


def make_train_step(model, config, mesh, state_sharding):
  loss_kind = config.model.loss
  schedule = learning_rate_schedule(config)
  base_rng = jax.random.key(config.seed)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(base_rng, state.step)

    def loss_fn(params):
      out = model.apply({"params": params}, batch["features"], train=True,
                        rngs={"dropout": rng})
      loss = jnp.mean(classification_loss(out, batch["label"], loss_kind))
      accuracy = jnp.mean(jnp.argmax(out["logits"], -1) == batch["label"])
      return loss, accuracy

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = state.apply_gradients(grads=grads)
    # A non-finite step is never applied: the state stays the last good one.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm,
               "param_norm": optax.tree.norm(new_state.params),
               "learning_rate": schedule(state.step), "finite": finite}
    return new_state, metrics

  return jax.jit(train_step,
                 in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=(0,))


def prepare_data(config) -> Dict:
  """Builds the demo dataset when the config asks for it and it is not there yet;
  returns the feature metadata, checked against the model config."""
  data = config.data
  if data.get("demo") and not os.path.exists(
      os.path.join(data.dir, features_lib.METADATA_FILE)):
    if jax.process_index() == 0:
      print(f"Building the demo dataset in {data.dir} (once; cached) ...", flush=True)
      demo_lib.build(data.dir, demo_lib.DemoSpec(**data.demo.to_dict()))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("demo dataset built")
  metadata = features_lib.read_metadata(data.dir)
  missing = [l for l in config.model.levels if l not in metadata["levels"]]
  if missing:
    raise ConfigError(f"model.levels names {', '.join(missing)}, which {data.dir} does "
                      f"not hold; it has {', '.join(metadata['levels'])}")
  if config.model.num_classes != len(metadata["class_names"]):
    raise ConfigError(f"model.num_classes={config.model.num_classes} but {data.dir} has "
                      f"{len(metadata['class_names'])} classes")
  for split in (data.train_split, data.eval_split):
    features_lib.split_shards(metadata, split)
  return metadata


def create_state(model, config, mesh, metadata) -> TrainState:
  level_shapes = {l: metadata["levels"][l]["shape"] for l in config.model.levels}
  dummy = {l: jnp.zeros((1, config.data.clip_length, *s), jnp.float32)
           for l, s in level_shapes.items()}
  tx = create_optimizer(config)

  def init():
    params = model.init(jax.random.key(config.seed), dummy)["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  return jax.jit(init, out_shardings=sharding.replicated(mesh))()


class _Preemption:
  """Turns SIGTERM into a flag the loop checks at step boundaries."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # signals need it
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates.

  Returns the final evaluation metrics.
  """
  config_validation.validate_config(config)
  mesh = sharding.make_mesh()
  host_batch = sharding.host_batch_size(config.batch_size)
  sharding.host_batch_size(config.eval_batch_size, "eval_batch_size")
  metadata = prepare_data(config)
  model = build_model(config.model)
  is_chief = jax.process_index() == 0

  state = create_state(model, config, mesh, metadata)
  state_sharding = sharding.replicated(mesh)
  checkpoints = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                            max_to_keep=config.keep_checkpoints)
  if checkpoints.latest_step() is not None:
    state = checkpoints.restore(checkpoints_lib.abstract_like(state, state_sharding),
                                config.model.to_dict())
    logging.info("Resumed from the checkpoint at step %d", int(state.step))
  start_step = int(state.step)

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config_validation.flatten(config).items()})
  level_shapes = {l: metadata["levels"][l]["shape"] for l in config.model.levels}
  step_flops = flops.train_step_flops(config.model, level_shapes, config.batch_size,
                                      config.data.clip_length)
  train_step = make_train_step(model, config, mesh, state_sharding)
  eval_step = evaluate.make_eval_step(model, config.model.loss, mesh)
  batches = iter(pipeline.train_batches(
      config.data.dir, split=config.data.train_split, batch_size=host_batch,
      clip_length=config.data.clip_length, frame_stride=config.data.frame_stride,
      seed=config.seed, levels=config.model.levels,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_streams=config.data.num_streams or None, start_step=start_step,
      shuffle_buffer=config.data.shuffle_buffer,
      skip_bad_records=config.data.skip_bad_records))
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer)

  eval_metrics: Optional[Dict] = None
  window, window_start = [], time.time()
  run_start = time.time()
  step = start_step
  if is_chief:
    print(f"Training {config.model.name}/{config.model.variant} from step {start_step} "
          f"to {config.num_train_steps} on {jax.device_count()} device(s); "
          f"workdir {workdir}", flush=True)
  with _Preemption() as preemption, metric_writers.ensure_flushes(writer):
    while step < config.num_train_steps:
      state, metrics = train_step(state, sharding.global_batch(mesh, next(batches)))
      step += 1
      report_progress(step)
      window.append(metrics)
      # Every periodic action also happens at the last step.
      due = lambda every: step % every == 0 or step == config.num_train_steps
      # Read the flag once: a SIGTERM arriving later in this step must not stop the
      # run without the save that the stop promises (it is handled next step).
      preempted = preemption.requested
      log, save, run_eval = (due(config.log_every_steps),
                             due(config.checkpoint_every_steps) or preempted,
                             due(config.eval_every_steps))
      if not (log or save or run_eval):
        continue
      window = jax.device_get(window)
      bad = [i for i, m in enumerate(window) if not m["finite"]]
      if bad:
        first = step - len(window) + bad[0] + 1
        checkpoints.wait()
        raise TrainingError(
            f"non-finite loss or gradient at step {first} (loss "
            f"{window[bad[0]]['loss']}, gradient norm {window[bad[0]]['grad_norm']}); "
            f"training stopped. The newest checkpoint (step {checkpoints.latest_step()}) "
            f"is intact; lower learning_rate or set grad_clip_norm and rerun")
      if log:
        elapsed = time.time() - window_start
        steps_per_s = len(window) / max(elapsed, 1e-9)
        scalars = {k: float(np.mean([m[k] for m in window]))
                   for k in ("loss", "accuracy", "grad_norm", "param_norm", "learning_rate")}
        scalars.update(steps_per_sec=steps_per_s,
                       clips_per_sec=steps_per_s * config.batch_size,
                       analytic_flops_per_sec=steps_per_s * step_flops)
        writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        if is_chief:
          eta = ((config.num_train_steps - step) * (time.time() - run_start)
                 / max(step - start_step, 1))
          print(f"step {step}/{config.num_train_steps}  loss {scalars['loss']:.4f}  "
                f"acc {scalars['accuracy']:.3f}  {steps_per_s:.2f} steps/s  "
                f"{scalars['clips_per_sec']:.1f} clips/s  ETA {eta / 60:.1f} min", flush=True)
      window = []
      if save:
        checkpoints.save(step, state, config.to_dict())
        if os.environ.get(_KILL_AFTER_CHECKPOINT) == str(step):
          checkpoints.wait()
          os.kill(os.getpid(), signal.SIGKILL)
      if preempted:
        checkpoints.close()
        raise TrainingError(f"stopped by SIGTERM at step {step}; the checkpoint is "
                            f"saved: run the same command again to resume")
      if run_eval:
        eval_metrics = evaluate.evaluate(model, state.params, config, mesh, metadata,
                                         step, workdir, eval_step)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()
                                    if isinstance(v, float)})
        if is_chief:
          print(f"eval at step {step}: video accuracy {eval_metrics['video_accuracy']:.3f}, "
                f"clip accuracy {eval_metrics['clip_accuracy']:.3f}, loss "
                f"{eval_metrics['loss']:.4f}", flush=True)
      window_start = time.time()  # steps/s counts training, not saving or evaluating
  if eval_metrics is None:  # resumed at the end: evaluate what is there
    eval_metrics = evaluate.evaluate(model, state.params, config, mesh, metadata, step,
                                     workdir, eval_step)
  checkpoints.close()
  return eval_metrics
