"""Files, local or remote: the standard library for local paths, tf.io.gfile for
gs:// and other remote file systems (TensorFlow is imported then, and only then),
so a machine without TensorFlow reads and writes local workdirs and feature
directories."""

import os
from typing import List, Optional


def is_local(path: str) -> bool:
  return "://" not in path


def absolute(path: str) -> str:
  """A local `path` absolute, `~` expanded (a shell leaves it as is after `=`);
  a remote one as it is. Orbax refuses relative checkpoint paths."""
  return os.path.abspath(os.path.expanduser(path)) if is_local(path) else path


def ensure_directory(path: str, name: str) -> None:
  """Creates the local directory `path` unless it is there; a file in its place,
  or one that cannot be created, is a ConfigError naming `name` (the flag that
  gave it). A remote one is left to its writers."""
  from grurcn_jax.errors import ConfigError
  if not is_local(path):
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"{name} {path} is a file, not a directory")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"{name} {path} cannot be created: {e.strerror or e}") from None


def _gfile():
  from grurcn_jax.host_tf import tf
  return tf.io.gfile


def exists(path: str) -> bool:
  return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def open_file(path: str, mode: str = "r"):
  """A file object for `path` ('r', 'rb', 'w', 'wb')."""
  return open(path, mode) if is_local(path) else _gfile().GFile(path, mode)


def makedirs(path: str) -> None:
  if not is_local(path):
    _gfile().makedirs(path)
  elif path:
    os.makedirs(path, exist_ok=True)


def rename(src: str, dst: str) -> None:
  """Replaces `dst` (atomically on a local file system)."""
  if is_local(src):
    os.replace(src, dst)
  else:
    _gfile().rename(src, dst, overwrite=True)


def listdir(path: str) -> List[str]:
  """The names in directory `path`; none when it is not there."""
  if not exists(path):
    return []
  return os.listdir(path) if is_local(path) else _gfile().listdir(path)


def remove(path: str) -> None:
  if is_local(path):
    os.remove(path)
  else:
    _gfile().remove(path)


def size(path: str) -> Optional[int]:
  """A file's size in bytes; None when it is not there."""
  if is_local(path):
    try:
      return os.stat(path).st_size
    except FileNotFoundError:
      return None
  from grurcn_jax.host_tf import tf
  try:
    return tf.io.gfile.stat(path).length
  except tf.errors.NotFoundError:
    return None


def write_atomically(path: str, write) -> None:
  """`write(tmp)` writes a file beside `path`, which then replaces `path`: a reader
  never sees half of it, and a write cut short leaves the old one whole (and no
  temporary file)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    write(tmp)
    rename(tmp, path)
  finally:
    if exists(tmp):
      remove(tmp)


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def write_bytes(path: str, data: bytes) -> None:
  with open_file(path, "wb") as f:
    f.write(data)
