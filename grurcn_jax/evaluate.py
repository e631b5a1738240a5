"""Evaluation: clip, video and per-level accuracy, per-video scores, confusion matrix.

Video-level predictions average the class probabilities of a video's
`data.eval_clips` evenly spaced clips (per level, and of the level-averaged
prediction). Writes into the workdir:

    eval_metrics.json   step, loss (mean eval cross-entropy), video_accuracy,
                        clip_accuracy, num_videos, num_clips, per_level_video_accuracy,
                        per_level_clip_accuracy, and the files below
    eval_scores.npz     per-video scores for score fusion (grurcn_jax.fuse):
                        video_index, video_id, label, probs [V, K], level_probs
                        [V, L, K], levels, class_names, step
    confusion_matrix.png
"""

import io
import json
import os
from typing import Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from grurcn_jax import sharding
from grurcn_jax.host_tf import tf
from grurcn_jax.data import features as features_lib
from grurcn_jax.data import pipeline
from grurcn_jax.models import classification_loss

METRICS_FILE = "eval_metrics.json"
SCORES_FILE = "eval_scores.npz"
CONFUSION_FILE = "confusion_matrix.png"


def make_eval_step(model, loss_kind: str, mesh):
  levels = tuple(model.levels)

  def eval_step(params, batch):
    out = model.apply({"params": params}, batch["features"], train=False)
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


def evaluate(model, params, config, mesh, metadata: Mapping, step: int,
             workdir: str, eval_step=None) -> Dict:
  """Runs the eval split; returns the metrics and (process 0) writes the files."""
  eval_step = eval_step or make_eval_step(model, config.model.loss, mesh)
  data = config.data
  batches = pipeline.eval_batches(
      data.dir, split=data.eval_split,
      batch_size=sharding.host_batch_size(config.eval_batch_size, "eval_batch_size"),
      clip_length=data.clip_length, frame_stride=data.frame_stride,
      eval_clips=data.eval_clips, levels=model.levels,
      process_index=jax.process_index(), process_count=jax.process_count(),
      skip_bad_records=data.skip_bad_records)
  chunks = []
  for batch in batches:
    chunks.append(jax.device_get(eval_step(params, sharding.global_batch(mesh, batch))))
  outputs = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  valid = outputs["mask"] > 0
  outputs = {k: v[valid] for k, v in outputs.items()}
  metrics, scores = _metrics(outputs, model.levels, step)
  if batches.stats.skipped_records:
    metrics["skipped_records"] = batches.stats.skipped_records
  if jax.process_index() == 0:
    _write(workdir, metrics, scores, metadata, data.eval_split)
  return metrics


def _metrics(outputs, levels, step):
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


def _write(workdir, metrics, scores, metadata, split):
  tf.io.gfile.makedirs(workdir)
  class_names = metadata["class_names"]
  ids = features_lib.video_ids(metadata, split)
  scores = dict(scores, class_names=np.array(class_names),
                video_id=np.array([ids.get(int(i), str(i)) for i in scores["video_index"]]))
  buffer = io.BytesIO()  # savez seeks, which GFile (gs://) cannot
  np.savez(buffer, **scores)
  with tf.io.gfile.GFile(os.path.join(workdir, SCORES_FILE), "wb") as f:
    f.write(buffer.getvalue())
  matrix = confusion_matrix(scores["label"], scores["probs"].argmax(-1), len(class_names))
  with tf.io.gfile.GFile(os.path.join(workdir, CONFUSION_FILE), "wb") as f:
    f.write(render_confusion_matrix(matrix, class_names, metrics["step"]))
  metrics = dict(metrics, scores_file=SCORES_FILE, confusion_matrix_file=CONFUSION_FILE)
  tmp = os.path.join(workdir, METRICS_FILE + ".tmp")
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(metrics, f, indent=1)
  tf.io.gfile.rename(tmp, os.path.join(workdir, METRICS_FILE), overwrite=True)


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


def evaluate_checkpoint(config, workdir: str, step=None) -> Dict:
  """--mode=eval: restores the newest (or `step`) checkpoint of `workdir` and
  evaluates it, writing the files above."""
  from grurcn_jax import checkpoints as checkpoints_lib
  from grurcn_jax import config_validation, steps, train
  from grurcn_jax.models import build_model
  config_validation.validate_config(config)
  mesh = sharding.make_mesh()
  metadata = train.prepare_data(config)
  model = build_model(config.model)
  checkpoints = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"))
  if checkpoints.latest_step() is None:
    from grurcn_jax.errors import ConfigError
    raise ConfigError(f"no checkpoint in {workdir}/checkpoints to evaluate")
  abstract = jax.eval_shape(lambda: steps.create_state(
      model, config, mesh, steps.level_shapes(config, metadata)))
  state = checkpoints.restore(
      checkpoints_lib.abstract_like(abstract, sharding.replicated(mesh)),
      config.model.to_dict(), step)
  checkpoints.close()
  return evaluate(model, state.params, config, mesh, metadata, int(state.step), workdir)
