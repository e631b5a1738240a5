"""Device placement: the mesh, shardings, and host batches -> global arrays.

One data-parallel axis over every device of every host. Parameters and optimiser
state are replicated; batches are split along their first axis. Each host feeds only
its own part of the global batch (`jax.make_array_from_process_local_data`).
"""

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from grurcn_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


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
