"""TensorFlow's host set-up: its caching allocator is on unless the user says
otherwise (it doubles the input pipeline here, README "Features")."""

import os
import subprocess
import sys

from tests.training_setup import REPO

_PRINT = ("import os, grurcn_jax.host_tf as h; "
          "print(os.environ['TF_CPU_ALLOCATOR_USE_BFC'], h.tf.config.get_visible_devices('GPU'))")


def _setting(**env):
  base = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
  result = subprocess.run([sys.executable, "-c", _PRINT], capture_output=True,
                          text=True, cwd=REPO, timeout=300,
                          env=dict(base, TF_CPP_MIN_LOG_LEVEL="3", **env))
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout.split()


def test_the_caching_allocator_is_on_by_default_and_can_be_turned_off():
  # Fresh processes: TensorFlow reads the setting when it starts.
  assert _setting() == ["true", "[]"]
  assert _setting(TF_CPU_ALLOCATOR_USE_BFC="false") == ["false", "[]"]
