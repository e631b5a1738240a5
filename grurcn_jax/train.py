"""Training: `train_and_evaluate(config, workdir)`.

One jit-compiled step with explicit shardings over a data-parallel mesh, the train
state donated, dropout RNG `fold_in(rng, step)`. Resumes from the newest checkpoint
in `workdir` without being asked; the input stream restarts at the same step, so a
resumed run ends exactly where an uninterrupted one does. SIGTERM (preemption) to
any host makes every host save a checkpoint at the same step and stop; in one
process a first Ctrl-C does the same (status 130), a second stops at once. A
non-finite loss or gradient is never applied: training stops with an error and the
last good checkpoint stays as it was. Progress goes to the log (absl, INFO).
"""

import collections
import time
from typing import Any, Dict, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from grurcn_jax import checkpoints as checkpoints_lib
from grurcn_jax import compile_cache, config_validation, evaluators
from grurcn_jax import experiment as experiment_lib
from grurcn_jax import sharding, writers
from grurcn_jax.errors import TrainingError


# Train steps the loop may have dispatched beyond the last one finished.
STEPS_AHEAD = 2


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates.

  Returns the final evaluation metrics.
  """
  experiment = experiment_lib.assemble(config)
  host_batch = sharding.host_batch_size(config.batch_size)
  is_chief = jax.process_index() == 0

  checkpoints = experiment.checkpoints(workdir, max_to_keep=config.keep_checkpoints)
  finished = _finished_evaluation(checkpoints, config, workdir)
  if finished is not None:
    checkpoints.close()
    logging.info("The run is finished and its last step (%d) evaluated with this "
                 "config: its metrics are in %s (--mode=eval evaluates again)",
                 config.num_train_steps, writers.METRICS_FILE)
    return finished
  evaluator = evaluators.for_experiment(experiment)
  if checkpoints.latest_step() is not None:
    state = experiment.restore(checkpoints)
    logging.info("Resumed from the checkpoint at step %d", int(state.step))
    _warn_if_not_exact(checkpoints.saved_config(int(state.step)), config)
  else:
    state = experiment.init_state()
  start_step = int(state.step)

  writer = writers.metric_writer(workdir, just_logging=not is_chief, start_step=start_step)
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config_validation.flatten(config).items()})
  step_flops = experiment.train_step_flops(config.batch_size)
  train_step = experiment.train_step()
  host_batches = experiment.train_batches(host_batch, start_step)
  sharding.check_hosts_read_alike(config.data.train_split, host_batches.stats)
  # The next batches travel to the devices while a step runs.
  batches = sharding.prefetch_to_device(host_batches, experiment.mesh,
                                        config.data.device_prefetch)
  report_progress = writers.report_progress(config.num_train_steps, writer)

  eval_metrics: Optional[Dict] = None
  if _evaluation_missed(start_step, config, workdir):
    # Stopped after saving an eval step but before its evaluation was written (a
    # SIGTERM there stops before evaluating; a kill may come during it): evaluate
    # it now, as the uninterrupted run did.
    logging.info("The evaluation of step %d was not written before the run stopped: "
                 "evaluating it now", start_step)
    eval_metrics = _evaluate_saved_step(evaluator, state, workdir, writer)
  # Metrics of the steps since the last log (host) and since the last check for
  # non-finite values (device); seconds spent training (not compiling the first
  # step, saving or evaluating) since the last log.
  window, pending = [], []
  train_seconds, segment_start = 0.0, None
  # Dispatch is asynchronous: unchecked, the loop ran ahead of the devices by as
  # many steps as the input delivered until the next log (16 on a 2-core CPU), each
  # queued step keeping its batch (0.9 GB of paper-shape features a batch of 64).
  # Waiting for the step STEPS_AHEAD back keeps that many queued behind it.
  in_flight = collections.deque()
  run_start = time.time()
  step = start_step
  if start_step < config.num_train_steps:
    logging.info("Training %s/%s from step %d to %d on %d device(s); workdir %s",
                 config.model.name, config.model.variant, start_step,
                 config.num_train_steps, jax.device_count(), workdir)
  else:   # it said "from step 400 to 5"
    logging.info("Nothing to train: the checkpoint's step %d is at or past "
                 "num_train_steps=%d; workdir %s", start_step, config.num_train_steps,
                 workdir)
  with checkpoints_lib.Preemption() as preemption, \
      writers.flushing(writer):
    while step < config.num_train_steps:
      state, metrics = train_step(state, next(batches))
      in_flight.append(metrics["loss"])
      if len(in_flight) > STEPS_AHEAD:
        jax.block_until_ready(in_flight.popleft())
      if segment_start is None:  # the first call compiled: time what follows
        segment_start = first_dispatched = time.time()
        logging.info("First step dispatched after %.1f s (its compilation included); %s",
                     segment_start - run_start, compile_cache.summary())
      step += 1
      report_progress(step)
      pending.append(metrics)
      # Every periodic action also happens at the last step.
      due = lambda every: step % every == 0 or step == config.num_train_steps
      # Asked once per step (and before each evaluation batch): every host gets
      # the same answer at the same point, and a SIGTERM arriving later in this
      # step is handled at the next one.
      preempted = preemption.reached()
      log, save, run_eval = (due(config.log_every_steps),
                             due(config.checkpoint_every_steps) or preempted,
                             due(config.eval_every_steps))
      if not (log or save or run_eval):
        continue
      pending = jax.device_get(pending)
      train_seconds += time.time() - segment_start
      bad = [i for i, m in enumerate(pending) if not m["finite"]]
      if bad:
        first = step - len(pending) + bad[0] + 1
        checkpoints.wait()
        raise TrainingError(
            f"non-finite loss or gradient at step {first} (loss "
            f"{pending[bad[0]]['loss']}, gradient norm {pending[bad[0]]['grad_norm']}); "
            f"training stopped. The newest checkpoint (step {checkpoints.latest_step()}) "
            f"is intact; lower learning_rate or set grad_clip_norm and rerun")
      window += pending
      pending = []
      if log:
        steps_per_s = len(window) / max(train_seconds, 1e-9)
        scalars = {k: float(np.mean([m[k] for m in window]))
                   for k in ("loss", "accuracy", "grad_norm", "param_norm", "learning_rate")}
        scalars.update(steps_per_sec=steps_per_s,
                       clips_per_sec=steps_per_s * config.batch_size,
                       analytic_flops_per_sec=steps_per_s * step_flops)
        writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        # From the time since the first step's compilation, over every step since
        # (the first ran after its dispatch returned), saves and evaluations
        # included: they recur. From run_start, a resume's first log said 1.9 min
        # where 10 s were left.
        eta = ((config.num_train_steps - step) * (time.time() - first_dispatched)
               / (step - start_step))
        # Captioning: a batch is of videos (each several segment clips), its
        # accuracy that of the next word.
        accuracy, rate = (("word acc", "videos/s") if config.task == "captioning"
                          else ("acc", "clips/s"))
        logging.info("step %d/%d  loss %.4f  %s %.3f  %.2f steps/s  %.1f %s  "
                     "ETA %.1f min", step, config.num_train_steps, scalars["loss"],
                     accuracy, scalars["accuracy"], steps_per_s,
                     scalars["clips_per_sec"], rate, eta / 60)
        window, train_seconds = [], 0.0
      if save:
        checkpoints.save(step, state, config.to_dict())
      if preempted:
        checkpoints.close()
        raise TrainingError(f"stopped by {preemption.cause} at step {step}; the "
                            f"checkpoint is saved: run the same command again to resume",
                            preemption.exit_status)
      if run_eval:
        try:
          eval_metrics = _evaluate(evaluator, state, workdir, writer,
                                   should_stop=preemption.reached)
        except evaluators.EvaluationStopped:
          # A SIGTERM during the evaluation: save (if this step was not) and stop
          # now; the resumed run evaluates this step first (_evaluation_missed).
          if not save:
            checkpoints.save(step, state, config.to_dict())
          checkpoints.close()
          raise TrainingError(f"stopped by {preemption.cause} during the evaluation of "
                              f"step {step}; the checkpoint is saved: run the same command "
                              f"again to resume (it evaluates step {step} first)",
                              preemption.exit_status) from None
      segment_start = time.time()
  if eval_metrics is None:  # resumed at the end, its evaluation not written
    eval_metrics = _evaluate_saved_step(evaluator, state, workdir, writer)
  checkpoints.close()
  return eval_metrics


def _finished_evaluation(checkpoints, config, workdir: str) -> Optional[Dict[str, Any]]:
  """The metrics of a finished run's evaluation of its last checkpoint (the
  workdir's eval_metrics.json), or None: the run is not finished, or that step's
  evaluation was not written by this very config (any field other: evaluated
  again; another model: refused by the restore). The command of a finished run,
  run again, reports them instead of evaluating again (and writing its scalars
  twice). Process 0 reads; every host is told; the others get {} (only process
  0 reports)."""
  latest = checkpoints.latest_step()
  if latest is None or latest != config.num_train_steps:
    return None
  metrics = None
  if jax.process_index() == 0:
    read = writers.read_eval(workdir)
    if read is not None:
      metrics, made_by = read
      if metrics.get("step") != latest or made_by != writers.config_fingerprint(config):
        logging.info("The run is finished; eval_metrics.json does not hold step %d's "
                     "evaluation with this config: evaluating it", latest)
        metrics = None
  if not _as_process_0_says(metrics is not None):
    return None
  return metrics if jax.process_index() == 0 else {}


def _evaluation_missed(start_step: int, config, workdir: str) -> bool:
  """Whether a run resuming at `start_step`, an eval step before the last, lacks
  that step's evaluation: the workdir's last one is older (a later one stands: the
  run resumes from an older checkpoint than its last evaluation). Process 0 reads
  the workdir and every host is told (the evaluation is collective)."""
  if not (0 < start_step < config.num_train_steps
          and start_step % config.eval_every_steps == 0):
    return False
  missed = False
  if jax.process_index() == 0:
    evaluated = writers.evaluated_step(workdir)
    missed = evaluated is None or evaluated < start_step
  return _as_process_0_says(missed)


def _as_process_0_says(answer: bool) -> bool:
  """Process 0's `answer`, on every host (what only process 0 read of the
  workdir decides a collective step: every host must take the same)."""
  if jax.process_count() == 1:
    return answer
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(answer)))


# Settings that decide the batches a step reads or how it updates: a run resumed
# with other values goes on, but is not the run its checkpoint began.
EXACT_RESUME_FIELDS = ("seed", "batch_size", "num_train_steps", "learning_rate",
                       "schedule", "warmup_steps", "step_boundaries", "step_decay",
                       "optimizer", "momentum", "weight_decay", "grad_clip_norm",
                       "data.num_streams", "data.clip_length", "data.frame_stride",
                       "data.train_split", "data.skip_bad_records", "caption.segments",
                       "caption.max_length", "caption.dropout_rate",
                       "caption.attention_weight")


def _warn_if_not_exact(saved: Dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """Warns of settings that make the run another from here on."""
  now = config_validation.flatten(config)
  as_saved = lambda v: list(v) if isinstance(v, tuple) else v   # JSON has no tuples
  fields = [k for k in EXACT_RESUME_FIELDS
            if config.task == "captioning" or not k.startswith("caption.")]
  changed = [f"{k} {saved.get(k)!r} -> {as_saved(now[k])!r}" for k in fields
             if saved.get(k) != as_saved(now[k])]
  hosts = saved.get(checkpoints_lib.RUN_PROCESS_COUNT)
  if not config.data.num_streams and hosts not in (None, jax.process_count()):
    changed.append(f"hosts {hosts} -> {jax.process_count()} (data.num_streams=0: "
                   f"one input stream per host)")
  if changed:
    logging.warning("Resuming with settings other than the checkpoint's (%s): the run "
                    "goes on from its step, but its batches or updates from here are "
                    "not those of an uninterrupted run", "; ".join(changed))


def _evaluate_saved_step(evaluator, state, workdir, writer) -> Dict[str, Any]:
  """The evaluation of a step already saved, outside the loop (a resume's first,
  or the last of a run resumed at its end). A SIGTERM stops it between batches,
  every host at the same one, as in the loop; the resumed run evaluates it then.
  A Ctrl-C interrupts it (there is nothing to save)."""
  step = int(state.step)
  with evaluators.stop_on_preemption(
      f"stopped by SIGTERM during the evaluation of step {step}; its checkpoint is "
      f"saved: run the same command again to resume (it evaluates step {step} "
      f"first)") as should_stop, writers.flushing(writer):
    return _evaluate(evaluator, state, workdir, writer, should_stop=should_stop)


def _evaluate(evaluator, state, workdir, writer, should_stop=None) -> Dict[str, Any]:
  result = evaluator.evaluate(state.params, int(state.step), should_stop=should_stop)
  writers.write_eval(workdir, result, writer, config=evaluator.experiment.config)
  logging.info("eval: %s", result.summary)
  return result.metrics
