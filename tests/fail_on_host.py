"""Test-only fault injection: runs `grurcn_jax.main`, and process P's input (every
process's with P=both) fails with a data error at its Nth batch, as a bad file on
one host (or on all) would.

  python -m tests.fail_on_host P|both N --config=... --workdir=... [main's flags]
"""

import runpy
import sys

from grurcn_jax import sharding
from grurcn_jax.errors import FeatureFormatError


def main():
  failing, batch = sys.argv[1], int(sys.argv[2])
  sys.argv = ["grurcn_jax.main"] + sys.argv[3:]
  prefetch = sharding.prefetch_to_device

  def failing_on_one_host(host_batches, mesh, size=2):
    import jax

    def batches():
      for i, b in enumerate(host_batches):
        process = jax.process_index()
        if failing in ("both", str(process)) and i == batch:
          raise FeatureFormatError(f"reading features failed: injected on process "
                                   f"{process}")
        yield b
    return prefetch(batches(), mesh, size)

  sharding.prefetch_to_device = failing_on_one_host
  runpy.run_module("grurcn_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
