"""Test-only preemption injection: runs `grurcn_jax.main`; process P sends itself
SIGTERM as the first evaluation starts, and every evaluation batch takes at least
BATCH_SECONDS (so the evaluation outlasts the notice's way to the other hosts).

  python -m tests.term_during_eval P BATCH_SECONDS --config=... [main's flags]
"""

import os
import runpy
import signal
import sys
import time

from grurcn_jax import evaluators


def main():
  process, seconds = int(sys.argv[1]), float(sys.argv[2])
  sys.argv = ["grurcn_jax.main"] + sys.argv[3:]
  run, noticed = evaluators.run_over_batches, []

  def evaluation(step, *args, **kwargs):
    import jax
    if jax.process_index() == process and not noticed:
      noticed.append(True)
      os.kill(os.getpid(), signal.SIGTERM)   # JAX's runtime catches it

    def slow(params, batch):
      time.sleep(seconds)
      return step(params, batch)
    return run(slow, *args, **kwargs)

  evaluators.run_over_batches = evaluation
  runpy.run_module("grurcn_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
