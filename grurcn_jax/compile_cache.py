"""JAX's persistent compilation cache for a run, and what it saved.

A run restarted after preemption, a crash or a kill compiles its train and eval
steps again; on a TPU slice at paper shapes that is minutes per restart. With
`config.compilation_cache_dir` (default '{workdir}/compilation_cache') the
compiled programs are stored on disk, and a restarted run, or `--mode=eval` of the
same model, loads them. JAX keys each entry on the program, the compile options,
the devices and its own version, so a changed model or JAX compiles anew. Only
process 0 writes (JAX's rule); every host reads, so on several hosts the
directory must be one they share (a gs:// workdir is). Programs that compile in
under `jax_persistent_cache_min_compile_time_secs` (1 s) are not stored.

`main` calls `enable` first thing: JAX makes its cache once, in the directory
set at the time, and keeps it. A `JAX_COMPILATION_CACHE_DIR` (or
`jax_compilation_cache_dir`) the user set is used instead of the config's.
"""

import threading

from absl import logging
import jax

# Events JAX's compiler records (jax.monitoring).
_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
_HIT = "/jax/compilation_cache/cache_hits"
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"

_lock = threading.Lock()
_counts = {"requests": 0, "hits": 0, "saved_s": 0.0}
_directory = None


def directory_for(setting: str, workdir: str) -> str:
  """The cache directory `config.compilation_cache_dir` names for `workdir` ('' for
  none): '{workdir}' in it stands for the workdir."""
  return setting.replace("{workdir}", workdir.rstrip("/")) if setting else ""


def enable(directory: str) -> None:
  """Stores and loads this process's compiled programs in `directory` ('' leaves
  the cache off), or in the one JAX was already given."""
  global _directory
  given = jax.config.jax_compilation_cache_dir
  if given:
    directory = given
  if not directory:
    return
  jax.config.update("jax_compilation_cache_dir", directory)
  if "://" in directory:
    # JAX also points XLA's GPU autotuning cache into the directory, written by
    # XLA's own file layer, which may not reach remote file systems.
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
  with _lock:
    if _directory is None:
      jax.monitoring.register_event_listener(_on_event)
      jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _directory = directory
  logging.info("Compiled programs are stored in and loaded from %s", directory)


def _on_event(event: str, **_) -> None:
  if event in (_REQUEST, _HIT):
    with _lock:
      _counts["requests" if event == _REQUEST else "hits"] += 1


def _on_duration(event: str, duration_secs: float, **_) -> None:
  if event == _SAVED:
    with _lock:
      _counts["saved_s"] += duration_secs


def counts() -> dict:
  """Programs compiled through the cache since `enable` ('requests'), those loaded
  from it ('hits') and the compile seconds JAX says that saved ('saved_s')."""
  with _lock:
    return dict(_counts)


def summary() -> str:
  """One phrase for the log: what the cache did so far."""
  if _directory is None:
    return "no compilation cache"
  c = counts()
  return (f"{c['hits']} of {c['requests']} programs loaded from the compilation cache "
          f"(saved {c['saved_s']:.1f} s of compiling)")
