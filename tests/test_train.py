"""Whole runs of the demo config on 8 simulated devices: training, checkpoints,
resume after SIGKILL, evaluation from a checkpoint, and clear errors."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from grurcn_jax import evaluate, train, writers
from grurcn_jax.errors import CheckpointMismatchError, TrainingError
from tests.training_setup import (REPO, main_in_process, overrides_as_flags,
                                  python_without, restore_params, tiny_config)

CONTRACT_KEYS = {"step", "loss", "video_accuracy", "clip_accuracy", "num_videos",
                 "per_level_video_accuracy"}


@pytest.fixture(scope="module")
def data_dir(tiny_demo_dir):
  return tiny_demo_dir


# What the finished run's steps returned (every step's loss) and which of them
# the loop waited for, as dispatched (step indices from 0).
FINISHED_STEPS = {}


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
  # Logs every 5 steps, checkpoints every 6: the logs' averages are checked against
  # the steps' own losses, recorded here.
  from grurcn_jax import experiment as experiment_lib
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(data_dir, num_train_steps=12, checkpoint_every_steps=6,
                       eval_every_steps=12, log_every_steps=5)
  losses, waited = [], []
  make_step, block = experiment_lib.Experiment.train_step, jax.block_until_ready

  def recording_step(self):
    step = make_step(self)

    def run(state, batch):
      state, metrics = step(state, batch)
      losses.append(metrics["loss"])
      return state, metrics
    return run
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(experiment_lib.Experiment, "train_step", recording_step)
    patch.setattr(jax, "block_until_ready", lambda x: waited.append(x) or block(x))
    metrics = train.train_and_evaluate(config, workdir)
  FINISHED_STEPS.update(
      losses=[float(loss) for loss in losses],
      waited=[i for x in waited for i, loss in enumerate(losses) if x is loss])
  return config, workdir, metrics


def train_losses(workdir):
  losses = {}
  for name in os.listdir(workdir):
    if name.startswith("events.out.tfevents"):
      for record in tf.data.TFRecordDataset(os.path.join(workdir, name)):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
          if value.tag == "train/loss":
            losses[event.step] = float(tf.make_ndarray(value.tensor))
  return [losses[s] for s in sorted(losses)]




def test_whole_run_learns_checkpoints_and_reports(finished_run):
  config, workdir, metrics = finished_run
  assert jax.device_count() == 8
  losses = FINISHED_STEPS["losses"]
  assert len(losses) == 12
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "6"]
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    written = json.load(f)
  assert CONTRACT_KEYS <= set(written)
  assert written["step"] == 12 and written["num_videos"] == 8
  assert set(written["per_level_video_accuracy"]) == {"pool2", "pool3"}
  # The files beside it, and the fingerprint of the config that made it.
  assert written == {**metrics, "scores_file": "eval_scores.npz",
                     "confusion_matrix_file": "confusion_matrix.png",
                     "config_sha256": writers.config_fingerprint(config)}
  scores = np.load(os.path.join(workdir, "eval_scores.npz"))
  assert scores["probs"].shape == (8, 8)
  np.testing.assert_allclose(scores["probs"].sum(-1), 1, rtol=1e-5)
  assert np.mean(scores["probs"].argmax(-1) == scores["label"]) == written["video_accuracy"]
  assert len(set(scores["video_id"].tolist())) == 8
  with open(os.path.join(workdir, "confusion_matrix.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_finished_run_run_again_reports_its_evaluation(finished_run, tmp_path,
                                                         monkeypatch):
  # Nothing is evaluated or written again: the final evaluation's metrics come
  # from the workdir; a final evaluation that was not written is done.
  from grurcn_jax import evaluators
  config, finished, metrics = finished_run
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  before = {name: os.path.getmtime(os.path.join(workdir, name))
            for name in os.listdir(workdir)}
  monkeypatch.setattr(evaluators, "for_experiment", pytest.fail)
  assert train.train_and_evaluate(config, workdir) == metrics
  assert {name: os.path.getmtime(os.path.join(workdir, name))
          for name in os.listdir(workdir)} == before
  monkeypatch.undo()
  # An evaluation made by another config is not reported for this one: evaluated
  # again as it says (more eval clips); the first command, run after it, gets its
  # own evaluation again too, not the other's. Another model is refused by the
  # restore.
  more_clips = config.copy_and_resolve_references()
  more_clips.data.eval_clips = 2 * config.data.eval_clips
  again = train.train_and_evaluate(more_clips, workdir)
  assert again["step"] == 12 and again["num_clips"] == 2 * metrics["num_clips"]
  assert writers.read_eval_metrics(workdir) == again != metrics
  assert train.train_and_evaluate(config, workdir) == metrics
  assert writers.read_eval_metrics(workdir) == metrics
  wider = config.copy_and_resolve_references()
  wider.model.hidden = tuple(2 * h for h in config.model.hidden)
  with pytest.raises(CheckpointMismatchError, match="model.hidden"):
    train.train_and_evaluate(wider, workdir)
  os.remove(os.path.join(workdir, "eval_metrics.json"))   # killed while evaluating
  again = train.train_and_evaluate(config, workdir)
  assert again == metrics
  assert writers.read_eval_metrics(workdir) == again


def test_hosts_other_than_the_first_are_told_a_finished_run_is_evaluated(
    finished_run, monkeypatch):
  # Process 0 reads eval_metrics.json and tells the others, which report nothing.
  from jax.experimental import multihost_utils
  config, finished, _ = finished_run

  class Checkpoints:
    latest_step = lambda self: 12
  told = []
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all",
                      lambda found: told.append(int(found)) or np.int32(1))
  monkeypatch.setattr(train.writers, "read_eval", pytest.fail)   # process 0's to read
  assert train._finished_evaluation(Checkpoints(), config, finished) == {}
  assert told == [0]   # what it had itself: process 0's answer is the one taken


def test_eval_from_checkpoint_reproduces_training_metrics(finished_run, tmp_path):
  config, finished, metrics = finished_run
  workdir = str(tmp_path / "run")   # a copy: other tests read the finished run as it is
  shutil.copytree(finished, workdir)
  split = config.data.eval_split
  with open(os.path.join(workdir, "eval_metrics.json"), "rb") as f:
    trained = f.read()
  again = evaluate.evaluate_checkpoint(config, workdir)
  assert again == metrics
  earlier = evaluate.evaluate_checkpoint(config, workdir, step=6)
  assert earlier["step"] == 6
  # Each evaluation in a directory of its own; the run's last evaluation stays.
  for step, result in ((12, again), (6, earlier)):
    results = evaluate.results_dir(workdir, split, step)
    assert results == os.path.join(workdir, "eval", f"{split}_step{step}")
    with open(os.path.join(results, "eval_metrics.json")) as f:
      assert json.load(f) == {**result, "scores_file": "eval_scores.npz",
                              "confusion_matrix_file": "confusion_matrix.png"}
    assert np.load(os.path.join(results, "eval_scores.npz"))["probs"].shape == (8, 8)
    assert any(name.startswith("events.out") for name in os.listdir(results))
  with open(os.path.join(workdir, "eval_metrics.json"), "rb") as f:
    assert f.read() == trained
  # Evaluated again, a step's directory holds that evaluation once (TensorBoard
  # showed each point twice).
  assert evaluate.evaluate_checkpoint(config, workdir, step=6) == earlier
  events = [name for name in os.listdir(evaluate.results_dir(workdir, split, 6))
            if name.startswith("events.out")]
  assert len(events) == 1


def test_a_sigterm_during_eval_mode_stops_it_and_writes_nothing(finished_run, tmp_path,
                                                                monkeypatch):
  """--mode=eval: a SIGTERM killed the process where it was (several hosts: JAX
  catches it, and the evaluation ran on past the grace). Now it stops between
  batches, every host at the same one, with one line, nothing written."""
  from grurcn_jax import evaluators
  config, finished, _ = finished_run
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  run = evaluators.run_over_batches

  def notice_as_it_starts(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return run(*args, **kwargs)
  monkeypatch.setattr(evaluators, "run_over_batches", notice_as_it_starts)
  unhandled = []   # (without the evaluation's handler, SIGTERM would end pytest)
  previous = signal.signal(signal.SIGTERM, lambda *args: unhandled.append(args))
  try:
    with pytest.raises(TrainingError, match=r"^stopped by SIGTERM during the evaluation "
                       r"of checkpoint 12; nothing was written: run the same command "
                       r"again to evaluate it$"):
      evaluate.evaluate_checkpoint(config, workdir)
    assert not unhandled
    assert not os.path.exists(evaluate.results_dir(workdir, config.data.eval_split, 12))
  finally:
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.long
def test_resume_after_sigkill_equals_uninterrupted_run(data_dir, finished_run, tmp_path):
  config, reference_dir, reference = finished_run
  flags = overrides_as_flags(data_dir, num_train_steps=12, checkpoint_every_steps=6,
                             eval_every_steps=12)
  workdir = str(tmp_path / "killed")
  def run(*module_and_args):
    # Without TensorFlow (seconds to import per process; finished_run tested the
    # writer that uses it).
    return subprocess.run(
        python_without(("tensorflow", "clu"), *module_and_args,
                       "--config=configs/demo.py", f"--workdir={workdir}", *flags),
        capture_output=True, text=True, cwd=REPO, timeout=900,
        # Every program stored, however fast this machine compiles it; the
        # matmul precision conftest gives the reference run, so that both run
        # the same programs (the same sums in the same order: the same bits).
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_DEFAULT_MATMUL_PRECISION="highest"))

  killed = run("tests.kill_after_checkpoint", "6")
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["6"]
  assert re.search(r"First step .*; 0 of [1-9]\d* programs loaded from the "
                   r"compilation cache", killed.stderr), killed.stderr[-2000:]
  assert os.listdir(os.path.join(workdir, "compilation_cache"))
  resumed = run("grurcn_jax.main")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "from step 6" in resumed.stderr
  # The restart loaded its compiled programs instead of compiling them again: the
  # train step too (a restored state traces the fresh state's program; another
  # program would have been stored beside it).
  loaded = re.search(r"First step .*; (\d+) of (\d+) programs loaded from the "
                     r"compilation cache", resumed.stderr)
  assert loaded and int(loaded[1]) >= 1, resumed.stderr[-2000:]
  stored = os.listdir(os.path.join(workdir, "compilation_cache"))
  assert len([name for name in stored if name.startswith("jit_train_step-")]) == 1
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    metrics = json.load(f)
  # What the README promises: the same parameters, not close ones.
  assert metrics["loss"] == reference["loss"]
  jax.tree.map(np.testing.assert_array_equal,
               restore_params(config, workdir, 12), restore_params(config, reference_dir, 12))


def test_logged_metrics_average_every_step_since_the_last_log(finished_run):
  # Logs every 5 steps, checkpoints every 6: the log at step 10 averages steps 6 to
  # 10, not only those after the save at step 6.
  _, workdir, _ = finished_run
  every_step = FINISHED_STEPS["losses"]
  np.testing.assert_allclose(train_losses(workdir),   # steps 5, 10, 12
                             [np.mean(every_step[0:5]), np.mean(every_step[5:10]),
                              np.mean(every_step[10:12])], rtol=1e-5)


def test_the_loop_runs_at_most_two_steps_ahead_of_the_devices(finished_run):
  # Each step dispatched waits for the one two back: at most two queued, each
  # holding its batch in device memory.
  assert FINISHED_STEPS["waited"] == list(range(10))   # at steps 3 to 12


def test_a_resume_with_other_data_or_schedule_settings_says_so(data_dir, finished_run,
                                                              tmp_path, caplog):
  # More steps (a longer cosine) and another seed (other batches): resumed, with a
  # warning naming both; an unchanged resume warns of nothing.
  config, finished, _ = finished_run
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  longer = config.copy_and_resolve_references()
  longer.update(num_train_steps=13, seed=config.seed + 1, eval_every_steps=13)
  with caplog.at_level("WARNING"):
    train.train_and_evaluate(longer, workdir)
  warnings = [r.getMessage() for r in caplog.records if "Resuming with settings" in r.getMessage()]
  assert len(warnings) == 1
  assert "seed 0 -> 1" in warnings[0] and "num_train_steps 12 -> 13" in warnings[0]
  assert "batch_size" not in warnings[0]
  caplog.clear()
  from grurcn_jax.experiment import assemble
  saved = assemble(config).checkpoints(finished).saved_config(12)
  with caplog.at_level("WARNING"):
    train._warn_if_not_exact(saved, config)   # the same settings, tuples included
  assert not caplog.records
  # One input stream per host (data.num_streams=0): another host count reads
  # other batches.
  assert config.data.num_streams == 0 and saved["run.process_count"] == 1
  with caplog.at_level("WARNING"):
    train._warn_if_not_exact(dict(saved, **{"run.process_count": 2}), config)
  assert "hosts 2 -> 1 (data.num_streams=0" in caplog.records[0].getMessage()
  caplog.clear()
  # Shards left out change the batches; captioning's settings do only in captioning.
  changed = dict(saved, **{"caption.segments": 4, "data.skip_bad_records": True})
  with caplog.at_level("WARNING"):
    train._warn_if_not_exact(changed, config)
    captioning = config.copy_and_resolve_references()
    captioning.task = "captioning"
    train._warn_if_not_exact(changed, captioning)
  first, second = (r.getMessage() for r in caplog.records)
  assert "(data.skip_bad_records True -> False)" in first
  assert "(data.skip_bad_records True -> False; caption.segments 4 -> 8)" in second


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  config = tiny_config(data_dir, learning_rate=1e38, grad_clip_norm=0.0,
                       checkpoint_every_steps=1, log_every_steps=1)
  with pytest.raises(TrainingError, match="non-finite loss or gradient at step") as error:
    train.train_and_evaluate(config, str(tmp_path))
  latest = int(str(error.value).split("newest checkpoint (step ")[1].split(")")[0])
  params = restore_params(config, str(tmp_path), latest)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def one_error(stderr):
  """main's error report: an 'error: ...' line (and at most a hint after it), no
  traceback. Other lines before it (a library's warning) are not main's."""
  lines = [l for l in stderr.strip().splitlines() if l]
  errors = [i for i, l in enumerate(lines) if l.startswith("error: ")]
  return (len(errors) == 1 and len(lines) - errors[0] <= 2
          and "Traceback" not in stderr)


def test_config_that_does_not_match_the_checkpoint(data_dir, finished_run):
  _, workdir, _ = finished_run
  status, _, err = main_in_process(
      f"--workdir={workdir}", *overrides_as_flags(data_dir, hidden="(6,4)"), "--mode=eval")
  assert status == 1
  assert one_error(err) and "model.hidden: checkpoint [4, 4], config [6, 4]" in err


def test_an_optimizer_setting_that_changes_the_state_is_one_clear_error(data_dir, finished_run,
                                                                      tmp_path):
  # The demo trains without clipping; clipping adds optimizer state. The advice
  # after a non-finite loss ("set grad_clip_norm and rerun") leads here. (One step
  # more: the finished run alone would report its evaluation, restoring nothing.)
  _, finished, _ = finished_run
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  status, _, err = main_in_process(f"--workdir={workdir}", *overrides_as_flags(data_dir),
                                   "--config.grad_clip_norm=1.0",
                                   "--config.num_train_steps=13")
  assert status == 1, err[-2000:]
  assert one_error(err) and "another structure" in err
  assert "grad_clip_norm: checkpoint 0.0, config 1.0" in err
  # Evaluation reads the parameters alone: how the run trained (its optimizer, its
  # dropout) does not matter.
  status, out, err = main_in_process(f"--workdir={workdir}", *overrides_as_flags(data_dir),
                                     "--config.grad_clip_norm=1.0", "--mode=eval",
                                     "--config.model.dropout_rate=0.25")
  assert status == 0, err[-2000:]
  with open(os.path.join(workdir, "eval", "test_step12", "eval_metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(finished, "eval_metrics.json")) as f:
    reference = json.load(f)   # training's own evaluation of the same parameters
  assert metrics["step"] == reference["step"] == 12
  assert (metrics["video_accuracy"], metrics["clip_accuracy"]) == (
      reference["video_accuracy"], reference["clip_accuracy"])
  # The same float32 program on the same batches: at most a reordered sum of the
  # demo's ~100 clip losses apart (n * 2^-24 relative).
  assert metrics["loss"] == pytest.approx(reference["loss"], rel=1e-5)


def test_settings_of_how_to_compute_restore_any_checkpoint(data_dir, finished_run, tmp_path):
  # A bfloat16 evaluation with recomputation, of a float32 checkpoint trained
  # without: the state is the same.
  _, finished, _ = finished_run
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  status, out, err = main_in_process(
      f"--workdir={workdir}", *overrides_as_flags(data_dir), "--mode=eval",
      "--config.model.dtype=bfloat16", "--config.model.remat=True",
      "--config.model.recurrence=scan")
  assert status == 0, err[-2000:]
  assert f"Results in {workdir}/eval/test_step12:" in out
  with open(os.path.join(workdir, "eval", "test_step12", "eval_metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(finished, "eval_metrics.json")) as f:
    reference = json.load(f)
  assert metrics["step"] == 12 and metrics["num_videos"] == reference["num_videos"]
  assert np.isfinite(metrics["loss"])


@pytest.mark.parametrize("flag,message", [
    ("--config.model.name=c3d", "model.name='c3d' is not valid; choose one of: grurcn, vgg_frames, vgg_rnn"),
    ("--config.batch_size=12", "batch_size=12 must be a positive multiple of the device count (8 devices"),
    ("--config.optimizer=lamb", "optimizer='lamb' is not valid; choose one of: adam, sgd"),
])
def test_bad_settings_are_one_clear_error(data_dir, tmp_path, flag, message):
  status, _, err = main_in_process(f"--workdir={tmp_path}", *overrides_as_flags(data_dir),
                                   flag)
  assert status == 1, err[-2000:]
  assert one_error(err) and message in err


def test_bad_settings_are_reported_before_a_demo_is_built(tmp_path):
  # The demo config builds its data into an empty data.dir first (a minute or
  # more): a bad value must not wait for that.
  data_dir = tmp_path / "demo"
  status, _, err = main_in_process(f"--workdir={tmp_path / 'run'}",
                                   f"--config.data.dir={data_dir}",
                                   "--config.model.variant=stakced")
  assert status == 1 and one_error(err) and "model.variant='stakced'" in err
  assert not data_dir.exists() or not any(data_dir.iterdir())


def test_a_workdir_that_cannot_hold_a_run_is_one_clear_error(data_dir, tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("")
  for workdir, mode, message in (
      ("", "train", "--workdir is empty"),
      (str(afile), "train", f"--workdir {afile} is a file, not a directory"),
      (str(afile / "run"), "train", f"--workdir {afile / 'run'} cannot be created: "),
      (str(tmp_path / "none"), "eval", f"--workdir {tmp_path / 'none'} does not exist: "
                                       f"--mode=eval evaluates the checkpoints")):
    status, _, err = main_in_process(f"--workdir={workdir}", *overrides_as_flags(data_dir),
                                     f"--mode={mode}")
    assert status == 1 and one_error(err) and message in err, err[-2000:]
  assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("name,contents,message", [
    ("missing.py", None, "No such file or directory"),
    ("folder", "", "Is a directory"),
    ("noget.py", "x = 1\n", "the file defines no get_config()")])
def test_a_config_file_that_does_not_load_is_one_clear_error(tmp_path, monkeypatch, name,
                                                             contents, message):
  from absl import flags
  from grurcn_jax import main
  # ml_collections loads every config file into one module: a config loaded
  # before in this process would lend this one its get_config.
  monkeypatch.delitem(sys.modules, "config_config", raising=False)
  path = tmp_path / name
  if contents == "":
    path.mkdir()
  elif contents:
    path.write_text(contents)
  argv = ["main", f"--config={path}", f"--workdir={tmp_path}"]
  values = flags.FlagValues()
  main.define_flags(values, argv)
  err = io.StringIO()
  with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
    main.parse_flags(argv, values)
  assert exited.value.code == 1
  assert one_error(err.getvalue()) and "error: --config: " in err.getvalue()
  assert message in err.getvalue()


def test_levels_missing_from_the_features_are_a_clear_error(data_dir, tmp_path):
  status, _, err = main_in_process(
      f"--workdir={tmp_path}", *overrides_as_flags(data_dir, levels="('pool2','pool5')"))
  assert status == 1, err[-2000:]
  assert one_error(err) and "model.levels names pool5, which" in err


def test_unknown_config_field_is_rejected(data_dir, tmp_path):
  status, _, err = main_in_process(f"--workdir={tmp_path}", *overrides_as_flags(data_dir),
                                   "--config.model.hiden=(4,4)")
  assert status == 1
  assert one_error(err) and "hiden" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_saves_a_checkpoint_and_stops(data_dir, tmp_path, signum):
  """Also trains where TensorFlow and clu are not installed (a GPU image with JAX
  alone): the threaded loader reads, scalars go to the log and scalars.jsonl. A
  Ctrl-C (SIGINT) does what SIGTERM does: it stopped the run with a traceback,
  losing the steps since the last checkpoint."""
  flags = overrides_as_flags(data_dir, num_train_steps=100_000,
                             checkpoint_every_steps=100_000, eval_every_steps=100_000)
  workdir = tmp_path / "preempted"
  process = subprocess.Popen(
      python_without(("tensorflow", "clu"), "grurcn_jax.main", "--config=configs/demo.py",
                     f"--workdir={workdir}", *flags), cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  logged = []
  for line in process.stderr:  # progress is logged (absl, INFO, stderr)
    logged.append(line)
    if "] step 2/" in line:
      break
  process.send_signal(signum)
  _, err = process.communicate(timeout=300)
  assert process.returncode == (1 if signum == signal.SIGTERM else 130)
  cause = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
  assert f"stopped by {cause} at step" in err and "Traceback" not in err, err[-3000:]
  step = err.split(f"stopped by {cause} at step ")[1].split(";")[0]
  assert os.listdir(workdir / "checkpoints") == [step]
  assert "No TensorBoard files" in "".join(logged)
  assert sorted(os.listdir(workdir)) == ["checkpoints", "compilation_cache",
                                         "scalars.jsonl"]
  with open(workdir / "scalars.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert records[0]["hparams"]["data.loader"] == "auto"
  assert [r["step"] for r in records[1:]] == list(range(1, int(step) + 1))
  assert all(np.isfinite(r["train/loss"]) for r in records[1:])


def test_eval_step_without_eval_mode_is_an_error(tmp_path):
  status, _, err = main_in_process(f"--workdir={tmp_path / 'run'}", "--eval_step=6")
  assert status == 1
  assert err == ("error: --eval_step chooses the checkpoint --mode=eval evaluates: "
                 "give --mode=eval too\n")
  assert not (tmp_path / "run").exists()


def test_a_ctrl_c_outside_the_training_loop_is_one_line(monkeypatch, tmp_path):
  """Before the loop (data building, compilation, a restore): a KeyboardInterrupt
  traceback before; now one line and status 130, exiting at once (a normal exit
  joined orbax's threads of a save under way)."""
  from grurcn_jax import multihost
  from grurcn_jax.data import prepare

  def interrupted(config, workdir):
    raise KeyboardInterrupt
  monkeypatch.setattr(multihost, "exit_now", lambda status: sys.exit(status))
  monkeypatch.setattr(prepare, "ensure_demo", lambda *args, **kwargs: None)
  monkeypatch.setattr(train, "train_and_evaluate", interrupted)
  status, _, err = main_in_process(f"--workdir={tmp_path}")
  assert status == 130
  assert err == ("error: interrupted (Ctrl-C); checkpoints already written are kept: "
                 "run the same command again to resume\n")


@pytest.mark.parametrize("stopping", [False, True])
def test_a_ctrl_c_while_the_other_hosts_are_told_is_one_line(monkeypatch, tmp_path,
                                                             stopping):
  """With several hosts, an error's multihost.fail waits (seconds) for the others
  to hear of it: a Ctrl-C there escaped the error's handler as a traceback. Now:
  one line, status 130, at once (`stopping`: this host's stop already under way;
  else the Ctrl-C came before it, and the others are told of the Ctrl-C)."""
  from grurcn_jax import multihost
  told = []

  def fail(message, **kwargs):
    told.append(message)
    if len(told) == 1:
      raise KeyboardInterrupt   # the Ctrl-C lands while the others are told
  monkeypatch.setattr(multihost, "fail", fail)
  monkeypatch.setattr(multihost, "stopping", lambda: stopping)
  monkeypatch.setattr(multihost, "exit_now", lambda status: sys.exit(status))
  monkeypatch.setattr(multihost, "say_now", lambda message: print(message,
                                                                  file=sys.stderr))
  try:
    status, _, err = main_in_process(f"--workdir={tmp_path / 'run'}", "--eval_step=6")
  except KeyboardInterrupt:   # (escaping, it would stop the whole test session)
    pytest.fail("the Ctrl-C escaped main.run: a traceback")
  assert status == 130 and "Traceback" not in err
  first = ("error: --eval_step chooses the checkpoint --mode=eval evaluates: give "
           "--mode=eval too\n")
  if stopping:
    assert err == first + ("error: interrupted (Ctrl-C) while the other hosts were "
                           "told of the failure: stopped now\n")
    assert told == [first[len("error: "):-1]]
  else:
    assert err == first + ("error: interrupted (Ctrl-C); checkpoints already written "
                           "are kept: run the same command again to resume\n")
    assert told[1:] == ["interrupted (Ctrl-C)"]


def test_a_second_ctrl_c_while_the_other_hosts_are_told_exits_at_once(monkeypatch,
                                                                     tmp_path):
  """The first Ctrl-C (outside the loop) tells the other hosts, seconds; a second
  one then exits at once, in one line, and (a test's stand-in for the exit
  returning) the Ctrl-C handler before it is back."""
  from grurcn_jax import multihost
  from grurcn_jax.data import prepare

  def interrupted(config, workdir):
    raise KeyboardInterrupt
  monkeypatch.setattr(prepare, "ensure_demo", lambda *args, **kwargs: None)
  monkeypatch.setattr(train, "train_and_evaluate", interrupted)
  monkeypatch.setattr(multihost, "fail", lambda message, **kwargs: os.kill(
      os.getpid(), signal.SIGINT))   # the second Ctrl-C, while the others are told
  monkeypatch.setattr(multihost, "exit_now", lambda status: sys.exit(status))
  monkeypatch.setattr(multihost, "say_now", lambda message: print(message,
                                                                  file=sys.stderr))
  before = signal.getsignal(signal.SIGINT)
  try:
    status, _, err = main_in_process(f"--workdir={tmp_path}")
  except KeyboardInterrupt:   # (escaping, it would stop the whole test session)
    pytest.fail("the second Ctrl-C escaped main.run")
  assert status == 130
  assert err == ("error: interrupted (Ctrl-C); checkpoints already written are kept: "
                 "run the same command again to resume\n"
                 "error: Ctrl-C again: stopped now\n")
  assert signal.getsignal(signal.SIGINT) is before


def stop_at_step_3_before_evaluating(config, workdir):
  """Trains `config` (evaluations and checkpoints every 3 steps) until a SIGTERM
  noticed at step 3 stops it: that step saved, not evaluated."""
  from grurcn_jax import checkpoints as checkpoints_lib
  reached, asked = checkpoints_lib.Preemption.reached, []
  with pytest.MonkeyPatch.context() as patch:   # (asked once a step: the third)
    patch.setattr(checkpoints_lib.Preemption, "reached",
                  lambda self: asked.append(1) or len(asked) == 3 or reached(self))
    with pytest.raises(TrainingError, match="stopped by SIGTERM at step 3"):
      train.train_and_evaluate(config, workdir)


def steps_evaluated(monkeypatch):
  """The steps training evaluates from now on, in order (a list that grows)."""
  evaluated, evaluate = [], train._evaluate
  monkeypatch.setattr(train, "_evaluate", lambda evaluator, state, *args, **kwargs: (
      evaluated.append(int(state.step)), evaluate(evaluator, state, *args, **kwargs))[1])
  return evaluated


def test_an_evaluation_stopped_before_it_was_written_runs_on_resume(data_dir, tmp_path,
                                                                    monkeypatch):
  # A SIGTERM noticed at an eval step saves and stops before evaluating; the
  # resumed run starts after that step, and skipped its evaluation.
  config = tiny_config(data_dir, num_train_steps=6, checkpoint_every_steps=3,
                       eval_every_steps=3, log_every_steps=3)
  evaluated = steps_evaluated(monkeypatch)
  stop_at_step_3_before_evaluating(config, str(tmp_path))
  assert evaluated == []
  train.train_and_evaluate(config, str(tmp_path))
  assert evaluated == [3, 6]   # as the uninterrupted run
  # A resume at an eval step whose evaluation, or a later one, is written does not
  # repeat it (the newest checkpoint moved away: the run goes back to step 3).
  shutil.rmtree(tmp_path / "checkpoints" / "6")
  evaluated.clear()
  train.train_and_evaluate(config, str(tmp_path))   # eval_metrics.json: step 6
  assert evaluated == [6]
  shutil.rmtree(tmp_path / "checkpoints" / "6")
  with open(tmp_path / "eval_metrics.json") as f:
    metrics = json.load(f)
  with open(tmp_path / "eval_metrics.json", "w") as f:
    json.dump(dict(metrics, step=3), f)
  evaluated.clear()
  train.train_and_evaluate(config, str(tmp_path))
  assert evaluated == [6]


def test_a_sigterm_during_a_resumes_first_evaluation_stops_it(data_dir, tmp_path,
                                                              monkeypatch):
  """A run stopped at an eval step before evaluating it evaluates that step first
  when resumed, outside the loop: a SIGTERM there was not handled (one process:
  killed; several: evaluated on past the grace). Now it stops between batches,
  and the next resume evaluates the step again and ends as the uninterrupted run."""
  from grurcn_jax import evaluators
  config = tiny_config(data_dir, num_train_steps=6, checkpoint_every_steps=3,
                       eval_every_steps=3, log_every_steps=3)
  stop_at_step_3_before_evaluating(config, str(tmp_path))
  run = evaluators.run_over_batches

  def notice_as_it_starts(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return run(*args, **kwargs)
  unhandled = []   # (without the evaluation's handler, SIGTERM would end pytest)
  previous = signal.signal(signal.SIGTERM, lambda *args: unhandled.append(args))
  try:
    with monkeypatch.context() as patch:
      patch.setattr(evaluators, "run_over_batches", notice_as_it_starts)
      with pytest.raises(TrainingError, match=r"^stopped by SIGTERM during the "
                         r"evaluation of step 3; its checkpoint is saved: run the same "
                         r"command again to resume \(it evaluates step 3 first\)$"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not unhandled
  finally:
    signal.signal(signal.SIGTERM, previous)
  evaluated = steps_evaluated(monkeypatch)
  train.train_and_evaluate(config, str(tmp_path))
  assert evaluated == [3, 6]


def test_a_sigterm_during_an_evaluation_saves_and_stops_at_once(data_dir, tmp_path,
                                                                monkeypatch):
  # A preemption's grace (about 30 s on Cloud) is shorter than a long evaluation:
  # the notice stops it between batches; step 3 is saved although checkpoints come
  # every 6 steps, and the resumed run evaluates it first.
  from grurcn_jax import evaluators
  config = tiny_config(data_dir, num_train_steps=6, checkpoint_every_steps=6,
                       eval_every_steps=3, log_every_steps=3)
  run, steps_run = evaluators.run_over_batches, []

  def notice_as_it_starts(step, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)   # handled by the training loop (one process)
    counted = lambda params, batch: (steps_run.append(1), step(params, batch))[1]
    return run(counted, *args, **kwargs)
  with monkeypatch.context() as patch:
    patch.setattr(evaluators, "run_over_batches", notice_as_it_starts)
    with pytest.raises(TrainingError, match="stopped by SIGTERM during the evaluation "
                                            "of step 3; the checkpoint is saved"):
      train.train_and_evaluate(config, str(tmp_path))
  assert steps_run == [] and not (tmp_path / "eval_metrics.json").exists()
  assert os.listdir(tmp_path / "checkpoints") == ["3"]
  evaluated, evaluate = [], train._evaluate
  monkeypatch.setattr(train, "_evaluate", lambda evaluator, state, *args, **kwargs: (
      evaluated.append(int(state.step)), evaluate(evaluator, state, *args, **kwargs))[1])
  train.train_and_evaluate(config, str(tmp_path))
  assert evaluated == [3, 6]


# -- captioning: the same loop, the task's model, batches and evaluator ----------

@pytest.mark.long
def test_captioning_run_trains_checkpoints_writes_captions_and_evaluates_again(
    tiny_captions_dir, tmp_path, monkeypatch):
  # One test, one run: its compilations are the cost. Without Java: METEOR's and
  # the PTB tokeniser's starts are seconds each, and tests/test_caption_metrics.py
  # checks the Java scorers.
  from grurcn_jax import caption_metrics
  from grurcn_jax.data import captions
  from tests.training_setup import tiny_captioning_config
  monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
  logged, info = [], train.logging.info
  monkeypatch.setattr(train.logging, "info", lambda message, *args: (
      logged.append(str(message) % args if args else str(message)),
      info(message, *args)))
  workdir = str(tmp_path)
  config = tiny_captioning_config(tiny_captions_dir)
  metrics = train.train_and_evaluate(config, workdir)
  # The progress line's rate is of videos (each of several segment clips) and its
  # accuracy the next word's.
  progress = [line for line in logged if line.startswith("step 6/6")]
  assert len(progress) == 1 and " word acc " in progress[0], logged
  assert " videos/s " in progress[0] and "clips/s" not in progress[0], progress
  losses = train_losses(workdir)
  assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  references, vocabulary = captions.read_captions(tiny_captions_dir)
  with open(os.path.join(workdir, "eval_captions.json")) as f:
    written = json.load(f)
  test_ids = sorted(v for v in references if v.startswith("test"))
  assert [c["video_id"] for c in written] == test_ids
  for entry in written:
    assert entry["references"] == references[entry["video_id"]]
    assert set(entry["generated"].split()) <= set(vocabulary.words[4:])
  with open(os.path.join(workdir, "caption_metrics.json")) as f:
    scored = json.load(f)
  assert scored == metrics and scored["step"] == 6 and scored["num_videos"] == 4
  assert {"bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "motion_accuracy"} <= set(scored)
  assert scored["meteor"] is None   # no Java here
  # The metrics are coco-caption's on the written captions.
  again = caption_metrics.score({c["video_id"]: c["references"] for c in written},
                                {c["video_id"]: c["generated"] for c in written},
                                use_java=False)
  assert {k: scored[k] for k in again} == again
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    summary = json.load(f)
  assert summary["eval_captions_file"] == "eval_captions.json"
  assert not os.path.exists(os.path.join(workdir, "eval_scores.npz"))
  texts = [value for name in os.listdir(workdir) if name.startswith("events.out")
           for record in tf.data.TFRecordDataset(os.path.join(workdir, name))
           for value in tf.compat.v1.Event.FromString(record.numpy()).summary.value
           if value.tag == "eval/captions"]
  assert texts and written[0]["generated"] in tf.make_ndarray(texts[0].tensor).item().decode()
  # --mode=eval of the last checkpoint gives the same metrics.
  assert evaluate.evaluate_checkpoint(config, workdir) == metrics
  # A checkpoint of another decoder is refused with the fields named.
  from grurcn_jax.errors import CheckpointMismatchError
  other = config.copy_and_resolve_references()
  other.caption.hidden = 32
  with pytest.raises(CheckpointMismatchError, match="caption.hidden: checkpoint 16"):
    evaluate.evaluate_checkpoint(other, workdir)


# The captioning demo's bound, on a smaller version of the demo (2 min on 2 cores:
# outside the default suite; .ci/run runs it after the suite): motion words (what
# only frame order tells) right on at least 60 % of the 96 test videos. An encoder
# blind to frame order is right on at most 50 % in expectation (a video and its
# time-reversed twin have the same frames and other motion words), and on 58 or
# more of 96 by luck with probability 2.6 %; the frame-average encoder got 9 % on
# the full demo. Measured: 77 % on a 2-core AMD EPYC.
MOTION_BOUND = 0.6


@pytest.mark.demo_bound
@pytest.mark.optimized
def test_captioning_demo_trains_past_its_motion_bound(demo_bound_captions_dir, tmp_path,
                                                       monkeypatch):
  from grurcn_jax import caption_metrics
  from tests.training_setup import demo_bound_captioning_config
  monkeypatch.setattr(caption_metrics, "java_available", lambda: False)  # METEOR unused
  config = demo_bound_captioning_config(demo_bound_captions_dir)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics["num_videos"] == 96 and metrics["step"] == 240
  assert metrics["motion_accuracy"] >= MOTION_BOUND, metrics


def test_captioning_encoder_starts_from_a_classifier_and_stays_frozen(
    finished_run, tiny_captions_dir):
  from grurcn_jax import sharding
  from grurcn_jax.errors import ConfigError
  from grurcn_jax.experiment import assemble
  from tests.training_setup import tiny_captioning_config
  classifier_config, classifier_dir, _ = finished_run   # GRU-RCN pool2, pool3 (4, 4)
  config = tiny_captioning_config(
      tiny_captions_dir, caption__encoder_checkpoint=f"{classifier_dir}@6",
      caption__freeze_encoder=True)
  experiment = assemble(config)
  state = experiment.init_state()
  classifier = restore_params(classifier_config, classifier_dir, 6)["encoder"]
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(state.params["encoder"]["encoder"]), classifier)
  before = jax.device_get(state.params)
  batch = next(experiment.train_batches(config.batch_size, 0))
  state, _ = experiment.train_step()(state, sharding.global_batch(experiment.mesh, batch))
  after = jax.device_get(state.params)
  jax.tree.map(np.testing.assert_array_equal, after["encoder"], before["encoder"])
  assert not np.array_equal(after["decoder"]["out_logits"]["kernel"],
                            before["decoder"]["out_logits"]["kernel"])
  # A classifier of other sizes does not fit: one clear error.
  config.model.hidden = (8, 8)
  with pytest.raises(ConfigError, match="does not fit this encoder"):
    assemble(config).init_state()
