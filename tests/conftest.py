"""Test set-up: 8 simulated CPU devices, set before anything imports jax; XLA's
optimisation passes off except for tests marked `optimized`; the tiny demo dataset,
built once per run for every test that only reads it."""

import os
import sys

import pytest

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On tiny shapes XLA's optimisation passes cost far more than they save (about 3x
# the time of the model tests). Subprocesses (whole runs, the benchmark) inherit
# this. Tests of compiled programs and of kernels' numbers run optimised (below).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
_UNOPTIMIZED = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true")

# configs/ is imported as a package from the repository root.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402  (after XLA_FLAGS on purpose)

# Tests compare float32 numbers with tight tolerances.
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def tiny_demo_dir(tmp_path_factory):
  """tests.training_setup's tiny demo features. Read it; never write into it."""
  from tests.training_setup import build_tiny_demo
  return build_tiny_demo(tmp_path_factory.mktemp("tiny_demo"))


@pytest.fixture(scope="session")
def tiny_captions_dir(tmp_path_factory):
  """tests.training_setup's tiny captioned demo set. Read it; never write into it."""
  from tests.training_setup import build_tiny_captions
  return build_tiny_captions(tmp_path_factory.mktemp("tiny_captions"))


@pytest.fixture(scope="session")
def demo_bound_captions_dir(tmp_path_factory):
  """tests.training_setup's demo-sized captioned set. Read it; never write into it."""
  from tests.training_setup import build_demo_bound_captions
  return build_demo_bound_captions(tmp_path_factory.mktemp("demo_bound_captions"))


def pytest_addoption(parser):
  parser.addoption("--demo-bound", action="store_true",
                   help="also run the tests marked demo_bound: a demo trained past "
                        "its stated bound (minutes each; .ci/run runs them after the "
                        "suite)")


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "demo_bound: trains a demo past its stated bound (minutes); runs only "
      "with --demo-bound")
  config.addinivalue_line(
      "markers", "optimized: compile with XLA's optimisation passes, as real runs do")
  config.addinivalue_line(
      "markers", "long: a test of a minute or more, scheduled first (see below)")


def pytest_collection_modifyitems(config, items):
  """Tests marked demo_bound skip without --demo-bound. Long tests first: with
  `-n 2`, one started last would keep a worker busy for a minute after the other
  has finished."""
  if not config.getoption("--demo-bound"):
    skip = pytest.mark.skip(reason="a demo's bound (minutes): run with --demo-bound")
    for item in items:
      if item.get_closest_marker("demo_bound"):
        item.add_marker(skip)
  items[:] = ([i for i in items if i.get_closest_marker("long")]
              + [i for i in items if not i.get_closest_marker("long")])


@pytest.fixture(autouse=True)
def _xla_optimizations(request):
  optimized = request.node.get_closest_marker("optimized") is not None
  jax.config.update("jax_disable_most_optimizations", _UNOPTIMIZED and not optimized)
  yield
  jax.config.update("jax_disable_most_optimizations", _UNOPTIMIZED)
