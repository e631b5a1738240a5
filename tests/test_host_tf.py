"""TensorFlow's host set-up: its caching allocator is on unless the user says
otherwise (it doubles the input pipeline here, README "Features"), and it sees no
GPU."""

import ast
import importlib
import inspect
import os

import pytest

from grurcn_jax import host_tf


@pytest.mark.parametrize("setting,expected", [(None, "true"), ("false", "false")])
def test_the_caching_allocator_is_on_by_default_and_can_be_turned_off(
    monkeypatch, setting, expected):
  # The module's set-up runs again here: what matters is the value it leaves for
  # TensorFlow, which reads it once, when it starts (in-process: no second import
  # of TensorFlow, which takes seconds).
  if setting is None:
    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
  else:
    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", setting)
  importlib.reload(host_tf)
  assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == expected
  assert host_tf.tf.config.get_visible_devices("GPU") == []


def test_the_setting_comes_before_tensorflow_starts():
  """Set after `import tensorflow`, the variable would be read too late."""
  tree = ast.parse(inspect.getsource(host_tf))
  setting = next(node.lineno for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and "TF_CPU_ALLOCATOR_USE_BFC" in
                 [getattr(a, "value", None) for a in node.args])
  importing = min(node.lineno for node in ast.walk(tree)
                  if isinstance(node, (ast.Import, ast.ImportFrom))
                  and "tensorflow" in [a.name for a in getattr(node, "names", [])]
                  + [getattr(node, "module", None)])
  assert setting < importing
