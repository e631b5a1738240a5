"""Evaluation results -> files and scalars, for any evaluator's result."""

import json
import os

import numpy as np

from grurcn_jax import writers
from grurcn_jax.evaluators import EvalResult


class RecordingWriter:
  def __init__(self):
    self.calls = []

  def write_scalars(self, step, scalars):
    self.calls.append((step, dict(scalars)))


def test_write_eval_writes_every_part_of_a_result(tmp_path):
  rendered = []
  result = EvalResult(
      step=7,
      metrics={"step": 7, "loss": 0.25, "video_accuracy": 0.5, "num_videos": 4,
               "per_level_video_accuracy": {"pool2": 0.75}},
      scores={"video_index": np.arange(4), "probs": np.full((4, 3), 1 / 3)},
      figures={"confusion_matrix": lambda: rendered.append(1) or b"\x89PNG fake",
               "attention": lambda: b"\x89PNG other"})
  scalars = RecordingWriter()
  writers.write_eval(str(tmp_path), result, scalars)

  with open(tmp_path / writers.METRICS_FILE) as f:
    written = json.load(f)
  assert written == dict(result.metrics, scores_file="eval_scores.npz",
                         confusion_matrix_file="confusion_matrix.png",
                         attention_file="attention.png")
  scores = np.load(tmp_path / writers.SCORES_FILE)
  np.testing.assert_array_equal(scores["probs"], result.scores["probs"])
  assert (tmp_path / "confusion_matrix.png").read_bytes() == b"\x89PNG fake"
  assert (tmp_path / "attention.png").read_bytes() == b"\x89PNG other"
  assert rendered == [1]
  # Floats, and per-level ones by name; counts stay in the JSON.
  assert scalars.calls == [(7, {"eval/loss": 0.25, "eval/video_accuracy": 0.5,
                                "eval/per_level_video_accuracy/pool2": 0.75})]
  assert sorted(os.listdir(tmp_path)) == ["attention.png", "confusion_matrix.png",
                                          "eval_metrics.json", "eval_scores.npz"]


def test_a_write_cut_short_leaves_the_previous_results_whole(tmp_path, monkeypatch):
  # Score fusion reads eval_scores.npz; a kill while it was rewritten in place left
  # a truncated file.
  def result(value):
    return EvalResult(step=1, metrics={"loss": value},
                      scores={"probs": np.full((2, 3), value)},
                      figures={"confusion_matrix": lambda: b"png %f" % value})
  writers.write_eval(str(tmp_path), result(0.5))
  before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}

  rename = writers.files.rename
  for kill_at in range(3):   # the scores, the figure, the metrics
    renames = []

    def killed(src, dst):
      if len(renames) == kill_at:
        raise KeyboardInterrupt
      renames.append(dst)
      rename(src, dst)
    monkeypatch.setattr(writers.files, "rename", killed)
    try:
      writers.write_eval(str(tmp_path), result(0.25))
    except KeyboardInterrupt:
      pass
    # A file not yet replaced is the old one, whole (and the replaced ones new).
    for name, old in before.items():
      replaced = os.path.join(tmp_path, name) in renames
      assert ((tmp_path / name).read_bytes() == old) != replaced, (kill_at, name)
  assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]
  scores = np.load(tmp_path / writers.SCORES_FILE)   # readable, the new one
  np.testing.assert_array_equal(scores["probs"], np.full((2, 3), 0.25))


def test_scalar_log_is_the_writer_without_clu(tmp_path):
  log = writers.ScalarLog(str(tmp_path / "run"), just_logging=False)
  log.write_hparams({"batch_size": "8"})
  log.write_scalars(1, {"train/loss": np.float32(2.5)})
  log.write_texts(1, {"caption": "a disc moves"})
  with writers.flushing(log):
    log.write_scalars(2, {"train/loss": 1.25, "eval/accuracy": 0.5})
  with open(tmp_path / "run" / writers.SCALARS_FILE) as f:
    assert [json.loads(line) for line in f] == [
        {"hparams": {"batch_size": "8"}}, {"step": 1, "train/loss": 2.5},
        {"step": 2, "train/loss": 1.25, "eval/accuracy": 0.5}]
  # Other hosts only log.
  writers.ScalarLog(str(tmp_path / "other"), just_logging=True).write_scalars(1, {"x": 1.0})
  assert not (tmp_path / "other").exists()


def test_a_resumed_run_replaces_the_scalars_logged_after_its_checkpoint(tmp_path):
  """Without clu: steps logged after the checkpoint a killed run resumes from are
  trained and logged again; scalars.jsonl would hold them twice."""
  path = tmp_path / writers.SCALARS_FILE

  def write_killed_run():
    records = [{"hparams": {"seed": "0"}}] + [{"step": s, "train/loss": 1.0 / s}
                                              for s in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 6, "tr')

  def steps():
    return [json.loads(line).get("step", "hparams") for line in path.read_text().splitlines()]

  write_killed_run()
  writers.ScalarLog(str(tmp_path), just_logging=False, start_step=3)
  assert steps() == ["hparams", 1, 2, 3]
  write_killed_run()   # killed before its first checkpoint: it starts again at 0
  writers.ScalarLog(str(tmp_path), just_logging=False, start_step=0)
  assert steps() == []
  write_killed_run()   # other hosts, and evaluations' writers, leave it alone
  before = path.read_text()
  writers.ScalarLog(str(tmp_path), just_logging=True, start_step=3)
  writers.ScalarLog(str(tmp_path), just_logging=False)
  assert path.read_text() == before


def test_the_evaluated_step_is_none_where_no_evaluation_can_be_read(tmp_path, monkeypatch):
  assert writers.evaluated_step(str(tmp_path)) is None
  (tmp_path / writers.METRICS_FILE).write_text(json.dumps({"step": 3000, "loss": 1.0}))
  assert writers.evaluated_step(str(tmp_path)) == 3000

  class NotFoundError(Exception):   # tf.errors' are not OSErrors (gs:// workdirs)
    pass

  def failing(path):
    raise NotFoundError(path)
  monkeypatch.setattr(writers.files, "read_bytes", failing)
  assert writers.evaluated_step(str(tmp_path)) is None
  assert writers.read_eval_metrics(str(tmp_path)) is None


def test_the_evaluation_read_back_is_its_metrics_without_the_files_beside_it(tmp_path):
  document = {"step": 12, "video_accuracy": 0.5, "per_level": {"pool2": 0.25},
              "scores_file": "eval_scores.npz", "confusion_matrix_file": "c.png"}
  (tmp_path / writers.METRICS_FILE).write_text(json.dumps(document))
  assert writers.read_eval_metrics(str(tmp_path)) == {
      "step": 12, "video_accuracy": 0.5, "per_level": {"pool2": 0.25}}
  (tmp_path / writers.METRICS_FILE).write_text("[1, 2]")   # not an evaluation
  assert writers.read_eval_metrics(str(tmp_path)) is None
  assert writers.evaluated_step(str(tmp_path)) is None
