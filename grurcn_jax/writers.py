"""Evaluation results -> files in the workdir and TensorBoard scalars.

For an `evaluators.EvalResult`, process 0 writes

    eval_metrics.json   the metrics, plus the names of the files below
    eval_scores.npz     the per-example scores (score fusion reads them), if any
    {figure}.png        each figure, e.g. confusion_matrix.png
    {document}          each JSON document, e.g. eval_captions.json

and every float metric goes to TensorBoard as eval/{name}, each text as itself. Files go through
tf.io.gfile (local or gs://); the JSON is replaced atomically, so a reader never
sees half of it.
"""

import io
import json
import os

import jax

from grurcn_jax.evaluators import EvalResult
from grurcn_jax.host_tf import tf

METRICS_FILE = "eval_metrics.json"
SCORES_FILE = "eval_scores.npz"


def write_eval(workdir: str, result: EvalResult, scalar_writer=None) -> None:
  """Writes `result`'s files (process 0) and scalars (`scalar_writer`, a clu
  metric writer, when given; it decides itself which host writes)."""
  if scalar_writer is not None:
    scalar_writer.write_scalars(result.step, {
        f"eval/{k}": v for k, v in result.metrics.items() if isinstance(v, float)})
    if result.texts:
      scalar_writer.write_texts(result.step, result.texts)
  if jax.process_index() != 0:
    return
  import numpy as np
  tf.io.gfile.makedirs(workdir)
  files = {}
  if result.scores:
    buffer = io.BytesIO()  # savez seeks, which GFile (gs://) cannot
    np.savez(buffer, **result.scores)
    _write_bytes(os.path.join(workdir, SCORES_FILE), buffer.getvalue())
    files["scores_file"] = SCORES_FILE
  for name, render in result.figures.items():
    _write_bytes(os.path.join(workdir, f"{name}.png"), render())
    files[f"{name}_file"] = f"{name}.png"
  for name, document in result.documents.items():
    _write_json(os.path.join(workdir, name), document)
    files[f"{name.rsplit('.', 1)[0]}_file"] = name
  _write_json(os.path.join(workdir, METRICS_FILE), dict(result.metrics, **files))


def _write_json(path: str, document) -> None:
  """Replaced atomically: a reader never sees half of it."""
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(document, f, indent=1)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _write_bytes(path: str, data: bytes) -> None:
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(data)

