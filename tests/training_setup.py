"""A tiny demo dataset and config shared by the whole-run tests."""

import contextlib
import io
import os
import sys

from configs import demo as demo_config
from grurcn_jax.data import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SPEC = dict(seed=0, train_per_class=3, test_per_class=1, num_frames=4,
                 image_size=32, levels=("pool2", "pool3"), videos_per_shard=4)


def build_tiny_demo(directory):
  demo.build(str(directory), demo.DemoSpec(**TINY_SPEC), progress=False)
  return str(directory)


TINY_CAPTIONS_SPEC = dict(seed=0, num_train=16, num_test=4, num_frames=4,
                          image_size=32, levels=("pool2", "pool3"), videos_per_shard=8)


def build_tiny_captions(directory):
  from grurcn_jax.data import demo_captions
  demo_captions.build(str(directory),
                      demo_captions.CaptionDemoSpec(**TINY_CAPTIONS_SPEC), progress=False)
  return str(directory)


# The captioning demo at the smallest size the suite trains past a bound on the
# motion words: 32-pixel frames and pool2 only (VGG-16's first two blocks: its
# cheapest level that still shows the motions), 512 training videos (fewer
# overfit: 256 at 48 px stayed under 60 %), 96 test videos. 20 s to build on
# 2 cores.
DEMO_BOUND_CAPTIONS_SPEC = dict(seed=0, num_train=512, num_test=96, num_frames=8,
                                image_size=32, levels=("pool2",), videos_per_shard=64)


def build_demo_bound_captions(directory):
  from grurcn_jax.data import demo_captions
  demo_captions.build(str(directory),
                      demo_captions.CaptionDemoSpec(**DEMO_BOUND_CAPTIONS_SPEC),
                      progress=False)
  return str(directory)


def demo_bound_captioning_config(data_dir, **overrides):
  """configs/demo_captioning.py on that set: the demo's decoder, segments and
  encoder kind; a GRU-RCN of 16 maps over pool2, 240 steps at a higher rate."""
  from configs import demo_captioning
  config = demo_captioning.get_config()
  config.data.dir = data_dir
  config.data.demo = None
  config.model.levels = ("pool2",)
  config.model.hidden = (16,)
  config.learning_rate = 5e-3
  config.num_train_steps = 240
  config.log_every_steps = 20
  config.checkpoint_every_steps = 120
  config.eval_every_steps = 240
  config.caption.eval_samples = 2
  return _override(config, overrides)


def tiny_captioning_config(data_dir, **overrides):
  """configs/demo_captioning.py on the tiny captioned set: 2 segments of 2 frames."""
  from configs import demo_captioning
  config = demo_captioning.get_config()
  config.data.dir = data_dir
  config.data.demo = None
  config.data.clip_length = 2
  config.model.levels = ("pool2", "pool3")
  config.model.hidden = (4, 4)
  config.caption.update(segments=2, max_length=8, embed_dim=8, hidden=16,
                        attention_dim=8, beam_size=2, eval_samples=2)
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 6
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.eval_every_steps = 6
  config.warmup_steps = 0
  return _override(config, overrides)


def tiny_config(data_dir, **overrides):
  config = demo_config.get_config()
  config.data.dir = data_dir
  config.data.demo = None
  config.data.clip_length = 4
  config.model.levels = ("pool2", "pool3")
  config.model.hidden = (4, 4)
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 6
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.eval_every_steps = 6
  config.warmup_steps = 0
  config.learning_rate = 1e-2
  return _override(config, overrides)


def _override(config, overrides):
  """Fields given as data__clip_length=4 (dots as double underscores)."""
  for key, value in overrides.items():
    key = key.replace("__", ".")
    target = config
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return config


def overrides_as_flags(data_dir, hidden="(4,4)", levels="('pool2','pool3')",
                       **overrides):
  """The same config as `tiny_config`, as command-line flags for main. (A tuple
  flag given twice is concatenated by config_flags: pass `hidden` and `levels` here instead.)"""
  config = tiny_config(data_dir, **overrides)
  flat = {"data.dir": config.data.dir, "data.clip_length": 4,
          "model.levels": levels, "model.hidden": hidden,
          "batch_size": 8, "eval_batch_size": 8, "num_train_steps": config.num_train_steps,
          "log_every_steps": 1, "checkpoint_every_steps": config.checkpoint_every_steps,
          "eval_every_steps": config.eval_every_steps, "warmup_steps": 0,
          "learning_rate": config.learning_rate}
  return [f"--config.{k}={v}" for k, v in flat.items()]


# `python -m MODULE ARGS` with top-level packages made unimportable, as on an
# accelerator image without TensorFlow or clu: argv[1] names them (commas),
# argv[2] is the module.
_LAUNCH_WITHOUT = """
import importlib.abc, importlib.util, runpy, sys
blocked = [name for name in sys.argv[1].split(",") if name]

class Missing(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in blocked:
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return None

sys.meta_path.insert(0, Missing())
# What `importlib.util.find_spec` answers for a package that is not installed.
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] in blocked else _find_spec(name, package))
module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def python_without(blocked, module, *args):
  """The command line that runs `python -m module args` without `blocked`."""
  return [sys.executable, "-c", _LAUNCH_WITHOUT, ",".join(blocked), module, *args]


def main_in_process(*args):
  """`python -m grurcn_jax.main --config=configs/demo.py ARGS` run in this process
  (no program start: the error tests' cost was mostly that): (exit status, stdout,
  stderr). An exception that escapes main fails the test as a traceback would."""
  from absl import flags
  from grurcn_jax import main
  # No compilation cache: this process compiled before, so JAX would not use it,
  # and the setting would outlive the call (tests/test_compile_cache.py tests it).
  argv = ["main", f"--config={REPO}/configs/demo.py", "--config.compilation_cache_dir=",
          *args]
  values = flags.FlagValues()
  main.define_flags(values, argv)
  out, err = io.StringIO(), io.StringIO()
  status = 0
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      main.parse_flags(argv, values)
      main.run(values)
    except SystemExit as e:
      status = e.code
  return status, out.getvalue(), err.getvalue()


def restore_params(config, workdir, step):
  """Parameters of a checkpoint, restored onto this process's devices."""
  import jax
  from grurcn_jax.experiment import assemble
  experiment = assemble(config)
  checkpoints = experiment.checkpoints(workdir)
  state = experiment.restore(checkpoints, step)
  checkpoints.close()
  return jax.device_get(state.params)
