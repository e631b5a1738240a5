r"""Throughput benchmark: prints one JSON line.

  # The paper's pool4 level, batch 8, T=10, float32:
  python -m grurcn_jax.bench --config=configs/ucf101_grurcn.py \
      --config.model.levels="('pool4',)" --config.model.hidden="(256,)" \
      --batch=8 --clip_length=10 --what=train_step

  # The same step differentiated through flax's nn.RNN(ConvGRUCell):
  ... --what=train_step --recurrence=rnn_cell

  # Long clips: compile time and XLA's memory estimate only, with and without remat:
  ... --clip_length=64 --steps=0 [--remat]

  # The input pipeline on the demo data:
  python -m grurcn_jax.bench --config=configs/demo.py --what=pipeline --batch=32

train_step fields: params, step_ms (median over --steps timed steps after warm-up),
clips_per_s, compile_s, flops_per_step (analytic, forward and backward),
achieved_flops_per_s, reference_flops_per_s (one large convolution, forward and
backward, timed in the same run on the same device: the ratio holds on a noisy
machine), peak_memory_bytes (the device's peak where it reports one, else XLA's
static estimate of the step's buffers), device. pipeline fields: clips_per_s,
batches, batch, device.
"""

import json
import statistics
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
  flags.DEFINE_integer("batch", 8, "Global batch of clips.")
  flags.DEFINE_integer("clip_length", 10, "Frames per clip.")
  flags.DEFINE_integer("steps", 10, "Timed steps after a warm-up step; 0 compiles and "
                       "reports compile time and memory only.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype override.")
  flags.DEFINE_enum("what", "train_step", ["train_step", "pipeline"], "What to time.")
  flags.DEFINE_enum("recurrence", None, ["fused", "scan", "rnn_cell"],
                    "Override model.recurrence; rnn_cell differentiates through "
                    "flax.linen.RNN(ConvGRUCell) (uni grurcn only).")
  flags.DEFINE_bool("remat", None, "Override model.remat: recompute per step, keep less.")
  flags.DEFINE_integer("image_size", 224, "Frame side the level shapes derive from.")


def _median_time(fn, steps):
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def reference_flops_per_s(steps: int = 5) -> float:
  """FLOP/s of one large 3x3 convolution, forward and backward (input and kernel)."""
  n, size, c_in, c_out = 16, 28, 256, 256
  x = jax.random.normal(jax.random.key(0), (n, size, size, c_in))
  k = jax.random.normal(jax.random.key(1), (3, 3, c_in, c_out)) * 0.02
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  step = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
  jax.block_until_ready(step(x, k))
  seconds = _median_time(lambda: step(x, k), steps)
  return 3 * 2 * n * size * size * 9 * c_in * c_out / seconds


class _RNNCellModel:
  """The uni GRU-RCN with each level run by flax.linen.RNN(ConvGRUCell)."""

  def __new__(cls, model_cfg):
    from flax import linen as nn
    from grurcn_jax.models import ConvGRUCell, heads
    from grurcn_jax.models.build import DTYPES
    from grurcn_jax.models.grurcn import as_maps
    dtype = DTYPES[model_cfg.dtype]

    class RNNCellGRURCN(nn.Module):
      @nn.compact
      def __call__(self, features, *, train=False):
        logits = {}
        for level, hidden in zip(model_cfg.levels, model_cfg.hidden):
          size = 1 if level == "fc7" else model_cfg.kernel_size
          states = nn.RNN(ConvGRUCell(hidden, (size, size), dtype=dtype),
                          name=level)(as_maps(features[level]))
          logits[level] = heads.ClassifierHead(
              model_cfg.num_classes, model_cfg.dropout_rate, dtype,
              name=f"{level}_classifier")(heads.global_average_pool(states[:, -1]),
                                          train=train)
        return heads.model_output(logits)
    return RNNCellGRURCN()


def bench_train_step(config) -> dict:
  from grurcn_jax import flops, levels as levels_lib, sharding, train
  from grurcn_jax.models import build_model
  model_cfg = config.model
  if FLAGS.recurrence == "rnn_cell":
    if model_cfg.name != "grurcn" or model_cfg.variant != "uni":
      raise SystemExit("--recurrence=rnn_cell compares the uni grurcn model only")
    model = _RNNCellModel(model_cfg)
  else:
    model = build_model(model_cfg)
  mesh = sharding.make_mesh()
  shapes = {l: levels_lib.feature_shape(l, FLAGS.image_size) for l in model_cfg.levels}
  rng = np.random.default_rng(0)
  batch = {"features": {l: rng.standard_normal((FLAGS.batch, FLAGS.clip_length, *s))
                        .astype(np.float16) for l, s in shapes.items()},
           "label": rng.integers(0, model_cfg.num_classes, FLAGS.batch).astype(np.int32)}
  metadata = {"levels": {l: {"shape": list(s)} for l, s in shapes.items()}}
  config.data.clip_length = FLAGS.clip_length
  state = train.create_state(model, config, mesh, metadata)
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  step = train.make_train_step(model, config, mesh, sharding.replicated(mesh))
  global_batch = sharding.global_batch(mesh, batch)

  start = time.perf_counter()
  compiled = step.lower(state, global_batch).compile()
  compile_s = time.perf_counter() - start
  step_s = float("nan")  # --steps=0: compile and memory only
  if FLAGS.steps:
    state, _ = compiled(state, global_batch)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(FLAGS.steps):
      start = time.perf_counter()
      state, metrics = compiled(state, global_batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
  flops_per_step = flops.train_step_flops(model_cfg, shapes, FLAGS.batch,
                                          FLAGS.clip_length)
  peak = None
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    peak = int(stats["peak_bytes_in_use"])
  else:
    analysis = compiled.memory_analysis()
    peak = int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return {
      "what": "train_step", "model": model_cfg.name, "variant": model_cfg.variant,
      "recurrence": FLAGS.recurrence or model_cfg.recurrence, "remat": model_cfg.remat,
      "levels": list(model_cfg.levels), "dtype": model_cfg.dtype, "batch": FLAGS.batch,
      "clip_length": FLAGS.clip_length, "params": params,
      "step_ms": step_s * 1e3, "clips_per_s": FLAGS.batch / step_s,
      "compile_s": compile_s, "flops_per_step": flops_per_step,
      "achieved_flops_per_s": flops_per_step / step_s,
      "reference_flops_per_s": reference_flops_per_s() if FLAGS.steps else None,
      "peak_memory_bytes": peak, "device": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(),
  }


def bench_pipeline(config) -> dict:
  from grurcn_jax import train
  from grurcn_jax.data import pipeline
  train.prepare_data(config)  # builds the demo data when the config asks for it
  batches = iter(pipeline.train_batches(
      config.data.dir, split=config.data.train_split, batch_size=FLAGS.batch,
      clip_length=config.data.clip_length, frame_stride=config.data.frame_stride,
      levels=config.model.levels, shuffle_buffer=config.data.shuffle_buffer))
  for _ in range(3):  # warm-up: tf.data threads and file handles
    next(batches)
  count = max(FLAGS.steps, 20)
  start = time.perf_counter()
  for _ in range(count):
    next(batches)
  seconds = time.perf_counter() - start
  return {"what": "pipeline", "batch": FLAGS.batch, "batches": count,
          "clip_length": config.data.clip_length, "levels": list(config.model.levels),
          "clips_per_s": count * FLAGS.batch / seconds, "device": "host"}


def main(argv):
  del argv
  from grurcn_jax.data import pipeline
  pipeline.hide_accelerators_from_tensorflow()
  config = FLAGS.config
  with config.unlocked():
    if FLAGS.dtype:
      config.model.dtype = FLAGS.dtype
    if FLAGS.recurrence in ("fused", "scan"):
      config.model.recurrence = FLAGS.recurrence
    if FLAGS.remat is not None:
      config.model.remat = FLAGS.remat
  from grurcn_jax.errors import ConfigError
  try:
    result = bench_pipeline(config) if FLAGS.what == "pipeline" else bench_train_step(config)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(result))


if __name__ == "__main__":
  define_flags()
  app.run(main)
