"""Several processes: one host's failure stops every host within seconds, with its error.

A host that fails alone (a data error on its files, a bug) leaves the others
waiting for it in the next collective, and its own exit waits at JAX's shutdown
barrier (up to 5 minutes) for hosts that never come: measured with two CPU
processes, a data error on one left both running past 300 s. JAX's heartbeats
do not help while the failed process still lives. So every host watches one key of
JAX's coordination service; a failing host sets it to its error and exits, and
every other host logs that error and exits with status 1 (process 0, which
hosts the service, last).

A failing host first finishes its part of the computations it has already
dispatched (a training step runs asynchronously while the next batch is read, so
an input error comes with a step under way): the other hosts are in that step's
collectives with it, and a host leaving in the middle of one resets their
connections (measured with two CPU processes: "Gloo all-reduce failed ...
Connection reset by peer" in the other host, a traceback, or an abort). Once a
host knows another failed, its own later errors are consequences: it says so in
one line, not with a traceback.

Errors every host raises together at the same step (preemption, a non-finite
loss) do not need this: those hosts exit normally, together.
"""

import atexit
import os
import sys
import threading
import time
import traceback

from absl import logging

FAILED_KEY = "grurcn_jax/failed"
# Each host's state once a failure is known ("failed": it failed itself; "seen":
# it read another's error) or once it exits normally ("exiting").
_STATE_DIR = "grurcn_jax/state/"
# How long a failing host waits for every host to be accounted for before it exits.
_ACK_SECONDS = 10.0
# Once every host has its news, process 0 sets the instant all exit at (the key
# below), this far ahead: time for every host to read it.
_EXIT_GRACE_SECONDS = 2.0
# Process 0 hosts the coordination service, and a host still talking to it when
# it goes away aborts: process 0 exits this much after the others.
_EXIT_AT_KEY = "grurcn_jax/exit_at"
_LAST_SECONDS = 0.05
# Between a watcher's looks at the key. A look is one request answered at once:
# requests left waiting on the service (a timed-out blocking get) are kept by it,
# about 14 KB each, which over days of a pod's run fills process 0's memory.
_POLL_SECONDS = 1.0
# How long a failing host waits for its dispatched computations to finish. Every
# host dispatches the same steps in the same order, so the others complete them
# with it (a step takes seconds at most); the bound is for a host wedged apart.
_FINISH_SECONDS = 60.0

_lock = threading.Lock()
_stop = threading.Event()
_failing = False     # this host's own error is being reported (fail)
_stopping = False    # this host's stop is under way (fail, or the watcher)
_watching = False


def _state():
  from jax._src import distributed   # the coordination service's client (orbax uses it too)
  return distributed.global_state


def watch() -> None:
  """Starts this host's watcher (once); nothing in a single-process run. At a
  normal exit it stops, and says so to the others, before JAX's own shutdown
  (JAX registers that when it is imported; this hook, registered later, runs
  first)."""
  global _watching
  client = _state().client
  with _lock:
    if client is None or _watching:
      return
    _watching = True
  thread = threading.Thread(target=_watch, args=(client,), name="grurcn-failure-watch",
                            daemon=True)
  thread.start()

  def stop():
    _stop.set()
    thread.join(timeout=2 * _POLL_SECONDS)
    _set_state(client, "exiting")
  atexit.register(stop)


def _watch(client) -> None:
  warned = False
  while not _stop.wait(_POLL_SECONDS):
    try:
      message = client.key_value_try_get(FAILED_KEY)
      break
    except Exception as e:  # noqa: BLE001 (its error types are not exported)
      if "NOT_FOUND" not in str(e) and not warned:
        logging.warning("Watching the other hosts for failures: %s (retrying)", e)
        warned = True
  else:
    return
  global _stopping
  with _lock:
    if _failing:   # this host's own failure: fail() stops it
      return
    _stopping = True
  _stop_for_another(client, message)


def _stop_for_another(client, message: str) -> None:
  _set_state(client, "seen")
  print(f"error: {message}; this process stops too", file=sys.stderr)
  _exit_after_others(client)


def fail(message: str, *, with_traceback: bool = False) -> None:
  """In a run of several processes, tells every host that this one failed with
  `message` (after printing the exception being handled, `with_traceback`), then
  exits with status 1. Returns in a single-process run, and where another host is
  already exiting normally (the caller then exits as usual: JAX's shutdown
  barrier is where that host waits)."""
  global _failing, _stopping
  client = _state().client
  if client is None:
    return
  with _lock:
    already_stopping, _stopping = _stopping, True
    _failing = not already_stopping
  if already_stopping:   # the watcher stops this host for another's failure
    if with_traceback:   # (the caller printed any other error)
      print(f"error: (this process: {message})", file=sys.stderr)
    # Until the watcher's exit (bounded: should that thread die, exit anyway).
    threading.Event().wait(timeout=2 * _ACK_SECONDS + _EXIT_GRACE_SECONDS + 10)
    exit_now(1)
  _finish_dispatched_work(client)
  try:
    client.key_value_set(FAILED_KEY, f"process {_state().process_id} failed: {message}")
  except Exception:  # noqa: BLE001 (another host set it first: it is stopping us all)
    other = _failure_on_record(client)
    if other is not None:
      if with_traceback:   # most likely a consequence of the other's failure
        print(f"error: (this process: {message})", file=sys.stderr)
      _stop_for_another(client, other)
  _set_state(client, "failed")
  if "exiting" in _wait_for_every_host(client).values():
    return
  if with_traceback:
    traceback.print_exc()
  _exit_after_others(client)


def _finish_dispatched_work(client) -> None:
  """Waits (at most _FINISH_SECONDS) until this host's dispatched computations are
  done: the outputs of those under way are live arrays (the failed step's frames
  hold them while its exception is handled). One that failed is done too. Stops
  waiting when another host's failure is on record: that host will not join them
  (two hosts failing a step apart waited here while the first gave up on them,
  and process 0's exit then aborted this one)."""
  import jax

  def wait():
    for array in jax.live_arrays():
      try:
        array.block_until_ready()
      except Exception:  # noqa: BLE001 (failed or deleted: nothing to wait for)
        pass
  waiter = threading.Thread(target=wait, name="grurcn-finish-work", daemon=True)
  waiter.start()
  deadline = time.time() + _FINISH_SECONDS
  while waiter.is_alive() and time.time() < deadline:
    waiter.join(timeout=0.2)
    if waiter.is_alive() and _failure_on_record(client) is not None:
      return


def _failure_on_record(client):
  try:
    return client.key_value_try_get(FAILED_KEY)
  except Exception:  # noqa: BLE001
    return None


def _set_state(client, state: str) -> None:
  try:
    client.key_value_set(f"{_STATE_DIR}{_state().process_id}", state)
  except Exception:  # noqa: BLE001 (set already: a host's first state stands)
    pass


def _wait_for_every_host(client) -> dict:
  """Host -> state, once every host has one (or after _ACK_SECONDS)."""
  hosts = _state().num_processes
  deadline = time.time() + _ACK_SECONDS
  states = {}
  while True:
    try:
      states = dict(client.key_value_dir_get(_STATE_DIR))
    except Exception:  # noqa: BLE001
      return states
    if len(states) >= hosts or time.time() > deadline:
      return states
    time.sleep(0.1)


def _exit_after_others(client) -> None:
  """Exits once every host has its news, at one instant process 0 sets for all.
  A host that leaves while another is still in a collective with it can abort
  that one (gloo: "Connection closed by peer", or "Received data size doesn't
  match" from a step the leaver never joined), and one still talking to the
  coordination service when process 0 (which hosts it) leaves aborts: leaving
  together leaves milliseconds for either, where hosts leaving one by one left
  the grace's 2 s. Process 0 goes last, by _LAST_SECONDS."""
  _wait_for_every_host(client)
  is_process_0 = _state().process_id == 0
  if is_process_0:
    try:
      client.key_value_set(_EXIT_AT_KEY, repr(time.time() + _EXIT_GRACE_SECONDS))
    except Exception:  # noqa: BLE001 (set already: its instant stands)
      pass
  at, deadline = None, time.time() + _ACK_SECONDS + _EXIT_GRACE_SECONDS
  while at is None and time.time() < deadline:
    try:
      at = float(client.key_value_try_get(_EXIT_AT_KEY))
    except Exception:  # noqa: BLE001 (not set yet, or the service is gone)
      time.sleep(0.05)
  if at is not None:
    time.sleep(max(0.0, at + (_LAST_SECONDS if is_process_0 else 0.0) - time.time()))
  exit_now(1)


def stopping() -> bool:
  """Whether this host is stopping for a failure (its own, or another host's)."""
  return _stopping


def exit_now(status: int) -> None:
  """Exits now, output flushed: no shutdown barrier for hosts stuck in a
  collective, no joining of threads that wait on them (orbax's)."""
  # Whatever a flush raises (a reentrant call from a signal handler that
  # interrupted a write, a closed pipe, another Ctrl-C), the exit goes on.
  for flush in (logging.flush, sys.stdout.flush, sys.stderr.flush):
    try:
      flush()
    except BaseException:  # noqa: BLE001
      pass
  os._exit(status)


def say_now(message: str) -> None:
  """`message` and a newline on standard error, written past Python's buffered
  stream: safe in a signal handler that interrupted a write to it (a print there
  raises "reentrant call inside <_io.BufferedWriter>" in the interrupted code,
  turning a Ctrl-C that should save into a traceback)."""
  try:
    descriptor = sys.stderr.fileno()
  except (AttributeError, OSError, ValueError):   # replaced by an in-memory stream
    print(message, file=sys.stderr)
    return
  try:
    os.write(descriptor, (message + "\n").encode())
  except OSError:   # a closed pipe (`| tee` gone): the message is lost, not the stop
    pass
