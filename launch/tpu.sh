#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create (or reuse) it, install the package on
# every worker, start python -m grurcn_jax.main on all workers detached from ssh
# (output in ~/grurcn_jax/run.log on each), follow worker 0's log, report every
# worker's exit status. Run again to follow a run that is still going.
#
#   launch/tpu.sh --name=grurcn --zone=us-central2-b --project=my-project \
#       --accelerator=v4-32 --config=configs/ucf101_grurcn.py \
#       --workdir=gs://bucket/runs/grurcn --data_dir=gs://bucket/features/ucf101_split1
#
# Re-running the same command after a preemption resumes training from the newest
# checkpoint (a preempted VM, or a failed/suspended queued resource, is deleted and
# created again first), on the package versions the run began with: a gs:// workdir
# keeps them in environment/tpu-pip-freeze.txt (delete it to install the newest).
# Each worker's output is copied to a gs:// workdir's logs/START/HOSTNAME.log every
# $TPU_LOG_COPY_S seconds (default 120) and when the run ends. Extra flags after `--` go to grurcn_jax.main (e.g.
# -- --config.batch_size=128). Each worker needs the Python setup.cfg's python_requires
# asks for: its python3 when new enough, else python3.X from apt (Ubuntu 22.04, the
# default runtime, has python3.10 and carries python3.11 in universe).
#
# Options:
#   --name=NAME            TPU VM (or queued resource) name            [required]
#   --zone=ZONE            default: $CLOUDSDK_COMPUTE_ZONE             [required]
#   --project=PROJECT      default: $CLOUDSDK_CORE_PROJECT             [required]
#   --accelerator=TYPE     e.g. v4-8, v4-32, v5litepod-16 (default v4-8);
#                          also gcloud's --accelerator-type=TYPE (or --accelerator_type)
#   --runtime=VERSION      TPU software version (default: the accelerator's,
#                          v2-alpha-tpuv6e, v2-alpha-tpuv5 for v5p,
#                          v2-alpha-tpuv5-lite for v5litepod, tpu-ubuntu2204-base
#                          for v2-v4); also gcloud's --version=VERSION
#   --config=FILE          experiment config (default configs/ucf101_grurcn.py)
#   --workdir=DIR          checkpoints and metrics; gs:// required on multi-host,
#                          with --spot and with --queued (a replaced VM loses its disk);
#                          else gs://, an absolute path or ~/... on the VM
#   --data_dir=DIR         feature directory (config.data.dir); gs:// on multi-host
#   --env=KEY=VALUE        an environment variable for the run on every worker
#                          (repeatable), e.g. --env=LIBTPU_INIT_ARGS=--xla_tpu_...
#   --spot                 spot (preemptible) capacity
#   --queued               create through a queued resource (waits for capacity)
#   --queued_timeout=SECS  stop waiting for the queued resource after SECS seconds
#                          (default 43200, 12 h; it stays queued); polls every
#                          $TPU_QUEUED_POLL_S seconds (default 30)
#   --delete               tear the TPU down and exit
#   --dry-run              print every gcloud command, run none
# An option's value may also be the next word, as gcloud allows: --zone us-central2-b.
# Two spellings of one option (--accelerator and --accelerator-type, --runtime and
# --version) given different values are an error.
set -euo pipefail

name="" zone="${CLOUDSDK_COMPUTE_ZONE:-}" project="${CLOUDSDK_CORE_PROJECT:-}"
accelerator="v4-8" runtime="" config="configs/ucf101_grurcn.py"
workdir="" data_dir="" spot=0 queued=0 delete=0 dry_run=0 queued_timeout=43200
run_env=()  # KEY=VALUE for the run on the workers (--env); may stay empty
poll_s="${TPU_QUEUED_POLL_S:-30}"
extra=()  # may stay empty: expanded as ${extra[@]+"${extra[@]}"}, since an empty
          # "${extra[@]}" under set -u is an error on bash < 4.4 (macOS's /bin/bash)

die() { echo "tpu.sh: error: $*" >&2; exit 2; }    # a usage error: nothing was done
fail() { echo "tpu.sh: error: $*" >&2; exit 1; }   # a failure after starting

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
    --queued_timeout|--queued-timeout) var=queued_timeout ;;
    --env) var="env" ;;
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
    if [[ "$var" == env ]]; then
      [[ "$value" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env=$value: give KEY=VALUE"
      run_env+=("$value")
    else
      set_opt "$var" "$opt" "$value"
    fi
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
[[ "$queued_timeout" =~ ^[0-9]+$ ]] || die "--queued_timeout=$queued_timeout: a number of seconds"
[[ "$poll_s" =~ ^[0-9]+$ ]] || die "TPU_QUEUED_POLL_S=$poll_s: a number of seconds"

# Hosts in the slice: the type's number counts TensorCores (v2-v5p: 8 a VM) or
# chips (v5litepod, v6e: up to 8 on one VM, 4 a VM in slices of several).
size="${accelerator##*-}"
[[ "$size" =~ ^[0-9]+$ ]] || die "cannot read the slice size of --accelerator=$accelerator"
case "$accelerator" in
  v5litepod-*|v5e-*|v6e-*) hosts=$(( size <= 8 ? 1 : size / 4 )) ;;
  *) hosts=$(( (size + 7) / 8 )) ;;
esac
# Each TPU generation has its own software version; the v2-v4 one does not run v5+.
if [[ -z "$runtime" ]]; then
  case "$accelerator" in
    v6e-*) runtime="v2-alpha-tpuv6e" ;;
    v5p-*) runtime="v2-alpha-tpuv5" ;;
    v5litepod-*|v5e-*) runtime="v2-alpha-tpuv5-lite" ;;
    *) runtime="tpu-ubuntu2204-base" ;;
  esac
fi

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
# The run starts in ~/grurcn_jax on each worker: a relative workdir would land
# inside the copied tree, where the next launch's tree is unpacked.
[[ "$workdir" == gs://* || "$workdir" == /* || "$workdir" == \~/* ]] ||
  die "--workdir=$workdir: give gs://..., an absolute path or ~/... on the VM (a relative one would be inside ~/grurcn_jax there)"
if [[ "$workdir" != gs://* && ( "$spot" -eq 1 || "$queued" -eq 1 ) ]]; then
  die "--workdir=$workdir: with --spot or --queued a preempted VM is replaced, and its disk with the checkpoints: give a gs:// workdir"
fi
if [[ "$hosts" -gt 1 ]]; then
  [[ "$workdir" == gs://* ]] || die "--workdir=$workdir: a $hosts-host slice needs a gs:// workdir that every worker can write"
  [[ -z "$data_dir" || "$data_dir" == gs://* ]] || die "--data_dir=$data_dir: a $hosts-host slice needs gs:// features"
fi
[[ -f "$config" ]] || die "no config file $config (run from the repository root)"
# The workers get the committed tree (git archive HEAD), not this working tree.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
git -C "$repo" ls-files --error-unmatch "$config" >/dev/null 2>&1 ||
  die "$config is not committed: the workers get the committed tree; commit it first"
if [[ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  echo "tpu.sh: warning: uncommitted changes in $repo are not sent to the workers" \
       "(they get the committed tree, HEAD): commit them to use them" >&2
fi

# The Python every worker needs, from the one place that states it.
setup_cfg="$repo/setup.cfg"
py_min=$(sed -n 's/^python_requires[[:space:]]*=[[:space:]]*>=[[:space:]]*\([0-9]*\.[0-9]*\).*/\1/p' \
           "$setup_cfg" 2>/dev/null || true)
[[ "$py_min" =~ ^3\.[0-9]+$ ]] || die "cannot read 'python_requires = >=3.N' from $setup_cfg"

# state_of VAR FIELD GCLOUD...: VAR=the FIELD that `GCLOUD describe` gives, empty
# when gcloud says there is none (or --dry-run, which prints the command). Any
# other failure (quota, network, credentials) stops here: read as "none", it
# would have a live TPU deleted and created again.
state_of() {
  local var="$1" field="$2" out="" errors
  shift 2
  if [[ "$dry_run" -eq 0 ]]; then
    errors=$(mktemp)
    if out=$("$@" describe "$name" "${where[@]}" --format="value($field)" 2>"$errors"); then
      :
    elif grep -q 'NOT_FOUND' "$errors"; then
      out=""
    else
      out=$(tr '\n' ' ' < "$errors"); rm -f "$errors"
      fail "gcloud could not tell the state of $name (${out:-no message}); nothing" \
           "was changed: run the same command again"
    fi
    rm -f "$errors"
  else
    run "$@" describe "$name" "${where[@]}" --format="value($field)"
  fi
  printf -v "$var" '%s' "$out"
}
# vm=the TPU VM's state; a VM of another accelerator type under this name is an
# error (reused, it would run this config on another slice, or single-host).
vm_state() {
  local type
  state_of vm "state,acceleratorType" "${gtpu[@]}"
  type="${vm#*$'\t'}"
  [[ "$vm" == *$'\t'* ]] || type=""
  vm="${vm%%$'\t'*}"
  if [[ -n "$type" && "$type" != "$accelerator" ]]; then
    fail "TPU $name exists as a $type, not the $accelerator asked for: give" \
         "--accelerator=$type, another --name, or delete it first (--delete)"
  fi
}

# Queued resources (--queued): CREATING, ACCEPTED, WAITING_FOR_RESOURCES and
# PROVISIONING lead to ACTIVE; FAILED and SUSPENDED (a preempted node) never do.
qr=(gcloud compute tpus queued-resources)
qr_state() { state_of qstate state.state "${qr[@]}"; }  # qstate=the queued resource's state

# qr_wait GOAL: poll until the queued resource is ACTIVE (GOAL=active) or gone
# (GOAL=gone); FAILED or SUSPENDED while waiting for ACTIVE, or --queued_timeout
# seconds, stop the script.
qr_wait() {
  local goal="$1" start="$SECONDS" what="ACTIVE"
  [[ "$goal" == active ]] || what="deleted"
  if [[ "$dry_run" -eq 1 ]]; then
    echo "# then wait (at most ${queued_timeout}s) until the queued resource is $what"
    return 0
  fi
  while :; do
    qr_state
    if [[ "$goal" == gone ]]; then
      [[ -n "$qstate" ]] || return 0
    else
      case "$qstate" in
        ACTIVE) return 0 ;;
        FAILED|SUSPENDING|SUSPENDED)
          fail "queued resource $name is $qstate (details: ${qr[*]} describe $name ${where[*]});" \
               "run the same command again to delete it and queue a new one" ;;
        "") fail "queued resource $name disappeared while waiting for it: run the same command again to queue a new one" ;;
      esac
    fi
    if (( SECONDS - start >= queued_timeout )); then
      fail "gave up after ${queued_timeout}s (--queued_timeout) waiting for queued resource" \
           "$name to be $what: it is still $qstate. Run the same command again to keep" \
           "waiting, or add --delete to remove it"
    fi
    echo "waiting for the queued resource $name to be $what (now $qstate, $(( SECONDS - start ))s) ..."
    sleep "$poll_s"
  done
}

capacity=()
[[ "$spot" -eq 1 ]] && capacity=(--spot)

created=0  # 1 once this run made the TPU: nothing can be running on it yet
qr_create() {
  created=1
  run "${qr[@]}" create "$name" --node-id="$name" "${where[@]}" \
    --accelerator-type="$accelerator" --runtime-version="$runtime" ${capacity[@]+"${capacity[@]}"}
  qr_wait active
}

vm_create_or_reuse() {  # CREATE_COMMAND: a preempted VM is deleted, then created again
  if [[ "$vm" == PREEMPTED || "$vm" == TERMINATED ]]; then
    echo "TPU $name is $vm: recreating it"
    run "${gtpu[@]}" delete "$name" "${where[@]}" --quiet
    vm=""
  fi
  if [[ -z "$vm" ]]; then "$@"; else echo "Reusing TPU $name ($vm)"; fi
}

vm_create() {
  created=1
  run "${gtpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" \
    --version="$runtime" ${capacity[@]+"${capacity[@]}"}
}

# Create, or reuse what exists: a preempted VM is replaced, and so is a queued
# resource that failed, was suspended (preempted) or lost its node.
vm_state
if [[ "$queued" -eq 1 ]]; then
  qr_state
  if [[ "$qstate" == ACTIVE && ( -z "$vm" || "$vm" == PREEMPTED || "$vm" == TERMINATED ) ]]; then
    qstate="ACTIVE, its node ${vm:-gone}"
  fi
  case "$qstate" in
    "") vm_create_or_reuse qr_create ;;  # none: a VM made without --queued is reused
    ACTIVE) echo "Reusing queued resource $name (ACTIVE, TPU $vm)" ;;
    CREATING|ACCEPTED|WAITING_FOR_RESOURCES|PROVISIONING)
      echo "Queued resource $name is already $qstate: waiting for it"
      qr_wait active ;;
    DELETING)
      echo "Queued resource $name is being deleted: queueing a new one when it is gone"
      qr_wait gone
      qr_create ;;
    FAILED|SUSPENDING|SUSPENDED|"ACTIVE, its node"*)
      echo "Queued resource $name is $qstate: deleting it and queueing a new one"
      run "${qr[@]}" delete "$name" "${where[@]}" --force --quiet
      qr_wait gone
      qr_create ;;
    *) fail "queued resource $name is in an unknown state '$qstate'" ;;
  esac
else
  vm_create_or_reuse vm_create
fi

# Install on every worker: the committed tree, in a venv on a Python >= $py_min. The
# venv is kept while its Python is new enough; it is made with python3 when that is
# new enough, else with an installed python3.N >= $py_min, else with python$py_min
# from apt (Ubuntu 22.04: python3 is 3.10, universe has python3.11). One line per
# shell command; the lines are joined with spaces, so each ends in ';', '&&', '||',
# 'then', 'else' or 'do'.
# A gs:// workdir records the versions the first install got (pip freeze, in
# $pins): a VM created again after a preemption installs the same jax[tpu], libtpu
# and the rest, so a run resumes on the software it began with. Deleting that file
# lets the next install take the newest.
pins=""
[[ "$workdir" != gs://* ]] || pins="${workdir%/}/environment/tpu-pip-freeze.txt"
# Each worker's output is copied to a gs:// workdir (logs/START/HOSTNAME.log) every
# $TPU_LOG_COPY_S seconds and when the run ends: a preempted VM takes its disk along.
logs=""
[[ "$workdir" != gs://* ]] || logs="${workdir%/}/logs/$(date -u +%Y%m%d-%H%M%S)"
log_copy_s="${TPU_LOG_COPY_S:-120}"
[[ "$log_copy_s" =~ ^[1-9][0-9]*$ ]] || die "TPU_LOG_COPY_S=$log_copy_s: a number of seconds, at least 1"
# The run lives on the workers, detached from this script's ssh sessions (a dropped
# connection, a closed laptop or Ctrl-C here must not end a days-long run): each
# worker writes its output to ~/grurcn_jax/run.log and its exit status to
# ~/grurcn_jax/run.status; its pid is in ~/grurcn_jax/run.pid. A TPU this run did
# not create may still be running one: then nothing is installed or started under
# it, and this script follows it instead.
running=""
# A worker runs it while run.pid names a live process of this package's run (after
# a reboot the number may belong to another process).
# shellcheck disable=SC2016  # expanded on the worker
check_running='cd ~/grurcn_jax 2>/dev/null && [ -f run.pid ] && ps -o args= -p "$(cat run.pid)" 2>/dev/null | grep -q grurcn_jax.main && echo "RUNNING $(hostname) $(cat run.pid)"; true'
if [[ "$created" -eq 0 ]]; then
  if [[ "$dry_run" -eq 0 ]]; then
    # Every worker is asked; one that cannot be reached stops the script (taken as
    # "not running", it would have a second run started over the first).
    checked=$("${gtpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$check_running") ||
      fail "could not ask every worker of $name whether a run is still going; nothing" \
           "was changed: run the same command again"
    running=$(grep '^RUNNING' <<< "$checked" | head -n 1 || true)
  else
    run "${gtpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$check_running"
  fi
fi

install_and_start() {
  archive="/tmp/grurcn_jax_${name}.tar.gz"
  if [[ "$dry_run" -eq 0 ]]; then
    git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
  else
    echo "+ git -C $repo archive --format=tar.gz -o $archive HEAD"
  fi
  run "${gtpu[@]}" scp "$archive" "$name:grurcn_jax.tar.gz" "${where[@]}" --worker=all
  py_candidates="python3"  # then the oldest admitted first: the versions CI and wheels cover
  for (( minor = ${py_min#3.}; minor <= ${py_min#3.} + 4; minor++ )); do py_candidates+=" python3.$minor"; done
  # (read, not $(cat <<EOF): bash 3.2 misparses a here-document inside $(...))
  read -r -d '' install <<'EOF' || true
mkdir -p ~/grurcn_jax && tar -xzf ~/grurcn_jax.tar.gz -C ~/grurcn_jax && cd ~/grurcn_jax || exit 1;
py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] < (@PY_TUPLE@))' >/dev/null 2>&1; };
if ! py_ok .venv/bin/python; then
  py=; for c in @PY_CANDIDATES@; do
    if command -v "$c" >/dev/null 2>&1 && py_ok "$c"; then py="$c"; break; fi;
  done;
  if [ -z "$py" ]; then
    echo "python3 is $(python3 --version 2>&1), older than @PY_MIN@: installing python@PY_MIN@ from apt";
    sudo apt-get -qq -o DPkg::Lock::Timeout=600 update &&
    sudo DEBIAN_FRONTEND=noninteractive apt-get -qq -y -o DPkg::Lock::Timeout=600 install python@PY_MIN@ python@PY_MIN@-venv &&
    py_ok python@PY_MIN@ && py=python@PY_MIN@ || exit 1;
  fi;
  rm -rf .venv && "$py" -m venv .venv || exit 1;
fi;
pins=@PINS@; found=; rm -f pins.txt;
if [ -n "$pins" ]; then
  if gcloud storage cat "$pins" > pins.txt 2> pins.err; then found=1;
  elif ! grep -qiE 'matched no objects|not found|no urls matched' pins.err; then
    echo "could not read $pins (the versions to install): $(cat pins.err)"; exit 1;
  fi;
fi;
if [ -s pins.txt ]; then
  echo "installing the versions this workdir's run began with ($pins; delete it to install the newest)";
  .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -c pins.txt "jax[tpu]" -e . ||
    { echo "could not install the versions in $pins: delete it to install the newest"; exit 1; };
else
  .venv/bin/pip install -q -U pip && .venv/bin/pip install -q "jax[tpu]" -e . || exit 1;
  if [ -n "$pins" ]; then
    .venv/bin/pip freeze --exclude-editable | grep '==' > pins.txt;
    if [ -n "$found" ]; then clobber=; else clobber=--no-clobber; fi;
    gcloud storage cp $clobber pins.txt "$pins" > /dev/null 2>&1 ||
      echo "warning: could not record the installed versions in $pins";
  fi;
fi
EOF
  install="${install//@PY_TUPLE@/${py_min/./, }}"
  install="${install//@PY_MIN@/$py_min}"
  install="${install//@PY_CANDIDATES@/$py_candidates}"
  install="${install//@PINS@/$(printf '%q' "$pins")}"
  install=$(printf '%s' "$install" | sed 's/^ *//' | tr '\n' ' ')
  run "${gtpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$install"

  # Start on all workers, in a session of its own (setsid, nohup): it outlives ssh.
  main_args=(--config="$config" --workdir="$workdir")
  [[ -n "$data_dir" ]] && main_args+=(--config.data.dir="$data_dir")
  [[ "$hosts" -gt 1 ]] && main_args+=(--distributed)
  main_args+=(${extra[@]+"${extra[@]}"})
  local with_env=""
  [[ -z ${run_env[*]+x} ]] || with_env="env$(printf ' %q' ${run_env[@]+"${run_env[@]}"}) "
  # The copy of the log: in the background while it runs, and once more at its end.
  # A SIGTERM (a preemption's shutdown) is trapped, not obeyed, so that the wrapper
  # outlives the run's checkpoint save and copies the log after it.
  local copy_log="" copier="" final_copy=""
  if [[ -n "$logs" ]]; then
    copy_log="gcloud storage cp run.log $(printf '%q' "$logs")/\$(hostname).log > /dev/null 2>&1"
    # The loop stops on TERM between copies (a copy under way finishes first:
    # waited for, it cannot land after the final one with an older log).
    copier="(trap 'exit 0' TERM; while :; do sleep $log_copy_s & wait \$!; $copy_log; done) & copier=\$!; "
    final_copy="; kill \$copier 2> /dev/null; wait \$copier; $copy_log || echo $(printf '%q' "could not copy run.log to $logs")"
  fi
  command_line="trap : TERM; cd ~/grurcn_jax || exit 1; $copier$with_env.venv/bin/python -m grurcn_jax.main$(printf ' %q' "${main_args[@]}"); s=\$?$final_copy; echo \$s > ~/grurcn_jax/run.status"
  # An earlier run's log is kept beside it, not overwritten.
  start="cd ~/grurcn_jax || exit 1; rm -f run.status; [ ! -f run.log ] || mv run.log run.\$(date +%Y%m%d-%H%M%S).log; setsid nohup bash -c $(printf '%q' "$command_line") > run.log 2>&1 < /dev/null & echo \$! > run.pid"
  run "${gtpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$start"
}

if [[ -n "$running" ]]; then
  read -r _ host pid <<< "$running"
  echo "A run is still going on $name ($host, pid $pid): following worker 0's log; nothing is installed or started"
else
  install_and_start
fi

# Follow worker 0's log until its run ends (process 0 ends last), then ask every
# worker how its run ended.
# shellcheck disable=SC2016  # expanded on the worker
follow='cd ~/grurcn_jax && tail -n +1 -F --pid="$(cat run.pid)" run.log'
[[ -z "$running" ]] || follow="${follow/-n +1/-n 200}"
if ! run "${gtpu[@]}" ssh "$name" "${where[@]}" --worker=0 --command="$follow"; then
  fail "lost the connection to worker 0 of $name; the run goes on there (or the TPU was" \
       "preempted): run the same command again to follow it, or to resume a preempted run"
fi
# shellcheck disable=SC2016  # expanded on the worker
status='cd ~/grurcn_jax && s=$(cat run.status 2>/dev/null); echo "$(hostname): exit status ${s:-none (killed?)}"; [ "${s:-1}" = 0 ]'
if ! run "${gtpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$status"; then
  fail "the run ended with an error on a worker (statuses above). Each worker's output:" \
       "${gtpu[*]} ssh $name ${where[*]} --worker=N --command='tail -n 100 ~/grurcn_jax/run.log'${logs:+, or the newest of ${workdir%/}/logs/}." \
       "Run the same command again to resume from the newest checkpoint"
fi
