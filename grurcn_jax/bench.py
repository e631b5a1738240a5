r"""Throughput benchmark: prints one JSON line.

  # The paper model (pool2..pool5), global batch 64, T=10, bfloat16, on a GPU/TPU:
  python -m grurcn_jax.bench --config=configs/ucf101_grurcn.py --batch=64 \
      --dtype=bfloat16

  # The paper's pool4 level, batch 8, T=10, float32, on a CPU:
  python -m grurcn_jax.bench --config=configs/ucf101_grurcn.py \
      --config.model.levels="('pool4',)" --config.model.hidden="(256,)" --batch=8

  # The same step differentiated through flax's nn.RNN(ConvGRUCell):
  ... --flax_rnn_cell
  # The reference recurrence (nn.scan differentiated by JAX):
  ... --config.model.recurrence=scan
  # Frames mode (VGG-16 in the step, random weights, frozen unless
  # --config.model.backbone_trainable):
  ... --config.data.input=frames
  # Long clips, with and without remat (--steps=0: compile and memory only), or
  # remat of the fine levels only (most of the memory, half the recomputation):
  ... --clip_length=64 [--remat [--config.model.remat_levels="('pool2','pool3')"]]
  # Batches fed from host memory, with and without device prefetch:
  ... --host_feed
  # Where the device's time goes (per kernel / HLO op), from a profiler trace:
  ... --profile_dir=/tmp/profile

  # Data parallelism: the step compiled for N devices against 1 device with the
  # same clips per device (N simulated CPU devices here; real devices where there):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python -m grurcn_jax.bench --config=configs/ucf101_grurcn.py --what=scaling \
      --batch=64

  # The input pipeline on the demo data:
  python -m grurcn_jax.bench --config=configs/demo.py --what=pipeline --batch=32
  # ... at paper shapes: 48 videos of 30 frames of random features written first:
  python -m grurcn_jax.bench --config=configs/ucf101_grurcn.py --what=pipeline \
      --batch=32 --synthetic_videos=48 --synthetic_frames=30 --config.data.dir=DIR
  # Input and train step together (which one bounds training?):
  ... --what=end_to_end

train_step and scaling report the image_size their level shapes derive from
(--image_size; default the config's demo frame size, else 224).
train_step fields: params, step_ms (median over --steps timed steps after warm-up),
clips_per_s, compile_s, flops_per_step (analytic, forward and backward),
achieved_flops_per_s, reference_flops_per_s and reference (what it is, measured in
the same run on the same device: on GPU/TPU the ceiling, the faster of a large
matrix product and a large convolution in the step's dtype, also given as
matmul_flops_per_s and conv_flops_per_s; on CPU one large float32 convolution,
forward and backward), utilisation (achieved / reference, the reference times the
devices on GPU/TPU: it is one device's; simulated CPU devices share one host),
peak_memory_bytes (the
device's peak where it reports one, else XLA's estimate; peak_memory_before_step_bytes
the device's peak before the first step: compilation and initialisation, None where
the device reports none, as a CPU; run a second
time with JAX_COMPILATION_CACHE_DIR set and the compiler's autotuning is skipped,
so the peak is the step's), compiled_memory_bytes
(XLA's estimate of the step's buffers), device; with --host_feed also
host_fed_step_ms and host_fed_unprefetched_step_ms (mean per step over the run);
with --profile_dir, profile: the trace's path (the compiled program beside it
in train_step.hlo.txt) and, per device timeline (on a GPU
each CUDA stream and the profiler's 'XLA Ops' line), its busy ms per step and its
longest events by name (ms per step, share of the busy time); see summarize_trace.
scaling fields: num_devices, batch, xla_flops_per_device and
xla_flops_one_device (XLA's count for the step on all devices and on one device
with the same clips per device: equal when every device does only its share; loop
bodies count once), flops_ratio, collective_bytes (per kind, per device, each
instruction once), all_gather_bytes. pipeline fields: clips_per_s, gb_per_s (feature bytes delivered),
bytes_per_clip, batches, batch, loader (the one `data.loader` resolved to). end_to_end
fields: end_to_end_clips_per_s (steps fed by the input loader through the device
prefetcher), step_clips_per_s (the step on a batch already on the devices),
input_clips_per_s (the loader alone), to_device_clips_per_s (the loader's batches
copied to the devices through the prefetcher, no step), bound_by (step, input or
input+copy: see bound_by), device_prefetch, loader, input (features or frames),
steps. pipeline and end_to_end time the second half of their max(--steps, 20) /
max(--steps, 10) batches (`batches`, `steps`): the first half drains what the
queues read ahead while the program compiled or warmed up.

Needs only jax, flax, optax and ml-collections; TensorFlow only where the input is
read by tf.data (data.loader=tf, JPEG frames, remote paths).
"""

import dataclasses
import gzip
import itertools
import json
import statistics
import sys
import time
from typing import Any, Tuple

from absl import app, flags
from flax import linen as nn
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from grurcn_jax import levels as levels_lib
from grurcn_jax.models import ConvGRUCell, heads
from grurcn_jax.models.grurcn import as_maps

FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.")
  flags.DEFINE_integer("batch", 8, "Global batch of clips.")
  flags.DEFINE_integer("clip_length", None, "Frames per clip (default: the config's "
                       "data.clip_length).")
  flags.DEFINE_integer("steps", 10, "Timed steps after a warm-up step; 0 compiles and "
                       "reports compile time and memory only.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype override.")
  flags.DEFINE_enum("what", "train_step",
                    ["train_step", "scaling", "pipeline", "end_to_end"],
                    "What to measure.")
  flags.DEFINE_bool("flax_rnn_cell", False,
                    "Time the uni grurcn model with every level run by "
                    "flax.linen.RNN(ConvGRUCell), differentiated by JAX.")
  flags.DEFINE_bool("remat", None, "Override model.remat: recompute per step, keep less.")
  flags.DEFINE_enum("kernel_gradient", None, ["auto", "xla", "taps"],
                    "Override model.kernel_gradient.")
  flags.DEFINE_bool("host_feed", False, "Also time steps whose batches come from host "
                    "memory, through the device prefetcher and without it.")
  flags.DEFINE_integer("image_size", None, "Frame side the level shapes derive from "
                       "(default: the config's demo frame size, else 224, the paper's).")
  flags.DEFINE_integer("synthetic_videos", 0, "pipeline, end_to_end: first write this "
                       "many videos of random features (--image_size, the model's "
                       "levels) into --config.data.dir, which must not hold any yet.")
  flags.DEFINE_integer("synthetic_frames", 30, "Frames per synthetic video.")
  flags.DEFINE_list("int8_levels", [], "Synthetic videos: levels stored as int8.")
  flags.DEFINE_integer("frames_jpeg_quality", 0, "Synthetic videos in frames mode: "
                       "frames stored as JPEG of this quality (0: raw).")
  flags.DEFINE_string("profile_dir", None, "train_step: also trace --profile_steps "
                      "steps into this directory (TensorBoard's profile plugin and "
                      "Perfetto read it) and report where the device's time went.")
  flags.DEFINE_integer("profile_steps", 3, "Steps traced with --profile_dir.")


def _median_time(fn, steps):
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def cpu_reference_flops_per_s(steps: int = 5) -> float:
  """FLOP/s of one 3x3 float32 convolution (4 x 28x28x256 -> 256), forward and
  backward. (Batch 4, not more: on a 2-core AMD EPYC batch 16 reads a lower rate,
  39 against 51 GFLOP/s, and takes 5x as long.)"""
  n, size, c_in, c_out = 4, 28, 256, 256
  x = jax.random.normal(jax.random.key(0), (n, size, size, c_in))
  k = jax.random.normal(jax.random.key(1), (3, 3, c_in, c_out)) * 0.02
  step = jax.jit(jax.grad(lambda x, k: jnp.sum(_conv(x, k) ** 2), argnums=(0, 1)))
  jax.block_until_ready(step(x, k))
  seconds = _median_time(lambda: step(x, k), steps)
  return 3 * 2 * n * size * size * 9 * c_in * c_out / seconds


def accelerator_ceilings(dtype, steps: int = 10):
  """FLOP/s of an 8192^3 matrix product and of a pool3-sized 3x3 convolution
  (64 x 10 frames of 28x28x256 -> 256), in `dtype`: what the chip can do."""
  keys = jax.random.split(jax.random.key(0), 4)
  n = 8192
  a, b = (jax.random.normal(k, (n, n), dtype) for k in keys[:2])
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  matmul_rate = 2 * n ** 3 / _median_time(lambda: matmul(a, b), steps)
  frames, size, channels = 640, 28, 256
  x = jax.random.normal(keys[2], (frames, size, size, channels), dtype)
  k = (jax.random.normal(keys[3], (3, 3, channels, channels)) * 0.02).astype(dtype)
  conv = jax.jit(_conv)
  jax.block_until_ready(conv(x, k))
  conv_rate = (2 * frames * size * size * 9 * channels * channels
               / _median_time(lambda: conv(x, k), steps))
  return matmul_rate, conv_rate


def _conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def image_size(config) -> int:
  """--image_size, else the demo's frame size where the config builds one (timing
  its model at 224 px gave 3.6 clips/s where training ran 50-90), else 224."""
  if FLAGS.image_size is not None:
    return FLAGS.image_size
  demo = config.data.get("demo")
  if not demo:
    return 224
  from grurcn_jax.data.demo import DemoSpec   # (the size a partial spec builds at)
  return int(demo.get("image_size", DemoSpec.image_size))


def experiment_for(config, mesh=None):
  """The experiment of `config` at --image_size frames, with no data behind it;
  with --flax_rnn_cell its model is `FlaxRNNCellGRURCN`."""
  from grurcn_jax import experiment as experiment_lib
  from grurcn_jax.data.prepare import FeatureSpec
  from grurcn_jax.errors import ConfigError
  if config.task != "classification":
    raise ConfigError(f"the benchmark times the classification step; task="
                      f"{config.task!r} is not benchmarked yet")
  spec = FeatureSpec.at_image_size(config.model, image_size(config),
                                   frames=config.data.input == "frames")
  experiment = experiment_lib.assemble(config, spec=spec, mesh=mesh)
  if FLAGS.flax_rnn_cell:
    from grurcn_jax.errors import ConfigError
    model_cfg = config.model
    if (model_cfg.name != "grurcn" or model_cfg.variant != "uni"
        or config.data.input != "features"):
      raise ConfigError("--flax_rnn_cell compares the uni grurcn model on features only")
    model = FlaxRNNCellGRURCN(tuple(model_cfg.levels), tuple(model_cfg.hidden),
                              model_cfg.kernel_size, model_cfg.num_classes,
                              model_cfg.dropout_rate, jnp.dtype(model_cfg.dtype))
    experiment = dataclasses.replace(experiment, model=model)
  return experiment


class FlaxRNNCellGRURCN(nn.Module):
  """The uni GRU-RCN with every level run by flax.linen.RNN(ConvGRUCell),
  differentiated by JAX: what a straightforward Flax port would time."""
  levels: Tuple[str, ...]
  hidden: Tuple[int, ...]
  kernel_size: int
  num_classes: int
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, features, *, train=False):
    logits = {}
    for level, hidden in zip(self.levels, self.hidden):
      size = 1 if levels_lib.is_vector_level(level) else self.kernel_size
      states = nn.RNN(ConvGRUCell(hidden, (size, size), dtype=self.dtype),
                      name=level)(as_maps(features[level]))
      logits[level] = heads.ClassifierHead(
          self.num_classes, self.dropout_rate, self.dtype,
          name=f"{level}_classifier")(heads.global_average_pool(states[:, -1]),
                                      train=train)
    return heads.model_output(logits)


def _host_batch(experiment, batch_size, seed=0):
  """Random float16 features (frames mode: uint8 frames) and labels, as the
  pipeline delivers them."""
  rng = np.random.default_rng(seed)

  def clips(name, shape):
    shape = (batch_size, experiment.config.data.clip_length, *shape)
    if name == levels_lib.FRAMES:
      return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape, np.float32).astype(np.float16)

  return {"features": {name: clips(name, shape)
                       for name, shape in experiment.spec.input_shapes.items()},
          "label": rng.integers(0, experiment.spec.num_classes,
                                batch_size).astype(np.int32)}


def _compile_step(experiment, batch_size, state=None):
  """The sharded train step compiled for `batch_size` clips, for `state` or
  (default) from shapes alone; returns (compiled, seconds)."""
  from grurcn_jax import sharding
  batched = sharding.batch_sharding(experiment.mesh)
  if state is None:
    state = experiment.abstract_state()
  batch = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct((batch_size,) + a.shape[1:], a.dtype,
                                     sharding=batched),
      jax.eval_shape(lambda: _host_batch(experiment, 1)))
  start = time.perf_counter()
  compiled = experiment.train_step().lower(state, batch).compile()
  return compiled, time.perf_counter() - start


def bench_train_step(config) -> dict:
  from grurcn_jax import sharding
  model_cfg = config.model
  experiment = experiment_for(config)
  mesh = experiment.mesh
  state = experiment.init_state()
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  compiled, compile_s = _compile_step(experiment, FLAGS.batch, state)

  # The device's peak so far: compilation (autotuning) and the state's
  # initialisation. Where it is below peak_memory_bytes, the step set the peak.
  # None where the device keeps no such count (a CPU).
  peak_before_step = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  step_s = float("nan")  # --steps=0: compile and memory only
  if FLAGS.steps:
    global_batch = sharding.global_batch(mesh, _host_batch(experiment, FLAGS.batch))
    state, _ = compiled(state, global_batch)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(FLAGS.steps):
      start = time.perf_counter()
      state, metrics = compiled(state, global_batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
  analysis = compiled.memory_analysis()
  compiled_memory = int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                        + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  stats = jax.devices()[0].memory_stats() or {}
  peak = int(stats.get("peak_bytes_in_use", compiled_memory))
  flops_per_step = experiment.train_step_flops(FLAGS.batch)
  result = {
      "what": "train_step", "model": model_cfg.name, "variant": model_cfg.variant,
      "recurrence": "flax_rnn_cell" if FLAGS.flax_rnn_cell else model_cfg.recurrence,
      "remat": model_cfg.remat, "remat_levels": list(model_cfg.remat_levels),
      "kernel_gradient": model_cfg.kernel_gradient,
      "levels": list(model_cfg.levels), "image_size": image_size(config),
      "dtype": model_cfg.dtype, "batch": FLAGS.batch,
      "clip_length": config.data.clip_length, "params": params,
      "step_ms": step_s * 1e3, "clips_per_s": FLAGS.batch / step_s,
      "compile_s": compile_s, "flops_per_step": flops_per_step,
      "achieved_flops_per_s": flops_per_step / step_s,
      "peak_memory_bytes": peak, "peak_memory_before_step_bytes": peak_before_step,
      "compiled_memory_bytes": compiled_memory, "input": config.data.input,
      "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
      "num_devices": jax.device_count(),
  }
  if FLAGS.steps and FLAGS.profile_dir:
    # The step donates its state: later timings go on from the profiled one.
    result["profile"], state = _profile(compiled, state, global_batch, FLAGS.profile_dir,
                                        FLAGS.profile_steps)
  if FLAGS.steps and FLAGS.host_feed:
    result.update(_host_fed_step_ms(compiled, state, experiment))
  result.update(reference_flops_per_s=None, reference=None)
  if FLAGS.steps:
    if jax.default_backend() == "cpu":
      # Timed as often as the step, up to 5 times (seconds each on a small CPU).
      result.update(reference_flops_per_s=cpu_reference_flops_per_s(min(FLAGS.steps, 5)),
                    reference="float32 3x3 convolution, forward and backward")
    else:
      matmul, conv = accelerator_ceilings(jnp.dtype(model_cfg.dtype))
      result.update(matmul_flops_per_s=matmul, conv_flops_per_s=conv,
                    reference_flops_per_s=max(matmul, conv),
                    reference=f"max(8192^3 matmul, 3x3 convolution) in {model_cfg.dtype}")
    result["utilisation"] = utilisation(result["achieved_flops_per_s"],
                                        result["reference_flops_per_s"],
                                        jax.default_backend(), jax.device_count())
  return result


def utilisation(achieved_flops_per_s: float, reference_flops_per_s: float,
                platform: str, num_devices: int) -> float:
  """The step's share of what its devices can do. The reference is one device's
  ceiling and the step runs on all of them: N GPUs or TPU chips can do N times it.
  Simulated CPU devices share the host's cores, which the reference uses whole."""
  devices = 1 if platform == "cpu" else num_devices
  return achieved_flops_per_s / (reference_flops_per_s * devices)


def _profile(compiled, state, batch, log_dir, steps):
  """Traces `steps` train steps into `log_dir`, next to the compiled program
  (`train_step.hlo.txt`: the backend's HLO after optimisation, which names the
  trace's ops); the summary of the trace, and the state after the steps (the one
  passed in was donated to them)."""
  import glob
  import os
  os.makedirs(log_dir, exist_ok=True)
  with open(os.path.join(log_dir, "train_step.hlo.txt"), "w") as f:
    f.write(compiled.as_text())
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
  # The trace of this run: the newest of the profiler's timestamped folders.
  traces = sorted(glob.glob(os.path.join(log_dir, "plugins", "profile", "*",
                                         "*.trace.json.gz")), key=os.path.getmtime)
  if not traces:
    return {"trace": None}, state
  with gzip.open(traces[-1], "rt") as f:
    summary = summarize_trace(json.load(f), steps)
  return {"trace": traces[-1], **summary}, state


def summarize_trace(trace: dict, steps: int, top: int = 25) -> dict:
  """Where a traced run's device time went, from a Chrome trace (the profiler's
  `*.trace.json.gz`): per device timeline (a thread of a '/device:...' process),
  its busy time per step (overlaps counted once) and its events' total time per
  step by name, the `top` longest first.

  On a GPU the timelines are the CUDA streams (kernels and copies by kernel name)
  and the profiler's derived lines ('XLA Ops': time per HLO instruction); on a CPU
  there are none (XLA:CPU's work is not traced per op).
  """
  events = trace.get("traceEvents", [])
  processes = {e["pid"]: e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e.get("tid")): e.get("args", {}).get("name", "")
             for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
  spans = {}
  for e in events:
    if (e.get("ph") == "X" and "/device:" in processes.get(e.get("pid"), "")
        and e.get("dur") is not None):
      spans.setdefault((e["pid"], e.get("tid")), []).append(
          (float(e["ts"]), float(e["dur"]), e.get("name", "")))
  timelines = []
  for key, intervals in spans.items():
    by_name = {}
    for _, duration, name in intervals:
      by_name[name] = by_name.get(name, 0.0) + duration
    busy, end = 0.0, float("-inf")
    for start, duration, _ in sorted(intervals):  # union of the intervals
      busy += max(0.0, start + duration - max(start, end))
      end = max(end, start + duration)
    ranked = sorted(by_name.items(), key=lambda item: -item[1])[:top]
    timelines.append({
        "process": processes.get(key[0], ""), "timeline": threads.get(key, str(key[1])),
        "events_per_step": len(intervals) / steps, "busy_ms_per_step": busy / steps / 1e3,
        "top": [{"name": name, "ms_per_step": total / steps / 1e3,
                 "share": total / busy if busy else 0.0} for name, total in ranked]})
  timelines.sort(key=lambda t: -t["busy_ms_per_step"])
  return {"steps": steps, "timelines": timelines}


def _host_fed_step_ms(compiled, state, experiment) -> dict:
  """Mean step time when every step's batch comes from host memory (3 distinct
  batches in turn), without the device prefetcher and with it (2 ahead). Each
  mode first runs every host batch once, so one-time costs of a first transfer
  (staging buffers) stay out of both."""
  from grurcn_jax import sharding
  host_batches = [_host_batch(experiment, FLAGS.batch, seed) for seed in range(3)]
  result = {}
  for size, name in ((0, "host_fed_unprefetched_step_ms"), (2, "host_fed_step_ms")):
    batches = sharding.prefetch_to_device(itertools.cycle(host_batches),
                                          experiment.mesh, size)
    for _ in range(len(host_batches) + 1):
      state, metrics = compiled(state, next(batches))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, metrics = compiled(state, next(batches))
    jax.block_until_ready(metrics)
    result[name] = (time.perf_counter() - start) / FLAGS.steps * 1e3
  return result


def bench_scaling(config) -> dict:
  from grurcn_jax import hlo, sharding
  from grurcn_jax.errors import ConfigError
  devices = jax.device_count()
  if FLAGS.batch % devices:
    raise ConfigError(f"--batch={FLAGS.batch} must be a multiple of the {devices} devices")

  def xla_flops(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])

  everywhere, compile_s = _compile_step(experiment_for(config), FLAGS.batch)
  alone, _ = _compile_step(
      experiment_for(config, mesh=sharding.make_mesh(jax.devices()[:1])),
      FLAGS.batch // devices)
  program = everywhere.as_text()
  collectives = hlo.collective_bytes(program)
  per_device, one_device = xla_flops(everywhere), xla_flops(alone)
  return {"what": "scaling", "num_devices": devices, "batch": FLAGS.batch,
          "clip_length": config.data.clip_length, "variant": config.model.variant,
          "recurrence": "flax_rnn_cell" if FLAGS.flax_rnn_cell else config.model.recurrence,
          "remat": config.model.remat, "remat_levels": list(config.model.remat_levels),
          "levels": list(config.model.levels), "image_size": image_size(config),
          "xla_flops_per_device": per_device, "xla_flops_one_device": one_device,
          "flops_ratio": per_device / one_device, "collective_bytes": collectives,
          "all_gather_bytes": collectives["all-gather"], "compile_s": compile_s,
          "device": jax.devices()[0].device_kind}


def write_synthetic_features(config) -> None:
  """--synthetic_videos random videos of --synthetic_frames frames at --image_size,
  for the model's levels, written into config.data.dir (a train split and a small
  test split): input measurements at paper shapes without extracting anything."""
  from grurcn_jax.data import features
  from grurcn_jax.data.prepare import FeatureSpec
  from grurcn_jax.errors import ConfigError
  directory = config.data.dir
  if not directory:
    raise ConfigError("--synthetic_videos needs --config.data.dir: where to write them")
  if features.exists(features.join(directory, features.METADATA_FILE)):
    raise ConfigError(f"{directory} already holds features; --synthetic_videos writes "
                      f"new ones: point --config.data.dir elsewhere")
  shapes = FeatureSpec.at_image_size(config.model, image_size(config)).level_shapes
  # Frames mode reads the frames (smooth synthetic images, as camera frames are:
  # JPEG's size depends on it); the levels are written too.
  frames_shape = ((image_size(config),) * 2 + (3,) if config.data.input == "frames"
                  else None)
  stats = {l: {"mean": [0.0] * s[-1], "scale": 1.0, "int8_step": 4 / 127}
           for l, s in shapes.items()}
  metadata = features.new_metadata(
      levels=shapes, stats=stats,
      class_names=[f"class_{i}" for i in range(config.model.num_classes)],
      backbone={"name": "vgg16", "weights": "random", "seed": 0,
                "image_size": image_size(config)},
      extraction={"synthetic": True}, int8_levels=tuple(FLAGS.int8_levels),
      frames_shape=frames_shape, frames_jpeg_quality=FLAGS.frames_jpeg_quality)
  rng = np.random.default_rng(0)
  per_shard = 16
  counts = {"train": FLAGS.synthetic_videos, "test": max(1, FLAGS.synthetic_videos // 8)}
  for split, count in counts.items():
    for shard, start in enumerate(range(0, count, per_shard)):
      videos = (features.VideoFeatures(
          f"{split}/{i}", i, i % config.model.num_classes,
          np.arange(FLAGS.synthetic_frames), _random_video(rng, shapes, frames_shape))
                for i in range(start, min(start + per_shard, count)))
      features.record_shard(metadata, split, features.write_shard(
          directory, features.shard_name(split, shard), videos, metadata))
  features.write_metadata(directory, metadata)


def _random_video(rng, shapes, frames_shape):
  video = {l: rng.standard_normal((FLAGS.synthetic_frames, *s), np.float32)
           .astype(np.float16) for l, s in shapes.items()}
  if frames_shape:
    video["frames"] = _smooth_frames(rng, FLAGS.synthetic_frames, frames_shape)
  return video


def _smooth_frames(rng, count, shape):
  """Frames of a drifting disc over a tinted gradient, with a little noise."""
  size = shape[0]
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
  cy, cx, dy, dx = rng.uniform(0.2, 0.8, 4) - [0, 0, 0.5, 0.5]
  frames = np.empty((count, *shape), np.uint8)
  for t in range(count):
    disc = ((y - cy - 0.01 * t * dy) ** 2 + (x - cx - 0.01 * t * dx) ** 2) < 0.02
    image = (0.6 * x + 0.3 * y)[..., None] * tint + 0.3 * disc[..., None]
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    frames[t] = np.clip(image * 255, 0, 255).astype(np.uint8)
  return frames


def _batch_bytes(batch) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(batch["features"]))


def _read(config):
  """What batches hold: the model's levels, or in frames mode the frames."""
  return ((levels_lib.FRAMES,) if config.data.input == "frames"
          else tuple(config.model.levels))


def _steady_seconds_per_item(items: int, take_one, settle=lambda: None) -> float:
  """Seconds per item over the second half of `items` calls of `take_one`: the
  first half drains what the queues read ahead while the program compiled or
  warmed up (an input-bound run would read it as free items). `settle` runs at
  the half and at the end (a wait for the device's queued work)."""
  half = items // 2
  for _ in range(half):
    take_one()
  settle()
  start = time.perf_counter()
  for _ in range(items - half):
    take_one()
  settle()
  return (time.perf_counter() - start) / (items - half)


def bench_pipeline(config) -> dict:
  from grurcn_jax.data import loaders, prepare
  if FLAGS.synthetic_videos:
    write_synthetic_features(config)
  prepare.ensure_demo(config.data)
  batches = loaders.for_config(config.data, _read(config)).train_batches(
      config.data, batch_size=FLAGS.batch, seed=config.seed, levels=_read(config))
  for _ in range(3):  # warm-up: tf.data threads and file handles
    next(batches)
  count = max(FLAGS.steps, 20)
  delivered = []
  seconds = _steady_seconds_per_item(
      count, lambda: delivered.append(_batch_bytes(next(batches))))
  bytes_per_clip = sum(delivered) // (count * FLAGS.batch)
  return {"what": "pipeline", "batch": FLAGS.batch, "batches": count - count // 2,
          "clip_length": config.data.clip_length, "levels": list(_read(config)),
          "clips_per_s": FLAGS.batch / seconds,
          "gb_per_s": bytes_per_clip * FLAGS.batch / seconds / 1e9,
          "bytes_per_clip": bytes_per_clip, "device": "host",
          "loader": loaders.resolve(config.data, _read(config))}


def bench_end_to_end(config) -> dict:
  """Train steps fed by the input pipeline (through the device prefetcher, as
  training runs them), beside the step alone and the input alone: whichever is
  slower bounds training."""
  from grurcn_jax import experiment as experiment_lib, sharding
  from grurcn_jax.data import loaders, prepare
  if FLAGS.synthetic_videos:
    write_synthetic_features(config)
  prepare.ensure_demo(config.data)
  experiment = experiment_lib.assemble(config)
  host_batch = sharding.host_batch_size(FLAGS.batch)
  inputs = tuple(experiment.spec.input_shapes)
  state = experiment.init_state()
  step = experiment.train_step()
  count = max(FLAGS.steps, 10)

  metrics = None

  def one_step(batches):
    nonlocal state, metrics
    state, metrics = step(state, next(batches))

  def run(batches, steps):
    """Seconds per step over the second half of `steps`, the device waited for at
    the half and the end."""
    return _steady_seconds_per_item(steps, lambda: one_step(batches),
                                    lambda: jax.block_until_ready(metrics))

  def host_batches():
    return loaders.for_config(config.data, inputs).train_batches(
        config.data, batch_size=host_batch, seed=config.seed, levels=inputs)

  # Each stage alone first, on its own pipeline, so nothing read ahead while
  # another stage ran counts: the loader's reads, then the reads with each batch's
  # copy to the devices (the prefetcher's, waited on: no step).
  host = host_batches()
  bytes_per_clip = _batch_bytes(next(host)) // host_batch   # also the warm-up
  input_s = _steady_seconds_per_item(count, lambda: next(host))
  resident = sharding.global_batch(experiment.mesh, next(host))
  del host   # its batch arrays (a GB each at paper shapes) go back now
  copied = sharding.prefetch_to_device(host_batches(), experiment.mesh,
                                       config.data.device_prefetch)
  to_device_s = _steady_seconds_per_item(
      count, lambda: jax.block_until_ready(next(copied)))
  del copied
  fed = sharding.prefetch_to_device(host_batches(), experiment.mesh,
                                    config.data.device_prefetch)
  run(fed, 2)  # compile and warm-up (the queues fill meanwhile: run drains them)
  end_to_end_s = run(fed, count)
  step_s = run(iter(lambda: resident, None), count)
  return {"what": "end_to_end", "batch": FLAGS.batch, "steps": count - count // 2,
          "clip_length": config.data.clip_length, "levels": list(config.model.levels),
          "dtype": config.model.dtype,
          "end_to_end_clips_per_s": FLAGS.batch / end_to_end_s,
          "step_clips_per_s": FLAGS.batch / step_s,
          "input_clips_per_s": FLAGS.batch / input_s,
          "to_device_clips_per_s": FLAGS.batch / to_device_s,
          "bytes_per_clip": bytes_per_clip,
          "bound_by": bound_by(input_s, to_device_s, step_s),
          "device_prefetch": config.data.device_prefetch,
          "loader": loaders.resolve(config.data, inputs), "input": config.data.input,
          "device": jax.devices()[0].device_kind, "num_devices": jax.device_count()}


def bound_by(input_s: float, to_device_s: float, step_s: float) -> str:
  """The stage that bounds steps fed by the loader, from each stage's seconds per
  batch: "step"; "input" (the reads alone take nearly all of the batches' time to
  reach the devices); or "input+copy": the copy to the devices adds a tenth or
  more (on a GPU, float16 features: reads and copies share the host's memory
  bandwidth; int8 levels or frames mode move fewer bytes)."""
  # Timed apart, the reads alone may come out slower than reads and copy.
  to_device_s = max(to_device_s, input_s)
  if step_s >= to_device_s:
    return "step"
  return "input" if input_s >= 0.9 * to_device_s else "input+copy"


def main(argv):
  del argv
  config = FLAGS.config
  with config.unlocked():
    if FLAGS.dtype:
      config.model.dtype = FLAGS.dtype
    if FLAGS.remat is not None:
      config.model.remat = FLAGS.remat
    if FLAGS.kernel_gradient:
      config.model.kernel_gradient = FLAGS.kernel_gradient
    if FLAGS.clip_length is not None:
      config.data.clip_length = FLAGS.clip_length
  from grurcn_jax import errors
  benches = {"train_step": bench_train_step, "scaling": bench_scaling,
             "pipeline": bench_pipeline, "end_to_end": bench_end_to_end}
  try:
    _check_flags(config)
    result = benches[FLAGS.what](config)
  except errors.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(_without_nan(result), allow_nan=False))


def _check_flags(config) -> None:
  """Flag values no benchmark can run with, as one error each."""
  from grurcn_jax.errors import ConfigError
  for flag, minimum in (("batch", 1), ("steps", 0), ("synthetic_videos", 0),
                        ("synthetic_frames", 1), ("profile_steps", 1)):
    if FLAGS[flag].value < minimum:
      raise ConfigError(f"--{flag}={FLAGS[flag].value}: give {minimum} or more")
  if FLAGS.what in ("pipeline", "end_to_end") and not config.data.dir:
    raise ConfigError(f"--what={FLAGS.what} reads features: give --config.data.dir (a "
                      f"feature directory, or where --synthetic_videos=N writes one)")


def _without_nan(value):
  """NaN (what --steps=0 leaves untimed) as null: strict JSON readers (jq, most
  languages' parsers) refuse NaN."""
  if isinstance(value, dict):
    return {k: _without_nan(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_without_nan(v) for v in value]
  return None if isinstance(value, float) and value != value else value


if __name__ == "__main__":
  define_flags()
  from grurcn_jax import flag_parsing   # config file and override errors: one line
  app.run(main, flags_parser=flag_parsing.parse)
