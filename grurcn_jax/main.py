"""Entry point: train (resuming by itself) or evaluate a GRU-RCN experiment.

  python -m grurcn_jax.main --config=configs/demo.py --workdir=/tmp/grurcn_demo
  python -m grurcn_jax.main --config=configs/demo.py --workdir=/tmp/grurcn_demo --mode=eval

Config fields are overridden with --config.FIELD=VALUE (configs/default.py lists
them). Errors in the config, the data or the run are printed as one message.
Progress is logged at INFO (absl logging, to stderr); other libraries' INFO
messages show only with an explicit --verbosity.
"""

import logging as std_logging
import os
import signal
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS, argv=None) -> None:
  """The entry point's flags, defined into `flag_values` (a fresh FlagValues and
  the `argv` it will parse run the command in-process, as the tests do: the
  --config.FIELD overrides are found in argv when the flags are defined)."""
  kw = dict(flag_values=flag_values)
  config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                  lock_config=True, sys_argv=argv, **kw)
  flags.DEFINE_string("workdir", None, "Checkpoints, metrics and eval results go here.",
                      **kw)
  flags.DEFINE_enum("mode", "train", ["train", "eval"],
                    "train (and evaluate) or eval only.", **kw)
  flags.DEFINE_integer("eval_step", None,
                       "--mode=eval: checkpoint step (default newest). Results go to "
                       "WORKDIR/eval/{split}_step{N}/.", **kw)
  flags.DEFINE_bool("distributed", False,
                    "Multi-host where JAX detects the cluster (Cloud TPU pod slices): "
                    "call jax.distributed.initialize() before anything else.", **kw)
  flags.DEFINE_string("coordinator_address", None,
                      "Multi-host without auto-detection: host:port of process 0.", **kw)
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.", **kw)
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.", **kw)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def _initialize_distributed():
  if not FLAGS.coordinator_address and (FLAGS.num_processes is not None
                                        or FLAGS.process_id is not None):
    # Without it each process would run alone as process 0, all in one workdir.
    raise app.UsageError("--num_processes and --process_id need --coordinator_address "
                         "(host:port of process 0)")
  import jax
  if FLAGS.distributed and not FLAGS.coordinator_address:
    jax.distributed.initialize()
  elif FLAGS.coordinator_address:
    if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)


class _OwnInfoOnly(std_logging.Filter):
  """Passes warnings and errors, and INFO only from this package: orbax, clu and
  TensorFlow log a lot at INFO."""

  _package = os.path.dirname(os.path.abspath(__file__))

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(
        self._package)


def configure_logging():
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_OwnInfoOnly())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  configure_logging()
  _initialize_distributed()
  from grurcn_jax import multihost
  multihost.watch()   # one host's failure stops every host (multihost.py)
  run(FLAGS)


def run(values: flags.FlagValues) -> None:
  """Trains or evaluates as the parsed `values` say; an error of the config, the
  data or the run is one line on stderr and exit status 1; a Ctrl-C outside the
  training loop (which saves first), one line and status 130."""
  from grurcn_jax import multihost
  try:
    _run(values)
  except KeyboardInterrupt:
    previous = _exit_on_another_ctrl_c()
    try:
      if multihost.stopping():   # while the other hosts are told of a failure
        multihost.say_now("error: interrupted (Ctrl-C) while the other hosts were "
                          "told of the failure: stopped now")
        multihost.exit_now(130)
      print("error: interrupted (Ctrl-C); checkpoints already written are kept: run "
            "the same command again to resume", file=sys.stderr)
      try:
        multihost.fail("interrupted (Ctrl-C)")   # with several hosts: all stop now
      except KeyboardInterrupt:   # Ctrl-C again while they are told: stop now
        pass
      # Now: a normal exit joins orbax's threads of a save under way, which can
      # wait for their 20-minute timeout.
      multihost.exit_now(130)
    finally:   # (reached only where exit_now returns: a test's stand-in)
      if previous is not None:
        signal.signal(signal.SIGINT, previous)


def _exit_on_another_ctrl_c():
  """From now on a Ctrl-C exits at once (this host is stopping: with several, for
  seconds while the others are told); the handler it replaces, or None."""
  from grurcn_jax import multihost
  if threading.current_thread() is not threading.main_thread():
    return None

  def now(signum, frame):
    del signum, frame
    multihost.say_now("error: Ctrl-C again: stopped now")
    multihost.exit_now(130)
  return signal.signal(signal.SIGINT, now)


def _run(values: flags.FlagValues) -> None:
  from grurcn_jax import compile_cache, errors, experiment, multihost, train
  from grurcn_jax.data import prepare
  config = values.config
  try:   # all of it: an error anywhere must reach the other hosts (multihost.fail)
    if values.eval_step is not None and values.mode != "eval":
      # It was ignored: a whole training run went by instead.
      raise errors.ConfigError("--eval_step chooses the checkpoint --mode=eval "
                               "evaluates: give --mode=eval too")
    workdir = _workdir(values.workdir, values.mode)
    # Before anything compiles (the demo's extraction does).
    compile_cache.enable(compile_cache.directory_for(config.compilation_cache_dir,
                                                     workdir))
    experiment.validate(config)   # before a demo's data is built (minutes)
    prepare.ensure_demo(config.data, task=config.task)
    if values.mode == "train":
      metrics = train.train_and_evaluate(config, workdir)
    else:
      from grurcn_jax import evaluate
      metrics = evaluate.evaluate_checkpoint(config, workdir, values.eval_step)
    _report(metrics, values.mode, workdir, config)
  except errors.TrainingError as e:   # every host raises it at the same step
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_status)
  except errors.Error as e:
    print(f"error: {e}", file=sys.stderr)
    multihost.fail(str(e))   # with several hosts: all stop now (never returns)
    sys.exit(1)
  except Exception as e:  # a bug: its traceback, and on several hosts all stop
    multihost.fail(f"{type(e).__name__}: {e}", with_traceback=True)
    raise


def _workdir(given: str, mode: str) -> str:
  """--workdir, absolute (`~` expanded); one that cannot hold a run is a
  ConfigError, found before anything is trained."""
  from grurcn_jax import files
  from grurcn_jax.errors import ConfigError
  if not given.strip():
    raise ConfigError("--workdir is empty: give the run's directory")
  workdir = files.absolute(given)
  if mode == "eval" and files.is_local(workdir) and not os.path.exists(workdir):
    raise ConfigError(f"--workdir {workdir} does not exist: --mode=eval evaluates "
                      f"the checkpoints of a run there")
  files.ensure_directory(workdir, "--workdir")
  return workdir


def _report(metrics, mode: str, workdir: str, config) -> None:
  import jax
  if jax.process_index() == 0:
    if mode == "train":
      print(_final_report(metrics, workdir, workdir))
    else:
      from grurcn_jax import evaluate
      print(_final_report(metrics, workdir, evaluate.results_dir(
          workdir, config.data.eval_split, metrics["step"])))


def _final_report(metrics, workdir: str, results: str) -> str:
  """The run's result and where its files are (`results`: the workdir after
  training, a subdirectory of it after --mode=eval)."""
  checkpoints = "checkpoints/, " if results == workdir else ""
  if "cider" in metrics:   # captioning
    meteor = "n/a" if metrics["meteor"] is None else f"{metrics['meteor']:.3f}"
    motion = (f", motion words right {metrics['motion_accuracy']:.3f}"
              if "motion_accuracy" in metrics else "")
    return (f"\nBLEU-4 {metrics['bleu_4']:.3f}, METEOR {meteor}, CIDEr "
            f"{metrics['cider']:.3f}, ROUGE-L {metrics['rouge_l']:.3f}{motion} on "
            f"{metrics['num_videos']} videos at step {metrics['step']}.\n"
            f"Results in {results}:\n"
            f"  eval_captions.json (every video's caption and references),\n"
            f"  caption_metrics.json, {checkpoints}and TensorBoard logs (sample "
            f"captions under Text):\n  tensorboard --logdir={workdir}")
  levels = ", ".join(f"{k} {v:.3f}" for k, v in metrics["per_level_video_accuracy"].items())
  return (f"\nVideo accuracy {metrics['video_accuracy']:.3f} (clip "
          f"{metrics['clip_accuracy']:.3f}; per level: {levels}) on "
          f"{metrics['num_videos']} videos at step {metrics['step']}.\n"
          f"Results in {results}:\n"
          f"  eval_metrics.json, eval_scores.npz (per-video scores for grurcn_jax.fuse),\n"
          f"  confusion_matrix.png, {checkpoints}and TensorBoard logs:\n"
          f"  tensorboard --logdir={workdir}")


def parse_flags(argv, flag_values: flags.FlagValues = FLAGS):
  """absl's flag parsing with config errors as one line (`flag_parsing.parse`)."""
  from grurcn_jax import flag_parsing
  return flag_parsing.parse(argv, flag_values)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
