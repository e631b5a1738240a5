#!/usr/bin/env bash
# The accelerator measurements of the README, in one go: gradients against the
# reference on the device, then the paper model's train step (batch 64, T=10) in
# float32 and bfloat16, uni/bi/stacked, remat, T=64 memory, host-fed steps, and the
# plain-PyTorch peer on the same device. One JSON line per measurement goes to
# ${OUT:-/tmp/grurcn_bench}/results.jsonl; stderr of each run to logs there.
#
#   bash benchmarks/accelerator.sh [jax|torch|all]
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out="${OUT:-/tmp/grurcn_bench}"
mkdir -p "$out"
what="${1:-all}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

run() {  # run NAME COMMAND...: append the command's last line (its JSON) to results
  local name="$1"; shift
  echo "== $name: $*" >&2
  local start=$SECONDS
  if "$@" >"$out/$name.out" 2>"$out/$name.err"; then
    grep '^{' "$out/$name.out" >>"$out/results.jsonl"
    tail -n 1 "$out/$name.out" | cut -c1-400 >&2
  else
    echo "FAILED ($name)" >&2; tail -n 20 "$out/$name.err" >&2
  fi
  echo "   ($((SECONDS - start)) s)" >&2
}

bench=(python3 -m grurcn_jax.bench --config=configs/ucf101_grurcn.py --batch=64)
if [ "$what" = jax ] || [ "$what" = all ]; then
  run gradients python3 benchmarks/check_gradients.py
  run bf16 "${bench[@]}" --dtype=bfloat16 --host_feed
  run f32 "${bench[@]}" --dtype=float32
  run bf16_bi "${bench[@]}" --dtype=bfloat16 --config.model.variant=bi
  run bf16_stacked "${bench[@]}" --dtype=bfloat16 --config.model.variant=stacked
  run bf16_remat "${bench[@]}" --dtype=bfloat16 --remat
  run f32_remat "${bench[@]}" --dtype=float32 --remat
fi
if [ "$what" = torch ] || [ "$what" = all ]; then
  run torch python3 benchmarks/torch_peer.py --mode eager,compile --dtype float32,bfloat16
fi
if [ "$what" = long ] || [ "$what" = all ]; then
  run bf16_t64 "${bench[@]}" --dtype=bfloat16 --clip_length=64 --steps=3
  run bf16_t64_remat "${bench[@]}" --dtype=bfloat16 --clip_length=64 --steps=3 --remat
fi
