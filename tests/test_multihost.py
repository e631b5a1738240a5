"""Two processes on one machine (4 CPU devices each, gloo collectives; without
TensorFlow or clu, as on accelerator images that lack them) train the
demo config to the same parameters and eval loss as one process with 8 devices
and the same global batch, each reading only its own data streams; a SIGTERM to
one of them stops both at the same step with the same checkpoint, and the same
command resumes to the uninterrupted result."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from grurcn_jax import evaluate, train
from tests.training_setup import (REPO, overrides_as_flags, python_without,
                                  restore_params, tiny_config)

SETTINGS = dict(num_train_steps=12, checkpoint_every_steps=100, eval_every_steps=12)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_two_processes(data_dir, workdir, logs, module=("grurcn_jax.main",),
                        flags=(), **settings):
  """Both processes of one run (`module`: the program and its first arguments;
  `flags`: more of main's flags); their output goes to files under `logs`. (Without TensorFlow: its import alone
  is seconds per process; the in-process runs test the writer that uses it.)"""
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  processes = []
  for i in range(2):
    out, err = (open(os.path.join(logs, f"{i}.{kind}"), "w") for kind in ("out", "err"))
    processes.append(subprocess.Popen(
        python_without(("tensorflow", "clu"), *module,
                       "--config=configs/demo.py", f"--workdir={workdir}",
                       *overrides_as_flags(data_dir, **{**SETTINGS, **settings}),
                       "--config.data.num_streams=2", *flags,
                       f"--coordinator_address=127.0.0.1:{port}",
                       "--num_processes=2", f"--process_id={i}"),
        cwd=REPO, env=env, stdout=out, stderr=err, text=True))
  return processes


def read(logs, name):
  with open(os.path.join(logs, name)) as f:
    return f.read()


def without_stacks(log, lines=40):
  """A log's last `lines` lines but its stack frames: what a process said before
  an abort's dump (the dump's frames would fill a failure's message)."""
  kept = [l for l in log.splitlines() if not l.startswith(("  File ", "    "))]
  return "\n".join(kept[-lines:])


def wait(processes, timeout=600):
  return [p.wait(timeout=timeout) for p in processes]


def kill_running(processes):
  for p in processes:
    if p.poll() is None:
      p.kill()


def both_fail(processes, logs, timeout=300):
  """The two processes' stderr, once both exited with status 1 (else the test
  fails with what they said)."""
  try:
    statuses = wait(processes, timeout=timeout)
  finally:
    kill_running(processes)
  texts = [read(logs, f"{i}.err") for i in range(2)]
  assert statuses == [1, 1], "\n---\n".join(without_stacks(text) for text in texts)
  return texts


@pytest.mark.long
def test_two_processes_equal_one_and_stop_together_on_one_sigterm(tiny_demo_dir,
                                                                 tmp_path):
  data_dir = tiny_demo_dir
  reference_dir = str(tmp_path / "one")
  config = tiny_config(data_dir, data__num_streams=2, **SETTINGS)
  reference = train.train_and_evaluate(config, reference_dir)

  workdir = str(tmp_path / "two")
  first, second = tmp_path / "first", tmp_path / "second"
  first.mkdir(), second.mkdir()
  processes = start_two_processes(data_dir, workdir, first)
  deadline = time.time() + 600
  while "] step 2/" not in read(first, "0.err"):   # progress is logged to stderr
    assert time.time() < deadline and all(p.poll() is None for p in processes), (
        read(first, "0.err")[-3000:] + read(first, "1.err")[-3000:])
    time.sleep(0.2)
  processes[1].terminate()                        # SIGTERM to ONE host only
  assert wait(processes, timeout=300) == [1, 1]
  messages = [re.findall(r"error: stopped by SIGTERM at step (\d+);",
                         read(first, f"{i}.err")) for i in range(2)]
  assert messages[0] == messages[1] and len(messages[0]) == 1, messages
  step = messages[0][0]
  assert int(step) < SETTINGS["num_train_steps"]
  assert "Traceback" not in read(first, "0.err") + read(first, "1.err")
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [step]

  # The same command resumes and ends where the uninterrupted run did.
  processes = start_two_processes(data_dir, workdir, second)
  assert wait(processes) == [0, 0], read(second, "0.err")[-3000:]
  assert f"from step {step} to 12 on 8 device(s)" in read(second, "0.err")
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    metrics = json.load(f)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted([step, "12"])
  # Their checkpoint evaluated here, in one process, gives their eval metrics
  # exactly: each clip's loss comes from the same per-device program, and the
  # mean is taken over the same clips in the same order.
  here = evaluate.evaluate_checkpoint(config, workdir, 12)
  for key in ("loss", "clip_accuracy", "video_accuracy", "num_videos", "num_clips"):
    assert here[key] == metrics[key], (key, here[key], metrics[key])
  assert metrics["num_videos"] == reference["num_videos"]

  # Against the one-process run's parameters. Two processes sum the gradients
  # across the n = 8 devices in another order: each order is within (n - 1) u of
  # the sum of the terms' magnitudes (u = 2^-24), the two within 2 (n - 1) u of
  # each other, relative, where the terms do not cancel. Adam's step is a ratio of
  # the gradients' moments: it moves by at most twice that relative change times
  # the learning rate, so after T steps most parameters differ by at most
  # T * 2 * 2 (n - 1) u * lr (what they then differ by feeds back through later
  # gradients at a millionth of a step: negligible). Where a gradient cancels to
  # near zero, the ratio can amplify the rounding up to a whole step: a few
  # parameters (on an Intel Xeon the largest difference was 5e-4 lr, the 99th
  # percentile 3.7e-6 lr, the bound 2e-5 lr). A lost step or a wrong batch moves
  # most parameters by about lr.
  steps, lr = SETTINGS["num_train_steps"], config.learning_rate
  bound = steps * 2 * 2 * (8 - 1) * 2 ** -24 * lr
  differences = np.concatenate([
      np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).ravel()
      for a, b in zip(jax.tree.leaves(restore_params(config, workdir, 12)),
                      jax.tree.leaves(restore_params(config, reference_dir, 12)))])
  assert np.isfinite(differences).all()
  assert np.quantile(differences, 0.99) <= bound, (
      np.quantile(differences, [0.5, 0.99, 1]) / lr, bound / lr)


@pytest.mark.long
def test_a_sigterm_to_one_host_during_an_evaluation_stops_both_in_it(tiny_demo_dir,
                                                                     tmp_path):
  """Several hosts learnt of a preemption only at training steps: an evaluation
  (minutes at UCF-101 scale) ran on past the grace (about 30 s). Now every host
  stops at the same evaluation batch and saves that step's checkpoint together."""
  workdir = str(tmp_path / "run")
  processes = start_two_processes(
      tiny_demo_dir, workdir, tmp_path, module=("tests.term_during_eval", "1", "0.5"),
      # 40 batches of half a second: the notice takes about a second to be agreed
      # (JAX's SIGTERM listener looks once a second), more on a loaded machine.
      flags=("--config.data.eval_clips=40",),
      num_train_steps=8, eval_every_steps=4, checkpoint_every_steps=100)
  logs = both_fail(processes, tmp_path)
  for log in logs:
    assert ("error: stopped by SIGTERM during the evaluation of step 4; the "
            "checkpoint is saved" in log), without_stacks(log)
    assert "Traceback" not in log
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]


@pytest.mark.long
def test_a_sigterm_to_one_host_stops_both_in_eval_mode(tiny_demo_dir, tmp_path):
  """--mode=eval on several hosts: JAX catches SIGTERM, and the evaluation ran on
  past the grace. Now both stop at the same batch, nothing written, and both exit:
  a host that left while the other's last dispatched steps still waited in their
  collectives kept it there, hung at exit (2 of 7 runs, before those steps were
  finished first)."""
  workdir = str(tmp_path / "run")
  settings = dict(num_train_steps=2, checkpoint_every_steps=2, eval_every_steps=2)
  train.train_and_evaluate(tiny_config(tiny_demo_dir, data__num_streams=2, **settings),
                           workdir)
  processes = start_two_processes(
      tiny_demo_dir, workdir, tmp_path, module=("tests.term_during_eval", "1", "0.5"),
      flags=("--mode=eval", "--config.data.eval_clips=40"), **settings)
  logs = both_fail(processes, tmp_path)
  for log in logs:
    assert ("error: stopped by SIGTERM during the evaluation of checkpoint 2; nothing "
            "was written: run the same command again to evaluate it" in log), (
                without_stacks(log))
    assert "Traceback" not in log
  assert not os.path.exists(evaluate.results_dir(workdir, "test", 2))


@pytest.mark.parametrize("failing", ["1", "0", "both"])   # 0 hosts the service
def test_a_data_error_on_one_host_stops_every_host_at_once(tiny_demo_dir, tmp_path,
                                                           failing):
  """Alone, the failing host waited at JAX's shutdown barrier and the other in its
  next collective (both still running after 300 s); now every host exits with
  status 1 within seconds of the error, and the others say which host failed and
  why. Two hosts failing together wait for nobody."""
  processes = start_two_processes(
      tiny_demo_dir, str(tmp_path / "run"), tmp_path,
      module=("tests.fail_on_host", failing, "3"), num_train_steps=100_000,
      checkpoint_every_steps=100_000, eval_every_steps=100_000)
  try:
    # Batch 3 fails: after step 2 the error is a step away.
    while "] step 2/" not in read(tmp_path, "0.err"):
      assert all(p.poll() is None for p in processes), read(tmp_path, "0.err")[-3000:]
      time.sleep(0.1)
    near_error = time.time()
    statuses = wait(processes, timeout=240)
    seconds = time.time() - near_error
  finally:
    kill_running(processes)
  logs = [read(tmp_path, f"{i}.err") for i in range(2)]
  assert statuses == [1, 1], "\n---\n".join(without_stacks(log) for log in logs)
  own = "reading features failed: injected on process"
  for i in range(2):
    if failing in ("both", str(i)):
      assert f"error: {own} {i}" in logs[i]
    else:
      assert (f"error: process {failing} failed: {own} {failing}; this process stops "
              f"too" in logs[i]), logs[i][-3000:]
  assert "Traceback" not in logs[0] + logs[1]
  # Seconds: a poll (1 s), process 0's grace (2 s), about 3-5 s in all here; the
  # bound is what none of the slow ways gets under (JAX's heartbeat timeout alone
  # is 100 s; before, both hosts still ran after 300 s), with room for a loaded
  # machine (a timed bound under load is a flake, not a finding).
  assert seconds < 60, seconds


def test_a_host_failing_mid_step_finishes_it_before_it_leaves(tmp_path):
  """A host whose input fails has its last dispatched step still under way, in
  collectives with the other hosts. Leaving then reset their connections: the
  other host failed in that step with "Gloo all-reduce failed ... Connection
  reset by peer" and its traceback (or aborted). Now it finishes its part first,
  and the other stops with the failing host's error."""
  logs = _fail_mid_collective(tmp_path, "one")
  assert all("dispatched" in log for log in logs), logs
  assert ("error: process 1 failed: RuntimeError: injected while its computation "
          "ran; this process stops too") in logs[0], logs[0][-3000:]
  assert "the computation under way finished" in logs[0], logs[0][-3000:]
  # Leaving the next computation, which process 1 never joined, may still close
  # its connections: a consequence, said in one line.
  assert "Traceback" not in logs[0], logs[0][-3000:]


def test_two_hosts_failing_a_step_apart_both_stop_within_seconds(tmp_path):
  """The first fails with nothing under way, the second a step later with a step
  the first never joins: the second's wait for its own step must end when it
  reads the first's failure (it waited 60 s while process 0 gave up on it after
  12 s, and process 0's exit then aborted it)."""
  start = time.time()
  logs = _fail_mid_collective(tmp_path, "apart")
  assert ("error: process 0 failed: RuntimeError: injected on process 0; this "
          "process stops too") in logs[1], logs[1][-3000:]
  # Process 0's error is a bug's (RuntimeError): its traceback is printed. Process
  # 1's is on record after it: one line.
  assert "Traceback" not in logs[1], logs[1][-3000:]
  assert "error: (this process: RuntimeError: injected on process 1)" in logs[1], (
      logs[1][-3000:])
  assert time.time() - start < 60   # (about 10 s here, with the programs' starts)


def _fail_mid_collective(tmp_path, case):
  """Both processes of tests/fail_mid_collective.py `case`: their statuses (both
  1, or the test fails) and stderr."""
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  processes = [subprocess.Popen(
      python_without(("tensorflow", "clu"), "tests.fail_mid_collective", str(i),
                     str(port), case),
      cwd=REPO, env=env, stdout=open(tmp_path / f"{i}.out", "w"),
      stderr=open(tmp_path / f"{i}.err", "w"), text=True) for i in range(2)]
  return both_fail(processes, tmp_path)


@pytest.mark.parametrize("where", ["compile_cache", "report"])
def test_an_error_anywhere_in_a_run_reaches_the_other_hosts(monkeypatch, tmp_path, where):
  """Setting up the compilation cache and writing the final report are part of the
  run too: an error there, as in training, is passed to every host."""
  from grurcn_jax import compile_cache, errors, main, multihost
  from grurcn_jax.data import prepare
  from tests.training_setup import main_in_process
  failed = []
  monkeypatch.setattr(multihost, "fail",
                      lambda message, with_traceback=False: failed.append(message))
  monkeypatch.setattr(prepare, "ensure_demo", lambda *args, **kwargs: None)
  monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: {"step": 1})

  def raising(error):
    def fn(*args, **kwargs):
      raise error
    return fn

  if where == "compile_cache":
    monkeypatch.setattr(compile_cache, "enable", raising(errors.ConfigError("no cache")))
    status, _, err = main_in_process(f"--workdir={tmp_path}")
    assert status == 1 and "error: no cache" in err
    assert failed == ["no cache"]
  else:
    monkeypatch.setattr(main, "_final_report", raising(KeyError("video_accuracy")))
    with pytest.raises(KeyError):   # a bug: its traceback
      main_in_process(f"--workdir={tmp_path}")
    assert failed == ["KeyError: 'video_accuracy'"]


def test_process_flags_without_a_coordinator_are_a_usage_error(tmp_path):
  # Each process would otherwise run alone as process 0, all in one workdir.
  result = subprocess.run(
      [sys.executable, "-m", "grurcn_jax.main", "--config=configs/demo.py",
       f"--workdir={tmp_path}", "--num_processes=2", "--process_id=1"],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().endswith("--num_processes and --process_id need "
                                        "--coordinator_address (host:port of process 0)")
  assert not os.listdir(tmp_path)
