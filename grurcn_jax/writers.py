"""Evaluation results -> files in the workdir; the run's scalar writer.

For an `evaluators.EvalResult`, process 0 writes

    eval_metrics.json   the metrics, plus the names of the files below
    eval_scores.npz     the per-example scores (score fusion reads them), if any
    {figure}.png        each figure, e.g. confusion_matrix.png
    {document}          each JSON document, e.g. eval_captions.json

and every float metric goes to the scalar writer as eval/{name} (a mapping of them,
as per-level accuracies, as eval/{name}/{key}), each text as itself. Files go
through `files` (local, or gs:// through tf.io.gfile); each is replaced atomically,
so a reader (score fusion, a resumed run) never sees half of one, and a write
cut short leaves the previous one whole.

The scalar writer (`metric_writer`) is clu's: TensorBoard event files and the log.
clu needs TensorFlow; where either is missing (a GPU image with JAX alone), the
scalars go to the log and, one JSON object a line, to `scalars.jsonl`.
"""

import contextlib
import hashlib
import io
import json
import os
from typing import Optional

from absl import logging
import jax

from grurcn_jax import config_validation, files
from grurcn_jax.evaluators import EvalResult

METRICS_FILE = "eval_metrics.json"
SCORES_FILE = "eval_scores.npz"
SCALARS_FILE = "scalars.jsonl"


def metric_writer(workdir: str, *, just_logging: bool, start_step: Optional[int] = None):
  """clu's default writer, or `ScalarLog` where clu or TensorFlow is missing.
  `start_step`: a training run's first step (it resumes there); what an earlier,
  interrupted writer recorded after it is redone, so ScalarLog drops it. TensorBoard
  event files are only appended to: there the steps between the checkpoint and the
  interruption appear twice, the interrupted run's points and the redone ones (clu
  writes no SessionLog.START, the only mark TensorBoard purges points for)."""
  try:
    from grurcn_jax import host_tf  # noqa: F401  (TensorFlow set up before clu starts it)
    from clu import metric_writers
  except ImportError as e:
    if not just_logging:
      logging.warning("No TensorBoard files (clu needs TensorFlow: %s); scalars go to "
                      "the log and %s", e, os.path.join(workdir, SCALARS_FILE))
    return ScalarLog(workdir, just_logging=just_logging, start_step=start_step)
  return metric_writers.create_default_writer(workdir, just_logging=just_logging)


class ScalarLog:
  """The writer without clu: scalars and texts to the log (INFO) and, unless
  `just_logging`, scalars appended to workdir/scalars.jsonl as {"step": s, name:
  value, ...} (hyperparameters as {"hparams": {...}})."""

  def __init__(self, workdir: str, *, just_logging: bool,
               start_step: Optional[int] = None):
    self._path = None if just_logging else os.path.join(workdir, SCALARS_FILE)
    if self._path is not None and start_step is not None and files.exists(self._path):
      self._keep_up_to(start_step)

  def _keep_up_to(self, step: int) -> None:
    """Drops the records of steps after `step` (and, from step 0, the
    hyperparameters too): the steps a resumed run takes again would be there twice."""
    kept = []
    for line in files.read_bytes(self._path).decode().splitlines():
      try:
        record = json.loads(line)
      except ValueError:
        continue   # a line cut off by the kill
      # Hyperparameters (no step) are written again by a run that starts at 0.
      if record["step"] <= step if "step" in record else step > 0:
        kept.append(line + "\n")
    data = "".join(kept).encode()
    files.write_atomically(self._path, lambda tmp: files.write_bytes(tmp, data))

  def _append(self, record) -> None:
    if self._path is None:
      return
    files.makedirs(os.path.dirname(self._path))
    with files.open_file(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def write_scalars(self, step: int, scalars) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))
    self._append(dict(step=int(step), **scalars))

  def write_texts(self, step: int, texts) -> None:
    for name, text in texts.items():
      logging.info("[%d] %s: %s", step, name, text)

  def write_hparams(self, hparams) -> None:
    self._append({"hparams": dict(hparams)})

  def flush(self) -> None:
    pass   # every record is written when it comes

  def close(self) -> None:
    pass


@contextlib.contextmanager
def flushing(writer):
  """Flushes `writer` on leaving, also on an error."""
  try:
    yield writer
  finally:
    writer.flush()


def report_progress(num_train_steps: int, writer):
  """clu's ReportProgress (steps/s to the writer, now and then), or nothing without
  clu: the training loop logs its progress itself."""
  try:
    from grurcn_jax import host_tf  # noqa: F401  (as in metric_writer)
    from clu import periodic_actions
  except ImportError:
    return lambda step: None
  return periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer)


def clear_scalars(directory: str) -> None:
  """Removes the scalar files (TensorBoard event files, scalars.jsonl) of an
  earlier writer in `directory`: an evaluation's directory holding two showed
  every point twice."""
  for name in files.listdir(directory):
    if name.startswith("events.out.tfevents") or name == SCALARS_FILE:
      files.remove(os.path.join(directory, name))


def evaluated_step(workdir: str):
  """The step of the evaluation whose metrics `workdir` holds (eval_metrics.json),
  or None: none, or a file that cannot be read."""
  step = (read_eval_metrics(workdir) or {}).get("step")
  return step if isinstance(step, int) else None


# eval_metrics.json's fingerprint of the config that made the evaluation.
CONFIG_KEY = "config_sha256"


def read_eval(workdir: str):
  """(the metrics of the evaluation `workdir` holds: eval_metrics.json without
  what write_eval adds, the fingerprint of the config that made it or None), or
  None: none, or unreadable."""
  path = os.path.join(workdir, METRICS_FILE)
  try:
    if not files.exists(path):
      return None
    document = json.loads(files.read_bytes(path))
  except Exception:  # noqa: BLE001 (gs:// raises TensorFlow's errors, not OSError)
    return None
  if not isinstance(document, dict):
    return None
  added = _written_file_keys(document) | {CONFIG_KEY}
  return ({k: v for k, v in document.items() if k not in added},
          document.get(CONFIG_KEY))


def read_eval_metrics(workdir: str):
  """The metrics of the evaluation `workdir` holds (`read_eval`'s), or None."""
  read = read_eval(workdir)
  return None if read is None else read[0]


def config_fingerprint(config) -> str:
  """A config's fingerprint: equal for configs equal in every field."""
  flat = config_validation.flatten(config)
  return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def _written_file_keys(document) -> set:
  """The keys write_eval adds for the files it wrote: NAME_file naming a file."""
  return {k for k, v in document.items()
          if k.endswith("_file") and isinstance(v, str) and "/" not in v}


def write_eval(workdir: str, result: EvalResult, scalar_writer=None,
               config=None) -> None:
  """Writes `result`'s files (process 0) and scalars (`scalar_writer`, from
  `metric_writer`, when given; it decides itself which host writes); with
  `config`, the one that made it, its fingerprint in eval_metrics.json."""
  if scalar_writer is not None:
    scalar_writer.write_scalars(result.step, _float_scalars(result.metrics, "eval/"))
    if result.texts:
      scalar_writer.write_texts(result.step, result.texts)
  if jax.process_index() != 0:
    return
  import numpy as np
  files.makedirs(workdir)
  written = {}
  if result.scores:
    buffer = io.BytesIO()  # savez seeks, which GFile (gs://) cannot
    np.savez(buffer, **result.scores)
    _replace(os.path.join(workdir, SCORES_FILE), buffer.getvalue())
    written["scores_file"] = SCORES_FILE
  for name, render in result.figures.items():
    _replace(os.path.join(workdir, f"{name}.png"), render())
    written[f"{name}_file"] = f"{name}.png"
  for name, document in result.documents.items():
    _write_json(os.path.join(workdir, name), document)
    written[f"{name.rsplit('.', 1)[0]}_file"] = name
  if config is not None:
    written[CONFIG_KEY] = config_fingerprint(config)
  _write_json(os.path.join(workdir, METRICS_FILE), dict(result.metrics, **written))


def _float_scalars(metrics, prefix: str) -> dict:
  """Float metrics as {prefix + name: value}; a mapping as prefix + name/key."""
  out = {}
  for name, value in metrics.items():
    if isinstance(value, float):
      out[prefix + name] = value
    elif isinstance(value, dict):
      out.update(_float_scalars(value, f"{prefix}{name}/"))
  return out


def _write_json(path: str, document) -> None:
  _replace(path, json.dumps(document, indent=1).encode())


def _replace(path: str, data: bytes) -> None:
  files.write_atomically(path, lambda tmp: files.write_bytes(tmp, data))

