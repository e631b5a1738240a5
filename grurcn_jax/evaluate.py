"""--mode=eval: evaluate a checkpoint of a workdir and write the results beside it.

  python -m grurcn_jax.main --config=CONFIG --workdir=DIR --mode=eval [--eval_step=N]

The model config must be the one the checkpoint was trained with (checked before
anything is restored); only the parameters are read, so settings of how to train
(optimiser, clipping) need not match. Results go to DIR/eval/{split}_step{N}/
(`results_dir`), not to the workdir's own files: those are the training run's last evaluation,
and an older step, or another split (MSVD's test clips after validating on its
val clips), must not replace them. What is written: see `writers.py`
(eval_metrics.json and, for classification, eval_scores.npz and
confusion_matrix.png, for captioning eval_captions.json and caption_metrics.json;
TensorBoard eval/ scalars, which TensorBoard shows as a run of their own).
"""

import os
from typing import Dict, Optional

import jax
import ml_collections

from grurcn_jax import evaluators, experiment as experiment_lib, writers
from grurcn_jax.errors import ConfigError


RESULTS_SUBDIR = "eval"


def results_dir(workdir: str, split: str, step: int) -> str:
  """Where --mode=eval writes the evaluation of `split` at checkpoint `step`."""
  return os.path.join(workdir, RESULTS_SUBDIR, f"{split}_step{int(step)}")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: Optional[int] = None) -> Dict:
  """Restores the newest (or `step`) checkpoint of `workdir`, evaluates it on
  `config.data.eval_split`, writes the results into `results_dir` and returns the
  metrics."""
  experiment = experiment_lib.assemble(config, splits=(config.data.eval_split,))
  checkpoints = experiment.checkpoints(workdir)
  try:   # closed on a mismatch too: an in-process caller goes on
    if checkpoints.latest_step() is None:
      raise ConfigError(f"no checkpoint in {workdir}/{experiment_lib.CHECKPOINT_SUBDIR} "
                        f"to evaluate")
    params, step = experiment.restore_params(checkpoints, step)
  finally:
    checkpoints.close()
  # An evaluation at UCF-101 scale outlasts a preemption's grace (about 30 s).
  with evaluators.stop_on_preemption(
      f"stopped by SIGTERM during the evaluation of checkpoint {step}; nothing was "
      f"written: run the same command again to evaluate it") as should_stop:
    result = evaluators.for_experiment(experiment).evaluate(params, step,
                                                            should_stop=should_stop)
  out = results_dir(workdir, config.data.eval_split, result.step)
  if jax.process_index() == 0:
    writers.clear_scalars(out)   # a rerun replaces the evaluation, scalars too
  writer = writers.metric_writer(out, just_logging=jax.process_index() != 0)
  with writers.flushing(writer):
    writers.write_eval(out, result, writer)
  return result.metrics
