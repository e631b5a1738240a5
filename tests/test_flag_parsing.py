"""A `~` at the start of a flag's value or a config string is the home directory:
a shell leaves it as it is after `=`, and `--out=~/features` made a folder named
`~` in the working directory (`--workdir` alone was expanded)."""

import os
import subprocess
import sys

from absl import flags
import pytest
from ml_collections import config_flags

from grurcn_jax import flag_parsing
from tests.training_setup import REPO


def test_a_leading_tilde_in_flags_lists_and_config_strings_is_expanded(monkeypatch,
                                                                        tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path))
  # The config file itself from ~ too: it is loaded while the flags are parsed.
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "mine.py").write_text(
      "from configs import demo\n\ndef get_config():\n  return demo.get_config()\n")
  argv = ["prog", "--out=~/features", "--name=a~b", "--scores=~/a.npz,b.npz",
          "--config=~/configs/mine.py", "--config.data.dir=~/demo",
          "--config.caption.encoder_checkpoint=~/run@100"]
  values = flags.FlagValues()
  flags.DEFINE_string("out", None, "", flag_values=values)
  flags.DEFINE_string("name", None, "", flag_values=values)
  flags.DEFINE_list("scores", None, "", flag_values=values)
  # As main and bench define it: overrides found in argv, the config locked.
  config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  flag_parsing.parse(argv, values)
  assert values.out == f"{tmp_path}/features"
  assert values.name == "a~b"   # not at the start: as given
  assert values.scores == [f"{tmp_path}/a.npz", "b.npz"]
  assert values.config.data.dir == f"{tmp_path}/demo"
  assert values.config.caption.encoder_checkpoint == f"{tmp_path}/run@100"


def test_a_program_reads_and_writes_under_home_not_a_folder_named_tilde(tmp_path):
  home, cwd = tmp_path / "home", tmp_path / "cwd"
  home.mkdir(), cwd.mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "grurcn_jax.data.convert", "--src=~/features",
       "--dst=~/converted"], capture_output=True, text=True, cwd=cwd, timeout=120,
      env=dict(os.environ, HOME=str(home), PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1
  assert f"{home}/features" in result.stderr, result.stderr
  assert not os.listdir(cwd)


def test_a_config_file_that_is_not_python_is_one_line(tmp_path, capsys):
  config = tmp_path / "config.py"
  config.write_text("def get_config():\n  return 'unterminated\n")
  argv = ["prog", f"--config={config}"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
  with pytest.raises(SystemExit) as exit:
    flag_parsing.parse(argv, values)
  assert exit.value.code == 1
  err = capsys.readouterr().err   # (Python's own words follow: they vary by version)
  assert err.startswith(f"error: --config: {config} line 2: unterminated string"), err
  assert len(err.splitlines()) == 1, err
