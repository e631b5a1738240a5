#!/usr/bin/env bash
# The accelerator measurements of the README, in one go: gradients against the
# reference on the device, then the paper model's train step (batch 64, T=10) in
# float32 and bfloat16, uni/bi/stacked, remat, T=64 memory, host-fed steps, frames
# mode, and the plain-PyTorch peer on the same device. One JSON line per
# measurement goes to ${OUT:-/tmp/grurcn_bench}/results.jsonl, its "run" field
# the run's name; stdout and stderr of each run to logs there (or LOGS_DIR).
#
#   bash benchmarks/accelerator.sh [jax] [torch] [long] [memory] [frames] [profile]
#                                  [unroll] [remat] [variants] [input] [all]
# (all: every section but remat, variants and input: remat and variants repeat
# some of jax's runs, input writes gigabytes first)
#
# profile: where the step's device time goes, per kernel and per HLO op (the
# traces and compiled programs land in $out as NAME.trace.json.gz, NAME.hlo.txt.gz).
# unroll: the recurrences in a time loop (--config.model.unroll=1), against the
# default (no loop on GPU for clips of up to 16 frames).
# remat: the bfloat16 step without remat, with it, and with it on the fine levels
# only (pool2, pool3); then XLA's buffers of the same three at T=64 (batch
# ${LONG_BATCH:-16}, compiled side by side, no steps run).
# variants: uni, bidirectional and stacked at the defaults, in one session.
# input: training steps fed by the input loader (no TensorFlow needed: the
# threaded loader), frames mode against features (float16, then int8 at device
# prefetch 2 and 4), on ${INPUT_VIDEOS:-64} synthetic videos of 30 frames at 224 px
# written to local disk first (about 3 GB, then 1.6 GB).
# TORCH_ARGS: the torch section's flags (default: eager and compile, both dtypes).
# memory: each step compiled twice through a compilation cache; the second run
# skips the compiler's autotuning, so its device peak is the step's own.
# LOGS_DIR: where each run's stdout and stderr go (default: $out). Set elsewhere,
# they are also packed into $out/logs.tar.gz after every run, so $out holds two
# files (a lent machine that returns only a few files still returns both).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out="${OUT:-/tmp/grurcn_bench}"
logs="${LOGS_DIR:-$out}"
mkdir -p "$out" "$logs"
scratch=$(mktemp -d)   # compilation caches and raw profiles: not results
trap 'rm -rf "$scratch"' EXIT
sections=" ${*:-all} "
named() { [[ "$sections" == *" $1 "* ]]; }
want() { named "$1" || named all; }
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

pack_logs() {  # with LOGS_DIR elsewhere: the logs so far, as one file in $out
  if [ "$logs" != "$out" ]; then
    tar czf "$out/logs.tar.gz" -C "$logs" .
  fi
}

run() {  # run NAME COMMAND...: append the command's JSON lines, named, to results
  local name="$1"; shift
  echo "== $name: $*" >&2
  local start=$SECONDS
  # RUN_TIMEOUT: seconds each measurement may take (0, the default: no limit).
  if timeout "${RUN_TIMEOUT:-0}" "$@" >"$logs/$name.out" 2>"$logs/$name.err"; then
    grep '^{' "$logs/$name.out" | sed "s/^{/{\"run\": \"$name\", /" >>"$out/results.jsonl"
    tail -n 1 "$logs/$name.out" | cut -c1-400 >&2
  else
    echo "FAILED ($name)" >&2; tail -n 20 "$logs/$name.err" >&2
  fi
  # Runs started with & pack after their `wait` (one writer at a time).
  if [ "$BASHPID" = "$$" ]; then
    pack_logs
  fi
  echo "   ($((SECONDS - start)) s)" >&2
}

# BENCH_EXTRA: flags appended to every bench run (a quick check on small shapes).
# shellcheck disable=SC2206
bench=(python3 -m grurcn_jax.bench --config=configs/ucf101_grurcn.py --batch=64 ${BENCH_EXTRA:-})
if want jax; then
  run gradients python3 benchmarks/check_gradients.py
  run bf16 "${bench[@]}" --dtype=bfloat16 --host_feed
  run f32 "${bench[@]}" --dtype=float32
  run bf16_bi "${bench[@]}" --dtype=bfloat16 --config.model.variant=bi
  run bf16_stacked "${bench[@]}" --dtype=bfloat16 --config.model.variant=stacked
  run bf16_remat "${bench[@]}" --dtype=bfloat16 --remat
  run f32_remat "${bench[@]}" --dtype=float32 --remat
fi
if named remat; then  # not in all: its runs repeat jax's
  fine=(--remat "--config.model.remat_levels=('pool2','pool3')")
  run remat_none "${bench[@]}" --dtype=bfloat16
  run remat_all "${bench[@]}" --dtype=bfloat16 --remat
  run remat_fine "${bench[@]}" --dtype=bfloat16 "${fine[@]}"
  # Compile-only runs share the GPU: no preallocation, no steps.
  long=(env XLA_PYTHON_CLIENT_PREALLOCATE=false "${bench[@]}" --dtype=bfloat16
        --clip_length=64 --steps=0 --batch="${LONG_BATCH:-16}")
  run remat_t64_none "${long[@]}" &
  run remat_t64_all "${long[@]}" --remat &
  run remat_t64_fine "${long[@]}" "${fine[@]}" &
  wait
  pack_logs
fi
if named variants; then
  run variants_uni "${bench[@]}" --dtype=bfloat16
  run variants_bi "${bench[@]}" --dtype=bfloat16 --config.model.variant=bi
  run variants_stacked "${bench[@]}" --dtype=bfloat16 --config.model.variant=stacked
fi
if want torch; then
  # shellcheck disable=SC2086
  run torch python3 benchmarks/torch_peer.py ${TORCH_ARGS:---mode eager,compile --dtype float32,bfloat16}
fi
if want memory; then
  cache="$scratch/compilation_cache"
  for variant in bf16 bf16_remat; do
    flags=(--dtype=bfloat16); [ "$variant" = bf16_remat ] && flags+=(--remat)
    run "memory_${variant}_compile" env JAX_COMPILATION_CACHE_DIR="$cache" \
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 "${bench[@]}" "${flags[@]}"
    # The cached run also times host-fed steps with and without device prefetch.
    run "memory_${variant}_cached" env JAX_COMPILATION_CACHE_DIR="$cache" \
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 "${bench[@]}" "${flags[@]}" \
        --host_feed
  done
fi
if want frames; then
  run frames_bf16 "${bench[@]}" --dtype=bfloat16 --config.data.input=frames --host_feed
  run frames_bf16_trained "${bench[@]}" --dtype=bfloat16 --config.data.input=frames \
      --config.model.backbone_trainable=True
fi
if named input; then  # not in all: it writes its data first
  data="$scratch/input"
  fed=("${bench[@]}" --dtype=bfloat16 --what=end_to_end --steps="${INPUT_STEPS:-20}"
       --config.data.dir="$data")
  # The first run writes the videos (levels and frames), the second reads them.
  run input_frames "${fed[@]}" --config.data.input=frames \
      --synthetic_videos="${INPUT_VIDEOS:-64}" --synthetic_frames=30 \
      --image_size="${INPUT_IMAGE_SIZE:-224}"
  run input_features "${fed[@]}" --config.data.input=features
  # Every level int8 (half the bytes to read and copy), device prefetch 2 and 4.
  int8=("${bench[@]}" --dtype=bfloat16 --what=end_to_end --steps="${INPUT_STEPS:-20}"
        --config.data.dir="$data-int8")
  run input_int8 "${int8[@]}" --synthetic_videos="${INPUT_VIDEOS:-64}" \
      --synthetic_frames=30 --image_size="${INPUT_IMAGE_SIZE:-224}" \
      --int8_levels=pool2,pool3,pool4,pool5
  run input_int8_prefetch4 "${int8[@]}" --config.data.device_prefetch=4
fi
if want long; then
  run bf16_t64 "${bench[@]}" --dtype=bfloat16 --clip_length=64 --steps=3
  run bf16_t64_remat "${bench[@]}" --dtype=bfloat16 --clip_length=64 --steps=3 --remat
fi
if want profile; then
  for dtype in bfloat16 float32; do
    name="profile_$dtype"
    run "$name" "${bench[@]}" --dtype=$dtype --profile_dir="$scratch/$name" --profile_steps=2
    # The profiler's folders are timestamps: the last in order is this run's.
    traces=("$scratch/$name"/plugins/profile/*/*.trace.json.gz)
    cp "${traces[-1]}" "$out/$name.trace.json.gz" 2>/dev/null
    gzip -c "$scratch/$name/train_step.hlo.txt" >"$out/$name.hlo.txt.gz" 2>/dev/null
  done
fi
if want unroll; then
  run bf16_loop "${bench[@]}" --dtype=bfloat16 --config.model.unroll=1
  run f32_loop "${bench[@]}" --dtype=float32 --config.model.unroll=1
  run bf16_remat_loop "${bench[@]}" --dtype=bfloat16 --remat --config.model.unroll=1
fi
