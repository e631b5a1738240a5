"""The persistent compilation cache: where it goes, and that a second process
loads what the first compiled (each in a fresh process: JAX decides at a
process's first compilation whether it uses the cache)."""

import os
import subprocess
import sys

from grurcn_jax import compile_cache
from tests.training_setup import REPO

_PROGRAM = """
import sys
from grurcn_jax import compile_cache
compile_cache.enable(sys.argv[1])
import jax, jax.numpy as jnp
print(compile_cache.summary())
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()
print(compile_cache.summary())
"""


def test_the_directory_is_the_setting_with_the_workdir_in_it():
  assert (compile_cache.directory_for("{workdir}/compilation_cache", "gs://b/run/")
          == "gs://b/run/compilation_cache")
  assert compile_cache.directory_for("/cache/jax", "/runs/a") == "/cache/jax"
  assert compile_cache.directory_for("", "/runs/a") == ""


def _run(directory):
  out = subprocess.run(
      [sys.executable, "-c", _PROGRAM, directory], capture_output=True, text=True,
      cwd=REPO, timeout=300,
      env=dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"))
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.splitlines()


def _loaded(line):
  """(loaded, programs) of a summary line."""
  words = line.split()
  assert words[1:5] == ["of", words[2], "programs", "loaded"], line
  return int(words[0]), int(words[2])


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
  directory = str(tmp_path / "cache")
  before, first = _run(directory)
  assert _loaded(before) == (0, 0)
  loaded, compiled = _loaded(first)
  assert loaded == 0 and compiled >= 1
  assert [name for name in os.listdir(directory) if name.startswith("jit_")]
  _, second = _run(directory)
  assert _loaded(second) == (compiled, compiled)
  assert second.endswith("s of compiling)")
  # '' leaves it off.
  assert _run("") == ["no compilation cache"] * 2


def test_a_cache_directory_given_to_jax_is_kept(tmp_path):
  mine = str(tmp_path / "mine")
  out = subprocess.run(
      [sys.executable, "-c", _PROGRAM, str(tmp_path / "config_s")], capture_output=True,
      text=True, cwd=REPO, timeout=300,
      env=dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_COMPILATION_CACHE_DIR=mine))
  assert out.returncode == 0, out.stderr[-2000:]
  assert os.listdir(mine) and not os.path.exists(tmp_path / "config_s")


def test_a_remote_directory_keeps_xla_s_own_caches_out_of_it():
  # (Nothing is compiled: only the settings are read back.)
  program = ("from grurcn_jax import compile_cache; import jax\n"
             "for d in ('/local/cache', 'gs://bucket/run/compilation_cache'):\n"
             "  compile_cache.enable(d)\n"
             "  print(jax.config.jax_compilation_cache_dir,\n"
             "        jax.config.jax_persistent_cache_enable_xla_caches)\n"
             "  jax.config.update('jax_compilation_cache_dir', None)\n")
  out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                       cwd=REPO, timeout=300,
                       env={k: v for k, v in os.environ.items()
                            if k != "JAX_COMPILATION_CACHE_DIR"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.splitlines() == [
      "/local/cache xla_gpu_per_fusion_autotune_cache_dir",
      "gs://bucket/run/compilation_cache none"]
