"""Training: `train_and_evaluate(config, workdir)`.

One jit-compiled step with explicit shardings over a data-parallel mesh, the train
state donated, dropout RNG `fold_in(rng, step)`. Resumes from the newest checkpoint
in `workdir` without being asked; the input stream restarts at the same step, so a
resumed run ends exactly where an uninterrupted one does. SIGTERM (preemption) to
any host makes every host save a checkpoint at the same step and stop. A non-finite loss or gradient is never applied: training
stops with an error and the last good checkpoint stays as it was.
"""

import os
import time
from typing import Any, Dict, Optional

from absl import logging
from clu import metric_writers, periodic_actions
import jax
import ml_collections
import numpy as np

from grurcn_jax import checkpoints as checkpoints_lib
from grurcn_jax import config_validation, evaluate, flops, sharding, steps
from grurcn_jax.data import demo as demo_lib
from grurcn_jax.data import features as features_lib
from grurcn_jax.data import pipeline
from grurcn_jax.errors import ConfigError, TrainingError
from grurcn_jax.models import build_model


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

  state = steps.create_state(model, config, mesh, steps.level_shapes(config, metadata))
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
  step_flops = flops.train_step_flops(config.model, steps.level_shapes(config, metadata),
                                      config.batch_size,
                                      config.data.clip_length)
  train_step = steps.make_train_step(model, config, mesh, state_sharding)
  eval_step = evaluate.make_eval_step(model, config.model.loss, mesh)
  host_batches = pipeline.train_batches(
      config.data.dir, split=config.data.train_split, batch_size=host_batch,
      clip_length=config.data.clip_length, frame_stride=config.data.frame_stride,
      seed=config.seed, levels=config.model.levels,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_streams=config.data.num_streams or None, start_step=start_step,
      shuffle_buffer=config.data.shuffle_buffer,
      skip_bad_records=config.data.skip_bad_records)
  # The next batches travel to the devices while a step runs.
  batches = sharding.prefetch_to_device(host_batches, mesh, config.data.device_prefetch)
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
  with checkpoints_lib.Preemption() as preemption, \
      metric_writers.ensure_flushes(writer):
    while step < config.num_train_steps:
      state, metrics = train_step(state, next(batches))
      step += 1
      report_progress(step)
      window.append(metrics)
      # Every periodic action also happens at the last step.
      due = lambda every: step % every == 0 or step == config.num_train_steps
      # Asked once per step: every host gets the same answer at the same step, and
      # a SIGTERM arriving later in this step is handled at the next one.
      preempted = preemption.reached(step)
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
