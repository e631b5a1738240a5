"""Device placement: the mesh, shardings, host batches -> global arrays, prefetch.

One data-parallel axis over every device of every host. Parameters and optimiser
state are replicated; batches are split along their first axis. Each host feeds only
its own part of the global batch (`jax.make_array_from_process_local_data`).
"""

import collections
import os
import zlib
from typing import Any, Iterable, Iterator

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from grurcn_jax.errors import ConfigError, FeatureFormatError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A data-parallel mesh over `devices` (default: every device of every host)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def host_batch_size(global_batch_size: int, what: str = "batch_size") -> int:
  """The per-host share of a global batch; it must split evenly over devices."""
  devices, hosts = jax.device_count(), jax.process_count()
  if global_batch_size <= 0 or global_batch_size % devices:
    raise ConfigError(
        f"{what}={global_batch_size} must be a positive multiple of the device count "
        f"({devices} devices over {hosts} host(s)); try "
        f"{max(devices, global_batch_size // devices * devices)}")
  return global_batch_size // hosts


def global_batch(mesh: Mesh, host_batch: Any) -> Any:
  """A pytree of this host's numpy arrays -> global jax.Arrays sharded on `data`."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      host_batch)


def prefetch_to_device(host_batches: Iterable[Any], mesh: Mesh,
                       size: int = 2) -> Iterator[Any]:
  """Global batches of `host_batches`, with the next `size` already on their way
  to the devices.

  Copies to the devices are asynchronous: a batch handed to them here travels
  while the step before it runs, so a step never waits for its input's copy (a
  paper-shape batch is about 1 GB). `size=0` copies each batch when it is asked for.
  """
  iterator = iter(host_batches)
  queue = collections.deque()

  def enqueue(count):
    # next(), not islice: islice would call iter() again, which restarts some
    # iterators (the pipeline's Batches).
    for _ in range(count):
      try:
        queue.append(global_batch(mesh, next(iterator)))
      except StopIteration:
        return

  enqueue(size)
  while True:
    if not queue:  # size=0, or the end
      enqueue(1)
      if not queue:
        return
    yield queue.popleft()
    # Resumed: the caller has dispatched its step; start the next copy behind it.
    enqueue(1 if size else 0)


def check_hosts_read_alike(split: str, stats) -> None:
  """Every host must have left out the same records of `split` (`stats`: the
  loader's InputStats, data.skip_bad_records): a host with another copy of the
  files would otherwise read other videos, split the work differently, or wait in
  a collective the others never reach. Call on every host at the same point."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  names = "\n".join(sorted(os.path.basename(f) for f in stats.bad_files))
  mine = np.array([stats.skipped_records, zlib.crc32(names.encode())], np.int64)
  everyone = np.asarray(multihost_utils.process_allgather(mine))
  if (everyone != everyone[0]).any():
    raise FeatureFormatError(
        f"the hosts left out different records of split {split!r} (records left out "
        f"per host: {everyone[:, 0].tolist()}): a file is unreadable on some hosts "
        f"only; give every host the same files")
