"""Orbax checkpoints and preemption: when to save, and saving.

The only module that talks to orbax. Each checkpoint holds the train state and the
config it was trained with (JSON), so restoring into a different model fails with a
message naming what differs instead of a shape error deep inside orbax. Saves are
asynchronous; `wait` blocks until the last one is durable (before exit, and before
anything that must see it).
"""

import itertools
import logging
import re
import signal
import threading
from typing import Any, Mapping, Optional, Sequence, Tuple

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from grurcn_jax import config_validation, files, multihost
from grurcn_jax.errors import CheckpointMismatchError, CheckpointReadError, ConfigError


# A run's checkpoints live in this folder of its workdir.
SUBDIR = "checkpoints"
# Saved beside the config: the host count (with data.num_streams=0 it decides the
# batches).
RUN_PROCESS_COUNT = "run.process_count"


def _flatten(config: Mapping) -> dict:
  """Dotted names -> JSON values (tuples become lists, as JSON reads them back)."""
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in config_validation.flatten(config).items()}


_ONE_REPLICA_REGISTERED = False


def _write_each_array_from_one_replica() -> None:
  """Orbax's default splits each replicated array over its replicas to copy it to
  the host in parallel, compiling a slicing program per array shape: on 8
  devices the first save of this package's train state blocked for 5.6 s (0.05 s
  without), while its arrays are small enough for one replica to copy. The
  registration is process-wide (orbax keeps one registry per process), once."""
  global _ONE_REPLICA_REGISTERED
  if _ONE_REPLICA_REGISTERED:
    return
  quiet = _DropMessages("overriding")   # orbax warns of any override: this one is meant
  logging.getLogger("absl").addFilter(quiet)
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
        override=True)
  finally:
    logging.getLogger("absl").removeFilter(quiet)
  _ONE_REPLICA_REGISTERED = True


class _DropMessages(logging.Filter):
  def __init__(self, text: str):
    super().__init__()
    self._text = text

  def filter(self, record: logging.LogRecord) -> bool:
    return self._text not in record.getMessage()


class Checkpoints:
  """Save, find and restore the train state of one workdir."""

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    _write_each_array_from_one_replica()
    self._manager = ocp.CheckpointManager(
        files.absolute(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=True),
        item_names=("state", "config"))
    # Orbax asks JAX's preemption sync point too: in save() and, from its background
    # finalisation, with the step it saved. JAX's sync manager takes the last step
    # it is given as this host's position, so an older one from that thread could
    # place the host behind where it is; the hosts' agreed step could then lie
    # behind it too, never be seen here, and leave the others waiting in the save.
    # `Preemption.reached` stays the one caller, counting its sync points in order.
    self._manager.reached_preemption = lambda step: False

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, config: Mapping) -> None:
    """Starts an asynchronous save (returns before it is on disk)."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave({**_flatten(config),
                                  RUN_PROCESS_COUNT: jax.process_count()})), force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def saved_config(self, step: int) -> dict:
    """The config checkpoint `step` was trained with, as dotted names (a field it
    predates as its default)."""
    saved = self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]
    return {**_flatten(config_validation.schema()), **saved}

  def restore(self, abstract_state: Any, contract: Mapping,
              step: Optional[int] = None, config: Optional[Mapping] = None,
              state_fields: Sequence[str] = ()) -> Any:
    """Restores `step` (default: newest) into the shapes and shardings of
    `abstract_state` (a pytree of jax.ShapeDtypeStruct), after checking that the
    checkpoint was trained with the config fields of `contract` (e.g. {'model':
    ..., 'data': {'input': ...}}). A field a checkpoint predates counts as its
    default. `config`, the run's whole config, names the settings that differ when
    the saved state has another structure all the same (an optimizer setting that
    adds or drops optimizer state, say): those of `state_fields` (dotted names)
    that differ, or where none does, every one that differs."""
    step, differences = self._checked(step, contract)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except (OSError, ValueError) as e:
      if "do not match" not in str(e):
        raise self._unreadable(step, e) from None
      differ = ""
      if config is not None:
        flat = _flatten(config)
        differ = (differences({k: flat[k] for k in state_fields if k in flat})
                  or differences(config))
      raise CheckpointMismatchError(
          f"the checkpoint at step {step} in {self._manager.directory} holds a train "
          f"state of another structure than this config builds (settings that differ: "
          f"{differ or 'none found'}); use a fresh --workdir or the same settings"
      ) from None

  def restore_params(self, abstract_params: Any, contract: Mapping,
                     step: Optional[int] = None) -> Tuple[Any, int]:
    """The parameters of checkpoint `step` (default: newest) alone, into the
    shapes and shardings of `abstract_params`, after the same check of `contract`
    as `restore`; and the step. For evaluation: the optimiser state is not read
    (Adam's is twice the parameters), so settings of how to train do not matter."""
    step, _ = self._checked(step, contract)
    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape,
                                       dtype=a.dtype), abstract_params)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore({"params": abstract_params},
                                       restore_args={"params": restore_args},
                                       partial_restore=True)))["state"]
    except (OSError, KeyError, ValueError) as e:
      raise self._unreadable(step, e) from None
    return restored["params"], step

  def _checked(self, step: Optional[int], contract: Mapping):
    """(step, differences): `step` (default: newest) after checking that it exists
    and was trained with the config fields of `contract`; `differences(wanted)`
    names the settings of `wanted` that the checkpoint's config does not share."""
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise ConfigError(f"no checkpoint for step {step} in {self._manager.directory}; "
                        f"available: {self.all_steps() or 'none'}")
    try:
      saved = self.saved_config(step)
    except (OSError, KeyError, ValueError) as e:
      raise self._unreadable(step, e) from None

    def differences(wanted: Mapping) -> str:
      wanted = _flatten(wanted)
      return "; ".join(f"{k}: checkpoint {saved.get(k)!r}, config {wanted[k]!r}"
                       for k in sorted(wanted) if saved.get(k) != wanted[k])

    differ = differences(contract)
    if differ:
      raise CheckpointMismatchError(
          f"the checkpoint at step {step} in {self._manager.directory} was trained with "
          f"another config ({differ}); use a fresh --workdir or the same settings")
    return step, differences

  def _unreadable(self, step: int, error: Exception) -> CheckpointReadError:
    others = [s for s in self.all_steps() if s != step]
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointReadError(
        f"the checkpoint at step {step} in {self._manager.directory} cannot be read "
        f"({type(error).__name__}: {reason[:300]}). If the storage was unreachable, "
        f"run again; if its files are damaged or partly deleted (a copy cut short), "
        f"move step {step}'s directory away to resume from the newest of the others "
        f"there ({others or 'none'}), or evaluate one with --eval_step")

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def location(text: str, name: str, form: str = "DIR") -> Tuple[str, Optional[int]]:
  """'DIR[@STEP]' (a run's workdir, a step of it; the newest without one) ->
  (DIR, STEP or None); `name` says what gave it in a ConfigError, `form` how DIR
  is written there. What follows the last '@' is the step, unless a '/' follows
  it too (an '@' in a parent directory's name: /runs/a@b/run)."""
  match = re.fullmatch(r"(.+)@([^/@]*)", text)
  if match:
    if not match.group(2).isdigit():
      raise ConfigError(f"{name}: the step after '@' must be a number ({form}@STEP)")
    return match.group(1), int(match.group(2))
  if not text:
    raise ConfigError(f"{name} needs a directory: {form} or {form}@STEP (a run's "
                      f"workdir)")
  return text, None


def _reading_manager(directory: str):
  """(a manager reading the checkpoints of a run's workdir or checkpoints folder
  `directory`, that folder's path); ConfigError where there is none."""
  from etils import epath
  path = epath.Path(files.absolute(directory))
  if (path / SUBDIR).is_dir():
    path = path / SUBDIR
  if not path.is_dir():
    raise ConfigError(f"no checkpoints at {directory}: give a run's workdir or its "
                      f"{SUBDIR} folder")
  manager = ocp.CheckpointManager(
      path, item_names=("state", "config"),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler()})
  return manager, path


def newest_step(directory: str) -> int:
  """The newest checkpoint's step in a run's workdir (or its checkpoints folder),
  read from the folder's listing, no arrays; ConfigError where there is none."""
  manager, path = _reading_manager(directory)
  try:
    step = manager.latest_step()
  finally:
    manager.close()
  if step is None:
    raise ConfigError(f"no checkpoints in {path}")
  return step


def read_params(directory: str, subtree: str,
                step: Optional[int] = None) -> Tuple[Any, dict, int]:
  """The parameters under params/`subtree` of a checkpoint, as numpy arrays (the
  rest of the state, optimiser moments included, is not read), with the config it
  was trained with (dotted names) and its step: a trained network's weights for
  use outside its run, e.g. stage 1's fine-tuned VGG-16 driving extraction.

  `directory` is a run's workdir or its checkpoints folder; `step` defaults to the
  newest. Raises ConfigError when there is no such checkpoint or the parameters
  have no `subtree`.
  """
  import numpy as np
  manager, path = _reading_manager(directory)
  try:
    steps = list(manager.all_steps())
    if not steps:
      raise ConfigError(f"no checkpoints in {path}")
    step = manager.latest_step() if step is None else step
    if step not in steps:
      raise ConfigError(f"no checkpoint for step {step} in {path}; available: {steps}")
    metadata = manager.item_metadata(step)["state"]
    params = dict(getattr(metadata, "tree", metadata) or {}).get("params", {})
    if subtree not in params:
      raise ConfigError(f"the checkpoint at step {step} in {path} has no {subtree!r} "
                        f"parameters (it has: {', '.join(sorted(params)) or 'none'})")
    target = {"params": {subtree: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype),
                                               params[subtree])}}
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            target, restore_args=jax.tree.map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target),
            partial_restore=True),
        config=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return restored["state"]["params"][subtree], dict(restored["config"]), step


def abstract_like(tree: Any, sharding) -> Any:
  """Shape/dtype/sharding structs of `tree` (a restore target, no memory)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


# The preemption sync points this process has asked, counted for all its
# Preemption objects (JAX's sync manager is one per process: a count started again
# would place this host behind where it is). Every host asks at the same points.
_SYNC_POINTS = itertools.count(1)


class Preemption:
  """Whether to save and stop at this step, the same answer on every host.

  A preemption notice (SIGTERM) can reach one host of a slice alone, while saving
  is collective: hosts that decided at different steps would each wait for the
  others' part of a different save. With several processes, JAX's distributed
  runtime catches SIGTERM and its coordination service makes every host see the
  preemption at the same point, a step or an evaluation batch
  (`reached_preemption_sync_point`, what orbax's `reached_preemption` uses). A
  single process turns SIGTERM into a flag, and a first Ctrl-C (SIGINT) too: it
  stopped the run where it was, losing the steps since the last checkpoint; a
  second one stops at once.
  """

  def __init__(self, ctrl_c: bool = True):
    """`ctrl_c`: a first Ctrl-C asks to stop too (training: it saves first); else
    it interrupts as usual (an evaluation has nothing to save)."""
    self._requested = False
    self._previous = {}
    self._ctrl_c = ctrl_c
    self.cause = "SIGTERM"   # what `reached` answers for (several processes: SIGTERM)

  def __enter__(self):
    single = jax.process_count() == 1
    if single and threading.current_thread() is threading.main_thread():
      # An ignored SIGINT stays ignored (a job started in the background by a
      # script does not take the terminal's Ctrl-C).
      signals = [signal.SIGTERM] + ([signal.SIGINT] if self._ctrl_c and signal.getsignal(
          signal.SIGINT) is not signal.SIG_IGN else [])
      self._previous = {s: signal.signal(s, self._handle) for s in signals}
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self._requested:   # asked twice: now
        # Not a KeyboardInterrupt: raised inside an orbax save, the normal exit
        # that follows joined its threads, which can wait 20 minutes.
        multihost.say_now("\nerror: Ctrl-C again: stopped now; checkpoints already "
                          "written are kept (one being written is not)")
        multihost.exit_now(130)
      multihost.say_now("Ctrl-C: saving a checkpoint at the end of this step, then "
                        "stopping (Ctrl-C again stops at once)")
    if not self._requested:
      self.cause = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    self._requested = True

  @property
  def exit_status(self) -> int:
    """The program's status once stopped: 130 for a Ctrl-C (as a shell reports
    one), else 1."""
    return 130 if self.cause == "Ctrl-C" else 1

  @property
  def requested(self) -> bool:
    """A SIGTERM (or Ctrl-C) has come, in a single-process run (several processes
    learn of it together: `reached`)."""
    return self._requested

  def reached(self) -> bool:
    """Whether to stop here: every host gets the same answer at the same point.
    Call at the same points on every host, in the same order: once per training
    step, and before each evaluation batch (an evaluation at UCF-101 scale takes
    minutes; a preemption's grace is about 30 s)."""
    if jax.process_count() > 1:
      return bool(multihost_utils.reached_preemption_sync_point(next(_SYNC_POINTS)))
    return self._requested

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
