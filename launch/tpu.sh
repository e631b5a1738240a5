#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create (or reuse) it, install the package on
# every worker, run python -m grurcn_jax.main on all workers, stream the logs.
#
#   launch/tpu.sh --name=grurcn --zone=us-central2-b --project=my-project \
#       --accelerator=v4-32 --config=configs/ucf101_grurcn.py \
#       --workdir=gs://bucket/runs/grurcn --data_dir=gs://bucket/features/ucf101_split1
#
# Re-running the same command after a preemption resumes training from the newest
# checkpoint (a preempted VM is deleted and created again first). Extra flags after
# `--` go to grurcn_jax.main (e.g. -- --config.batch_size=128).
#
# Options:
#   --name=NAME            TPU VM (or queued resource) name            [required]
#   --zone=ZONE            default: $CLOUDSDK_COMPUTE_ZONE             [required]
#   --project=PROJECT      default: $CLOUDSDK_CORE_PROJECT             [required]
#   --accelerator=TYPE     e.g. v4-8, v4-32, v5litepod-16 (default v4-8);
#                          also gcloud's --accelerator-type=TYPE (or --accelerator_type)
#   --runtime=VERSION      TPU software version (default tpu-ubuntu2204-base);
#                          also gcloud's --version=VERSION
#   --config=FILE          experiment config (default configs/ucf101_grurcn.py)
#   --workdir=DIR          checkpoints and metrics; gs:// required on multi-host
#   --data_dir=DIR         feature directory (config.data.dir); gs:// on multi-host
#   --spot                 spot (preemptible) capacity
#   --queued               create through a queued resource (waits for capacity)
#   --delete               tear the TPU down and exit
#   --dry-run              print every gcloud command, run none
# An option's value may also be the next word, as gcloud allows: --zone us-central2-b.
# Two spellings of one option (--accelerator and --accelerator-type, --runtime and
# --version) given different values are an error.
set -euo pipefail

name="" zone="${CLOUDSDK_COMPUTE_ZONE:-}" project="${CLOUDSDK_CORE_PROJECT:-}"
accelerator="v4-8" runtime="tpu-ubuntu2204-base" config="configs/ucf101_grurcn.py"
workdir="" data_dir="" spot=0 queued=0 delete=0 dry_run=0
extra=()

die() { echo "tpu.sh: error: $*" >&2; exit 2; }

# set_opt VAR SPELLING VALUE: VAR=VALUE, remembering the spelling that set it; a
# different spelling of the same option (--accelerator-type for --accelerator) must
# not contradict it. The same spelling given twice keeps the last value.
set_opt() {
  local var="$1" spelling="$2" value="$3" seen_var="seen_$1"
  local seen="${!seen_var:-}"
  if [[ -n "$seen" && "${seen%%=*}" != "$spelling" && "${seen#*=}" != "$value" ]]; then
    die "conflicting values: $seen and $spelling=$value are the same option"
  fi
  printf -v "$seen_var" '%s' "$spelling=$value"
  printf -v "$var" '%s' "$value"
}

while [[ $# -gt 0 ]]; do
  opt="$1" value="" inline=0 var=""
  if [[ "$opt" == --*=* ]]; then value="${opt#*=}" opt="${opt%%=*}" inline=1; fi
  case "$opt" in
    --name) var=name ;;
    --zone) var=zone ;;
    --project) var=project ;;
    --accelerator|--accelerator-type|--accelerator_type) var=accelerator ;;
    --runtime|--version) var=runtime ;;
    --config) var=config ;;
    --workdir) var=workdir ;;
    --data_dir) var=data_dir ;;
    --spot|--queued|--delete|--dry-run|--dry_run|--help|-h|--) ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  if [[ -n "$var" ]]; then
    if [[ "$inline" -eq 0 ]]; then
      # The space-separated form: the value is the next word, which must be there.
      [[ $# -ge 2 ]] || die "$opt needs a value: $opt=VALUE or $opt VALUE"
      [[ "$2" != -* ]] || die "$opt needs a value, got the option $2 instead"
      value="$2"
      shift
    fi
    set_opt "$var" "$opt" "$value"
  else
    [[ "$inline" -eq 0 ]] || die "$opt takes no value: $1"
    case "$opt" in
      --spot) spot=1 ;;
      --queued) queued=1 ;;
      --delete) delete=1 ;;
      --dry-run|--dry_run) dry_run=1 ;;
      --help|-h) sed -n '2,/^[^#]/{/^#/p;}' "$0"; exit 0 ;;
      --) shift; extra=("$@"); break ;;
    esac
  fi
  shift
done

# Every check happens before anything is created.
command -v gcloud >/dev/null 2>&1 || die "gcloud is not on PATH: install the Google Cloud SDK (https://cloud.google.com/sdk) and run 'gcloud auth login'"
[[ -n "$name" ]] || die "--name is required"
[[ -n "$project" ]] || die "no project: pass --project=PROJECT or set CLOUDSDK_CORE_PROJECT"
[[ -n "$zone" ]] || die "no zone: pass --zone=ZONE or set CLOUDSDK_COMPUTE_ZONE"

# Hosts in the slice: the type's number counts TensorCores (v2-v5p) or chips
# (v5litepod, v6e); either way one VM serves 8 of them.
size="${accelerator##*-}"
[[ "$size" =~ ^[0-9]+$ ]] || die "cannot read the slice size of --accelerator=$accelerator"
hosts=$(( (size + 7) / 8 ))

run() {
  # Prints the command; runs it unless --dry-run.
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ "$dry_run" -eq 0 ]]; then "$@"; fi
}

gtpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone" --project="$project")

if [[ "$delete" -eq 1 ]]; then
  if [[ "$queued" -eq 1 ]]; then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run "${gtpu[@]}" delete "$name" "${where[@]}" --quiet
  fi
  exit 0
fi

[[ -n "$workdir" ]] || die "--workdir is required"
if [[ "$hosts" -gt 1 ]]; then
  [[ "$workdir" == gs://* ]] || die "--workdir=$workdir: a $hosts-host slice needs a gs:// workdir that every worker can write"
  [[ -z "$data_dir" || "$data_dir" == gs://* ]] || die "--data_dir=$data_dir: a $hosts-host slice needs gs:// features"
fi
[[ -f "$config" ]] || die "no config file $config (run from the repository root)"

# Create, or reuse what exists (a preempted VM is replaced).
state=""
if [[ "$dry_run" -eq 0 ]]; then
  state=$("${gtpu[@]}" describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null || true)
else
  run "${gtpu[@]}" describe "$name" "${where[@]}" --format='value(state)'
fi
if [[ "$state" == PREEMPTED || "$state" == TERMINATED ]]; then
  echo "TPU $name is $state: recreating it"
  run "${gtpu[@]}" delete "$name" "${where[@]}" --quiet
  state=""
fi
if [[ -z "$state" ]]; then
  capacity=()
  [[ "$spot" -eq 1 ]] && capacity=(--spot)
  if [[ "$queued" -eq 1 ]]; then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${where[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$runtime" "${capacity[@]}"
    if [[ "$dry_run" -eq 0 ]]; then
      until [[ "$(gcloud compute tpus queued-resources describe "$name" "${where[@]}" \
                  --format='value(state.state)')" == ACTIVE ]]; do
        echo "waiting for the queued resource $name to become ACTIVE ..."; sleep 30
      done
    fi
  else
    run "${gtpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" \
      --version="$runtime" "${capacity[@]}"
  fi
else
  echo "Reusing TPU $name ($state)"
fi

# Install on every worker: the committed tree, a venv made only when missing.
archive="/tmp/grurcn_jax_${name}.tar.gz"
if [[ "$dry_run" -eq 0 ]]; then
  git archive --format=tar.gz -o "$archive" HEAD
else
  echo "+ git archive --format=tar.gz -o $archive HEAD"
fi
run "${gtpu[@]}" scp "$archive" "$name:grurcn_jax.tar.gz" "${where[@]}" --worker=all
install='mkdir -p ~/grurcn_jax && tar -xzf ~/grurcn_jax.tar.gz -C ~/grurcn_jax && cd ~/grurcn_jax && { [ -d .venv ] || python3 -m venv .venv; } && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -U "jax[tpu]" -e .'
run "${gtpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$install"

# Run on all workers; ssh streams every worker's output here.
main_args=(--config="$config" --workdir="$workdir")
[[ -n "$data_dir" ]] && main_args+=(--config.data.dir="$data_dir")
[[ "$hosts" -gt 1 ]] && main_args+=(--distributed)
main_args+=("${extra[@]}")
command_line="cd ~/grurcn_jax && .venv/bin/python -m grurcn_jax.main$(printf ' %q' "${main_args[@]}")"
run "${gtpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$command_line"
