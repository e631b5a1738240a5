#!/usr/bin/env bash
# Train on this machine's GPUs: the same entry point and config overrides as
# everywhere else; one process drives every visible GPU (data parallel).
#
#   launch/gpu.sh --gpus=0,1 --config=configs/ucf101_grurcn.py --workdir=/runs/grurcn \
#       --config.data.dir=/data/ucf101_split1 --config.model.dtype=bfloat16
#
# Once per machine, the CUDA build of jax in the range setup.cfg admits:
#   pip install -e . "jax[cuda13]>=0.10.2,<0.12"   # CUDA 13 wheels, driver >= 580
#   (or "jax[cuda12]>=0.10.2,<0.12" for drivers >= 525)
#
# Options (the rest goes to python -m grurcn_jax.main unchanged):
#   --gpus=LIST            GPUs to use, e.g. 0 or 0,1,2,3 (default: all visible);
#                          where CUDA_VISIBLE_DEVICES is set already (a scheduler's
#                          allocation, as SLURM sets it), positions in that list
#   --mem_fraction=F       share of each GPU's memory XLA preallocates (default
#                          $XLA_PYTHON_CLIENT_MEM_FRACTION, else 0.9)
#   --no_preallocate       allocate on demand instead (slower; for shared GPUs;
#                          XLA_PYTHON_CLIENT_PREALLOCATE=false does the same)
#   --dry-run              print the command and environment, run nothing
# A value may also be the next word: --gpus 0,1, --mem_fraction 0.5.
set -euo pipefail

# Memory settings the environment already has are kept unless an option is given.
gpus="" gpus_given=0 mem_fraction="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
preallocate="${XLA_PYTHON_CLIENT_PREALLOCATE:-true}" dry_run=0
args=()
die() { echo "gpu.sh: error: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus=*) gpus="${1#*=}" gpus_given=1 ;;
    --mem_fraction=*) mem_fraction="${1#*=}" ;;
    --gpus|--mem_fraction)
      # The space-separated form: the value is the next word, which must be there.
      [[ $# -ge 2 && "$2" != -* ]] || die "$1 needs a value: $1=VALUE or $1 VALUE"
      if [[ "$1" == --gpus ]]; then gpus="$2" gpus_given=1; else mem_fraction="$2"; fi
      shift ;;
    --no_preallocate) preallocate="false" ;;
    --dry-run|--dry_run) dry_run=1 ;;
    --help|-h) sed -n '2,/^[^#]/{/^#/p;}' "$0"; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done

if [[ "$gpus_given" -eq 1 ]]; then
  # GPU numbers (decimal: 10# reads a leading zero as such, not octal) or, outside
  # an allocation, CUDA's GPU-/MIG- UUIDs; comma-separated, none empty.
  [[ "$gpus" =~ ^([0-9]{1,4}|GPU-[-0-9a-fA-F]+|MIG-[-0-9a-fA-F/]+)(,([0-9]{1,4}|GPU-[-0-9a-fA-F]+|MIG-[-0-9a-fA-F/]+))*$ ]] ||
    die "--gpus=$gpus: give GPUs separated by commas, e.g. --gpus=0 or --gpus=0,1"
  IFS=, read -r -a wanted <<< "$gpus"
  # Within an allocation, --gpus picks from it: a physical number could name a GPU
  # that belongs to another job.
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
    IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
    [[ ${#visible[@]} -gt 0 ]] ||
      die "--gpus=$gpus: CUDA_VISIBLE_DEVICES is set empty (no GPU allocated): unset it, or run without --gpus"
    [[ ",$CUDA_VISIBLE_DEVICES," != *",,"* ]] ||
      die "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES has an empty entry: it names no allocation"
    selected=()
    for i in "${wanted[@]}"; do
      if ! [[ "$i" =~ ^[0-9]+$ ]] || (( 10#$i >= ${#visible[@]} )); then
        die "--gpus=$gpus: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES is set (an allocation), so --gpus gives positions in it, 0 to $(( ${#visible[@]} - 1 )); '$i' is not one"
      fi
      selected+=("${visible[$((10#$i))]}")
    done
  else
    selected=()
    for i in "${wanted[@]}"; do
      if [[ "$i" =~ ^[0-9]+$ ]]; then selected+=("$((10#$i))"); else selected+=("$i"); fi
    done
  fi
  chosen=","
  for gpu in ${selected[@]+"${selected[@]}"}; do
    [[ "$chosen" != *",$gpu,"* ]] || die "--gpus=$gpus names GPU $gpu twice"
    chosen+="$gpu,"
  done
  chosen="${chosen#,}"
  export CUDA_VISIBLE_DEVICES="${chosen%,}"
fi
[[ "$mem_fraction" =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] ||
  die "--mem_fraction=$mem_fraction: a share of the GPU's memory, above 0 and at most 1 (e.g. 0.9)"
export XLA_PYTHON_CLIENT_MEM_FRACTION="$mem_fraction"
export XLA_PYTHON_CLIENT_PREALLOCATE="$preallocate"
# The input runs on the CPU; where TensorFlow is used, the package hides the GPUs from it.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

# ${a[@]+"${a[@]}"}: an empty array under set -u is an error on bash < 4.4 (macOS).
# python where there is one (a venv, conda), else python3 (a bare Ubuntu has only that).
python="python"
command -v python >/dev/null 2>&1 || python="python3"
command_line=("$python" -m grurcn_jax.main ${args[@]+"${args[@]}"})
if [[ "$dry_run" -eq 1 ]]; then
  echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<all>} XLA_PYTHON_CLIENT_MEM_FRACTION=$mem_fraction XLA_PYTHON_CLIENT_PREALLOCATE=$preallocate"
  printf '+'; printf ' %q' "${command_line[@]}"; printf '\n'
  exit 0
fi
# jax's CPU build, or no usable driver, trained on the CPU without a word. (The
# check's own process allocates nothing ahead.)
said=$(XLA_PYTHON_CLIENT_PREALLOCATE=false "$python" -c \
  'import jax; print("backend:", jax.default_backend())' 2>&1) || true
backend=$(sed -n 's/^backend: //p' <<< "$said")
if [[ "$backend" != gpu ]]; then
  # jax's own last words say why (no CUDA jaxlib, a driver error), if any.
  reason=$(grep -v -e '^backend: ' -e '^[[:space:]]*$' <<< "$said" | tail -n 1) || true
  die "jax sees no GPU here (its backend: ${backend:-none, jax did not start}${reason:+; jax said: $reason}): install jax's CUDA build (see this script's header), and check nvidia-smi and CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset>}"
fi
exec "${command_line[@]}"
