r"""Plain-PyTorch peer of the GRU-RCN training step: prints one JSON line per
(mode, dtype) configuration.

The same step as the JAX benchmark

  python -m grurcn_jax.bench --config=configs/ucf101_grurcn.py --batch=64 --clip_length=10
  (and --dtype=bfloat16)

written directly in PyTorch (nn.Conv2d, channels_last, torch.optim.Adam), so the
two can be compared on the same GPU:

  # The paper model (pool2..pool5, hidden 64,128,256,256), batch 64, T=10:
  python3 benchmarks/torch_peer.py --mode eager,compile --dtype float32,bfloat16

  # One level, like the bench.py example:
  python3 benchmarks/torch_peer.py --levels pool4 --hidden 256 --batch 8

  # Tiny, on CPU (a smoke test, not a benchmark):
  python3 benchmarks/torch_peer.py --device cpu --levels pool2,pool3 --hidden 4,4 \
      --image_size 32 --batch 4 --clip_length 3 --steps 2 --warmup 1 \
      --mode eager --dtype float32,bfloat16

The model (per level, x: [B, T, H, W, C] float16 features, hidden F, 3x3 'same'):
  Wx = W * x + b             for all B*T frames at once, outside the time loop;
  z = sigmoid(Wx_z + U_z * h), r = sigmoid(Wx_r + U_r * h),
  c = tanh(Wx_c + U * (r h)), h = (1 - z) h + z c, from h_0 = 0;
  logits = linear(dropout_0.7(mean_HW(h_T))); loss = mean over levels of the
  cross-entropy. One step = forward, backward, Adam (lr 1e-3), zero_grad.

float32 runs with TF32 allowed (as XLA's default precision on GPU does);
bfloat16 keeps float32 parameters and runs the forward under torch.autocast.
compile mode wraps the model's loss (forward and, through AOTAutograd, backward)
and the optimizer step in torch.compile with default settings.

Fields: what, mode, dtype, batch, clip_length, levels, hidden, image_size, params,
step_ms (median over --steps timed steps after --warmup warm-up steps),
clips_per_s, warmup_s (the warm-up steps, compilation included),
peak_memory_bytes (torch.cuda.max_memory_allocated; null on CPU), device,
torch_version, flops_per_step (analytic convolutions and classifiers, forward and
backward, as grurcn_jax/flops.py counts them: no gradient for the features),
cudnn_benchmark (null on CPU).
"""

import argparse
import gc
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

# Spatial stride and channels of each VGG-16 level (grurcn_jax/levels.py).
_STRIDES = {"pool2": 4, "pool3": 8, "pool4": 16, "pool5": 32}
_CHANNELS = {"pool2": 128, "pool3": 256, "pool4": 512, "pool5": 512}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES = ("eager", "compile")


def feature_shape(level: str, image_size: int):
  """Per-frame (H, W, C) of `level` for square frames of side `image_size`."""
  side = image_size // _STRIDES[level]
  if side < 1:
    raise SystemExit(f"--image_size {image_size} is too small for level {level}")
  return (side, side, _CHANNELS[level])


class ConvGRULevel(nn.Module):
  """One level's GRU-RCN and classifier: [B, T, H, W, C] -> logits [B, K]."""

  def __init__(self, channels: int, hidden: int, num_classes: int,
               dropout_rate: float, compute_dtype: torch.dtype):
    super().__init__()
    self.hidden = hidden
    self.compute_dtype = compute_dtype
    # Channel order of both gate convolutions: (z, r[, candidate]).
    self.input_conv = nn.Conv2d(channels, 3 * hidden, 3, padding=1, bias=True)
    self.hidden_gates = nn.Conv2d(hidden, 2 * hidden, 3, padding=1, bias=False)
    self.hidden_candidate = nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)
    self.dropout = nn.Dropout(dropout_rate)
    self.classifier = nn.Linear(hidden, num_classes)

  def final_state(self, x: torch.Tensor) -> torch.Tensor:
    """h_T as [B, F, H, W] (a channels_last view)."""
    b, t, h, w, c = x.shape
    f = self.hidden
    # The features are stored channels-last: permuting [B*T, H, W, C] to NCHW is
    # already a channels_last tensor, no copy.
    frames = x.to(self.compute_dtype).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    # The input convolution does not depend on h: one batched call for all frames.
    wx = self.input_conv(frames).reshape(b, t, 3 * f, h, w)
    wx_z, wx_r, wx_c = wx[:, :, :f], wx[:, :, f:2 * f], wx[:, :, 2 * f:]
    # The state's dtype follows the convolutions' (bfloat16 under autocast), so
    # the gate arithmetic runs in the compute dtype as in the JAX model.
    state = wx.new_zeros((b, f, h, w)).contiguous(memory_format=torch.channels_last)
    for step in range(t):
      gates = self.hidden_gates(state)
      z = torch.sigmoid(wx_z[:, step] + gates[:, :f])
      r = torch.sigmoid(wx_r[:, step] + gates[:, f:])
      # The reset gate multiplies h before the candidate convolution.
      candidate = torch.tanh(wx_c[:, step] + self.hidden_candidate(r * state))
      state = (1 - z) * state + z * candidate
    return state

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pooled = self.final_state(x).mean(dim=(2, 3))
    return self.classifier(self.dropout(pooled)).float()


class GRURCN(nn.Module):
  """The multi-level model; forward returns the mean of the per-level losses."""

  def __init__(self, levels, hidden, image_size: int, num_classes: int = 101,
               dropout_rate: float = 0.7, compute_dtype: torch.dtype = torch.float32):
    super().__init__()
    self.levels = list(levels)
    self.level_modules = nn.ModuleDict({
        level: ConvGRULevel(feature_shape(level, image_size)[-1], f, num_classes,
                            dropout_rate, compute_dtype)
        for level, f in zip(levels, hidden)})

  def forward(self, features, labels):
    losses = [F.cross_entropy(self.level_modules[level](features[level]), labels)
              for level in self.levels]
    return torch.stack(losses).mean()


def flops_per_step(levels, hidden, image_size: int, batch: int, clip_length: int,
                   num_classes: int) -> int:
  """Analytic: 3x3 convolutions and classifiers, forward and backward. The input
  convolutions' backward is their kernel's gradient (the features need none): 2x
  their forward; the hidden convolutions and classifiers 3x."""
  total = 0
  for level, f in zip(levels, hidden):
    h, w, c = feature_shape(level, image_size)
    per_frame = 2 * (2 * h * w * 9 * c * 3 * f) + 3 * (2 * h * w * 9 * f * 3 * f)
    total += batch * clip_length * per_frame + 3 * batch * 2 * f * num_classes
  return total


def _sync(device: torch.device):
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def run_config(args, mode: str, dtype_name: str, features, labels,
               device: torch.device) -> dict:
  compute_dtype = _DTYPES[dtype_name]
  torch.manual_seed(0)
  model = GRURCN(args.levels, args.hidden, args.image_size, args.num_classes,
                 args.dropout, compute_dtype).to(device)
  model = model.to(memory_format=torch.channels_last)
  model.train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  params = sum(p.numel() for p in model.parameters())

  loss_fn = model
  optimizer_step = optimizer.step
  if mode == "compile":
    loss_fn = torch.compile(model)
    optimizer_step = torch.compile(optimizer.step)
  autocast = dtype_name == "bfloat16"

  def step():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
      loss = loss_fn(features, labels)
    loss.backward()
    optimizer_step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
  _sync(device)
  start = time.perf_counter()
  for _ in range(args.warmup):  # compile mode compiles here
    step()
  _sync(device)
  warmup_s = time.perf_counter() - start

  times = []
  for _ in range(args.steps):
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times) if times else float("nan")
  peak = (int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda"
          else None)
  result = {
      "what": "torch_peer", "mode": mode, "dtype": dtype_name, "batch": args.batch,
      "clip_length": args.clip_length, "levels": list(args.levels),
      "hidden": list(args.hidden), "image_size": args.image_size, "params": params,
      "step_ms": step_s * 1e3, "clips_per_s": args.batch / step_s,
      "warmup_s": warmup_s, "peak_memory_bytes": peak,
      "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                 else "cpu"),
      "torch_version": torch.__version__,
      "flops_per_step": flops_per_step(args.levels, args.hidden, args.image_size,
                                       args.batch, args.clip_length,
                                       args.num_classes),
      "cudnn_benchmark": (bool(torch.backends.cudnn.benchmark)
                          if device.type == "cuda" else None),
  }
  # Free this configuration before the next so they do not share memory.
  del model, optimizer, loss_fn, optimizer_step, step
  return result


def _free(device: torch.device, mode: str):
  if mode == "compile":
    torch._dynamo.reset()  # drops the compiled graphs and what they hold
  gc.collect()
  if device.type == "cuda":
    torch.cuda.empty_cache()


def _comma_list(text: str):
  return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mode", default="eager",
                      help="Comma list of eager, compile.")
  parser.add_argument("--dtype", default="float32",
                      help="Comma list of float32, bfloat16.")
  parser.add_argument("--levels", default="pool2,pool3,pool4,pool5",
                      help="Comma list, a subset of pool2..pool5.")
  parser.add_argument("--hidden", default="64,128,256,256",
                      help="Hidden channels per level, aligned with --levels.")
  parser.add_argument("--image_size", type=int, default=224,
                      help="Frame side the level shapes derive from.")
  parser.add_argument("--batch", type=int, default=64, help="Clips per step.")
  parser.add_argument("--clip_length", type=int, default=10, help="Frames per clip.")
  parser.add_argument("--steps", type=int, default=10, help="Timed steps.")
  parser.add_argument("--warmup", type=int, default=3,
                      help="Untimed steps first (compile mode compiles here).")
  parser.add_argument("--num_classes", type=int, default=101)
  parser.add_argument("--dropout", type=float, default=0.7,
                      help="Drop probability before each classifier.")
  parser.add_argument("--device", default=None,
                      help="Default: cuda if available, else cpu.")
  parser.add_argument("--cudnn_benchmark", type=int, default=1,
                      help="1: let cuDNN pick convolution algorithms by timing them "
                      "(XLA autotunes its convolutions too); 0: heuristics.")
  args = parser.parse_args(argv)
  args.modes = _comma_list(args.mode)
  args.dtypes = _comma_list(args.dtype)
  args.levels = _comma_list(args.levels)
  args.hidden = [int(h) for h in _comma_list(args.hidden)]
  for mode in args.modes:
    if mode not in MODES:
      parser.error(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
  for dtype in args.dtypes:
    if dtype not in _DTYPES:
      parser.error(f"unknown dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
  for level in args.levels:
    if level not in _STRIDES:
      parser.error(f"unknown level {level!r}; valid: {', '.join(_STRIDES)}")
  if len(args.hidden) != len(args.levels):
    parser.error(f"--hidden has {len(args.hidden)} entries for "
                 f"{len(args.levels)} levels")
  if args.steps < 1:
    parser.error("--steps must be at least 1")
  return args


def main(argv=None):
  args = parse_args(argv)
  device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
  # float32 means TF32 convolutions and matmuls, as XLA's default GPU precision.
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)

  # One random batch for every configuration, float16 as the features are stored.
  generator = torch.Generator(device=device).manual_seed(0)
  features = {
      level: torch.randn((args.batch, args.clip_length,
                          *feature_shape(level, args.image_size)),
                         generator=generator, device=device).half()
      for level in args.levels}
  labels = torch.randint(0, args.num_classes, (args.batch,), generator=generator,
                         device=device)

  for mode in args.modes:
    for dtype_name in args.dtypes:
      result = run_config(args, mode, dtype_name, features, labels, device)
      print(json.dumps(result), flush=True)
      _free(device, mode)


if __name__ == "__main__":
  main()
