"""Several processes: one host's failure stops every host at once, with its error.

A host that fails alone (a data error on its files, a bug) leaves the others
waiting for it in the next collective, and its own exit waits at JAX's shutdown
barrier (up to 5 minutes) for hosts that never come: measured with two CPU
processes, a data error on one left both running for good. JAX's heartbeats do
not help while the failed process still lives. So every host watches one key of
JAX's coordination service; a failing host sets it to its error and exits, and
every other host logs that error and exits at once with status 1.

Errors every host raises together at the same step (preemption, a non-finite
loss) do not need this: those hosts exit normally, together.
"""

import atexit
import os
import sys
import threading
import time
import traceback
from typing import Optional

from absl import logging

FAILED_KEY = "grurcn_jax/failed"
_SEEN_DIR = "grurcn_jax/failure_seen/"
# How long a failing host waits for the others to have read its error before it
# exits: process 0 hosts the coordination service, which goes with it.
_ACK_SECONDS = 10.0
# How long process 0 gives the others to exit after they have all read the error.
_EXIT_GRACE_SECONDS = 2.0

# A watcher's wait on the service, renewed until the process ends.
_POLL_MS = 1000

_lock = threading.Lock()
_stop = threading.Event()
_failing = False
_watching = False


def _client():
  from jax._src import distributed   # the coordination service's client (orbax uses it too)
  return distributed.global_state.client


def _process() -> int:
  from jax._src import distributed
  return distributed.global_state.process_id


def watch() -> None:
  """Starts this host's watcher (once); nothing in a single-process run. It stops
  when the process exits normally, before JAX's own shutdown: a request still
  waiting on the service when it goes away aborts the process."""
  global _watching
  client = _client()
  with _lock:
    if client is None or _watching:
      return
    _watching = True
  thread = threading.Thread(target=_watch, args=(client,), name="grurcn-failure-watch",
                            daemon=True)
  thread.start()

  def stop():
    _stop.set()
    thread.join(timeout=2 * _POLL_MS / 1000)
  atexit.register(stop)   # registered after jax.distributed's: runs before it


def _watch(client) -> None:
  while not _stop.is_set():
    try:
      # The call releases the GIL: training runs on while it waits.
      message = client.blocking_key_value_get(FAILED_KEY, _POLL_MS)
      break
    except Exception as e:  # noqa: BLE001 (its error types are not exported)
      if "DEADLINE_EXCEEDED" in str(e) or "timed out" in str(e).lower():
        continue
      return   # the service is shutting down: the run is ending anyway
  else:
    return
  with _lock:
    if _failing:   # this host's own failure: it exits by itself
      return
  try:
    client.key_value_set(f"{_SEEN_DIR}{_process()}", "1")
  except Exception:  # noqa: BLE001
    pass
  print(f"error: {message}; this process stops too", file=sys.stderr)
  if _process() == 0:
    # The coordination service goes with process 0, and a host still talking to
    # it then aborts: the others (the failing one too, once it has seen every
    # host read its error) exit first.
    _wait_for_others(client)
    time.sleep(_EXIT_GRACE_SECONDS)
  _exit(1)


def fail(message: str, *, with_traceback: bool = False) -> None:
  """In a run of several processes, tells every host that this one failed with
  `message` (after printing the exception being handled, `with_traceback`), then
  exits with status 1 (never returns). In a single-process run, returns: the
  caller exits as it would."""
  global _failing
  client = _client()
  if client is None:
    return
  if with_traceback:
    traceback.print_exc()
  with _lock:
    _failing = True
  process = _process()
  try:
    client.key_value_set(FAILED_KEY, f"process {process} failed: {message}")
  except Exception:  # noqa: BLE001 (another host set it first: it is stopping us all)
    pass
  _wait_for_others(client)
  _exit(1)


def _wait_for_others(client, seconds: Optional[float] = None) -> None:
  import jax
  others = jax.process_count() - 1
  deadline = time.time() + (_ACK_SECONDS if seconds is None else seconds)
  while time.time() < deadline:
    try:
      if len(client.key_value_dir_get(_SEEN_DIR)) >= others:
        return
    except Exception:  # noqa: BLE001
      return
    time.sleep(0.1)


def _exit(status: int) -> None:
  """Exits now: no shutdown barrier for hosts stuck in a collective."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)
