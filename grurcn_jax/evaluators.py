"""Evaluators: a model's parameters -> metrics and per-example scores.

An evaluator computes; it writes nothing (`writers.py` turns its result into files
and TensorBoard scalars), so another task adds an evaluator, not a branch.

`ClassificationEvaluator` (action recognition): video-level predictions average
the class probabilities of a video's `data.eval_clips` evenly spaced clips (per
level, and of the level-averaged prediction). Its metrics: step, loss (mean eval
cross-entropy), video_accuracy, clip_accuracy, num_videos, num_clips,
per_level_video_accuracy, per_level_clip_accuracy (and skipped_records when
`data.skip_bad_records` skipped any). Its scores, per video (for score fusion,
`grurcn_jax.fuse`): video_index, video_id, label, probs [V, K], level_probs
[V, L, K], levels, class_names, step. Its figure: the video-level confusion matrix.
"""

import dataclasses
import io
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from grurcn_jax import sharding
from grurcn_jax.data import features as features_lib
from grurcn_jax.data import pipeline
from grurcn_jax.experiment import Experiment
from grurcn_jax.models import classification_loss


@dataclasses.dataclass
class EvalResult:
  """What an evaluation found; the same on every host."""
  step: int
  metrics: Dict[str, Any]                     # JSON-able; floats also go to TensorBoard
  scores: Dict[str, np.ndarray]               # per-example arrays, saved as .npz
  figures: Dict[str, Callable[[], bytes]]     # name -> PNG renderer (called by the writer)


class ClassificationEvaluator:
  """Clip, video and per-level accuracy of a classifier on the eval split."""

  def __init__(self, experiment: Experiment):
    self.experiment = experiment
    config = experiment.config
    self._host_batch = sharding.host_batch_size(config.eval_batch_size, "eval_batch_size")
    self._levels = tuple(config.model.levels)
    self._inputs = tuple(experiment.spec.input_shapes)  # what batches hold
    self._class_names = experiment.spec.class_names
    self._video_ids = features_lib.video_ids(
        features_lib.read_metadata(config.data.dir), config.data.eval_split)
    # A missing or truncated eval file is found now, not at the first evaluation.
    pipeline.check_split(config.data, config.data.eval_split, self._inputs)
    self._step = _make_eval_step(experiment)

  def evaluate(self, params, step: int) -> EvalResult:
    config = self.experiment.config
    batches = pipeline.eval_batches(config.data, batch_size=self._host_batch,
                                    levels=self._inputs,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
    mesh = self.experiment.mesh
    chunks = [jax.device_get(self._step(params, sharding.global_batch(mesh, batch)))
              for batch in batches]
    outputs = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    valid = outputs["mask"] > 0
    outputs = {k: v[valid] for k, v in outputs.items()}
    metrics, scores = classification_metrics(outputs, self._levels, step)
    if batches.stats.skipped_records:
      metrics["skipped_records"] = batches.stats.skipped_records
    scores.update(class_names=np.array(self._class_names),
                  video_id=np.array([self._video_ids.get(int(i), str(i))
                                     for i in scores["video_index"]]))
    matrix = confusion_matrix(scores["label"], scores["probs"].argmax(-1),
                              len(self._class_names))
    figures = {"confusion_matrix": lambda: render_confusion_matrix(
        matrix, self._class_names, step)}
    return EvalResult(int(step), metrics, scores, figures)


def _make_eval_step(experiment: Experiment):
  model, mesh, spec = experiment.model, experiment.mesh, experiment.spec
  levels, loss_kind = tuple(experiment.config.model.levels), experiment.config.model.loss

  def eval_step(params, batch):
    out = model.apply({"params": params}, spec.dequantize(batch["features"]),
                      train=False)
    return {
        "probs": jax.nn.softmax(out["logits"]),
        "level_probs": jnp.stack([jax.nn.softmax(out["level_logits"][l]) for l in levels],
                                 axis=1),
        "loss": classification_loss(out, batch["label"], loss_kind),
        "label": batch["label"], "mask": batch["mask"],
        "video_index": batch["video_index"],
    }
  # Replicated outputs: every host gets every clip's scores (video-level averaging
  # needs all of a video's clips, which may live on any host).
  return jax.jit(eval_step,
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def classification_metrics(outputs: Dict[str, np.ndarray], levels, step: int):
  """Per-clip outputs (probs [N, K], level_probs [N, L, K], loss, label,
  video_index) -> (metrics, per-video scores)."""
  labels = outputs["label"]
  video_index = outputs["video_index"]
  videos, inverse = np.unique(video_index, return_inverse=True)
  counts = np.bincount(inverse)

  def per_video(probs):
    summed = np.zeros((len(videos),) + probs.shape[1:], np.float64)
    np.add.at(summed, inverse, probs)
    return summed / counts.reshape((-1,) + (1,) * (probs.ndim - 1))

  video_labels = np.zeros(len(videos), np.int64)
  video_labels[inverse] = labels
  video_probs = per_video(outputs["probs"])
  video_level_probs = per_video(outputs["level_probs"])
  metrics = {
      "step": int(step),
      "loss": float(np.mean(outputs["loss"])),
      "clip_accuracy": float(np.mean(outputs["probs"].argmax(-1) == labels)),
      "video_accuracy": float(np.mean(video_probs.argmax(-1) == video_labels)),
      "num_videos": int(len(videos)),
      "num_clips": int(len(labels)),
      "per_level_video_accuracy": {
          level: float(np.mean(video_level_probs[:, i].argmax(-1) == video_labels))
          for i, level in enumerate(levels)},
      "per_level_clip_accuracy": {
          level: float(np.mean(outputs["level_probs"][:, i].argmax(-1) == labels))
          for i, level in enumerate(levels)},
  }
  scores = {"video_index": videos, "label": video_labels, "probs": video_probs,
            "level_probs": video_level_probs, "levels": np.array(levels),
            "step": np.array(step)}
  return metrics, scores


def confusion_matrix(labels, predictions, num_classes) -> np.ndarray:
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def render_confusion_matrix(matrix: np.ndarray, class_names, step: int) -> bytes:
  """PNG bytes of a video-level confusion matrix (rows: true class)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  n = len(class_names)
  size = min(4 + 0.25 * n, 30)
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(matrix, cmap="Blues")
  if n <= 40:
    ax.set_xticks(range(n), class_names, rotation=90)
    ax.set_yticks(range(n), class_names)
    for (i, j), v in np.ndenumerate(matrix):
      if v:
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                color="white" if v > matrix.max() / 2 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(f"video-level confusion matrix, step {step}")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=80)
  plt.close(fig)
  return buffer.getvalue()
