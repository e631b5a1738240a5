"""Test-only: two processes (2 CPU devices each, gloo) and a sharded computation
of all-reduces that runs a few seconds. Both handle errors as
`grurcn_jax.main.run` does.

- `one`: process 1 fails while the computation runs, as a host whose input fails
  while its last dispatched step is still under way. Process 0 waits on that
  computation (which process 1 must finish with it) and then on the next, which
  process 1 never joins, as the training loop would.
- `apart`: process 0 fails with nothing under way; process 1 fails a step later,
  with a computation dispatched that process 0 never joins (two hosts failing a
  step apart: storage failing under both).

  python -m tests.fail_mid_collective PROCESS_ID PORT one|apart
"""

import os
import sys
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from grurcn_jax import multihost  # noqa: E402

# How long the computation under way at the failure runs: longer than a failing
# host took to tell the others and leave (a poll, 1 s, and the acknowledgement).
SECONDS_UNDER_WAY = 5.0


def main():
  process_id, port, case = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id)
  multihost.watch()
  sharding = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)),
                           PartitionSpec("batch"))

  @jax.jit
  def all_reduces(x, count):
    def one(_, x):   # a matmul, then a sum over every device's rows
      total = (x @ x / x.shape[-1]).sum(0, keepdims=True)
      return jax.lax.with_sharding_constraint(x * 0 + total, sharding)
    return jax.lax.fori_loop(0, count, one, x)

  x = jax.make_array_from_process_local_data(sharding,
                                             np.ones((2, 128, 128), np.float32))
  try:
    jax.block_until_ready(all_reduces(x, 1))   # compiled
    start = time.time()
    jax.block_until_ready(all_reduces(x, 20))
    per_step = (time.time() - start) / 20
    count = int(multihost_utils.broadcast_one_to_all(
        np.int32(max(20, SECONDS_UNDER_WAY / per_step))))
    if case == "apart":
      if process_id == 1:
        under_way = all_reduces(x, count)   # noqa: F841 (live while it fails)
      raise RuntimeError(f"injected on process {process_id}")
    under_way = all_reduces(x, count)
    print(f"dispatched {count} all-reduces", file=sys.stderr, flush=True)
    if process_id == 1:
      raise RuntimeError("injected while its computation ran")
    jax.block_until_ready(under_way)
    print("the computation under way finished", file=sys.stderr, flush=True)
    jax.block_until_ready(all_reduces(under_way, count))   # never joined
  except Exception as e:
    multihost.fail(f"{type(e).__name__}: {e}", with_traceback=True)
    raise


if __name__ == "__main__":
  main()
