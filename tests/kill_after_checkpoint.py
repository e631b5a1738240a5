"""Test-only fault injection: runs `grurcn_jax.main` and SIGKILLs the process right
after the checkpoint of step N is durable, as a preemption without warning would.

  python -m tests.kill_after_checkpoint N --config=... --workdir=... [main's flags]
"""

import os
import runpy
import signal
import sys

from grurcn_jax import checkpoints


def main():
  kill_step = int(sys.argv[1])
  sys.argv = ["grurcn_jax.main"] + sys.argv[2:]
  save = checkpoints.Checkpoints.save

  def save_then_die(self, step, state, config):
    save(self, step, state, config)
    if step == kill_step:
      self.wait()
      os.kill(os.getpid(), signal.SIGKILL)

  checkpoints.Checkpoints.save = save_then_die
  runpy.run_module("grurcn_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
