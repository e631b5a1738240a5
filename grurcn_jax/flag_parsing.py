"""absl flag parsing for the command-line programs (`main`, `bench`, extraction,
conversion, fusion): a config file that does not load, and config overrides that
name no field or give a value of the wrong type, are one `error:` line and exit
status 1 instead of a traceback; a `~` that starts a flag's value or a config
string is expanded."""

import os
import re
import sys

from absl import flags


def parse(argv, flag_values: flags.FlagValues = flags.FLAGS):
  """absl's flag parsing (an `app.run` flags_parser), with config errors reported
  as one line."""
  try:
    # `--config=~/x.py` is loaded while parsing: expanded before as well as after.
    argv = flag_values([argv[0]] + [_expand_argument(a) for a in argv[1:]])
    if "config" in flag_values:
      flag_values.config.get   # config_flags defers a load failure to first use
    expand_user(flag_values)
    return argv
  except flags.Error as e:
    print(f"error: {e}\nPass --helpfull for the flags.", file=sys.stderr)
  except SyntaxError as e:   # a config file that is not Python
    print(f"error: --config: {e.filename} line {e.lineno}: {e.msg}", file=sys.stderr)
  except OSError as e:   # config_flags' report of a file it could not read
    reason = re.findall(r"\[Errno \d+\] (.*)", str(e))
    print(f"error: --config: {reason[-1] if reason else str(e).splitlines()[0]}",
          file=sys.stderr)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if "has no attribute 'get_config'" in str(e):
      print("error: --config: the file defines no get_config()", file=sys.stderr)
      sys.exit(1)
    message = str(e.args[0] if e.args else e)
    message = message.strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    print(f"error: a --config override does not fit the config: {message}", file=sys.stderr)
  sys.exit(1)


def expand_user(flag_values: flags.FlagValues) -> None:
  """`~` (or `~user`) at the start of a flag's value, a list flag's item or a
  config's string, expanded: a shell leaves it as it is after `=`
  (`--out=~/features` made a folder named `~` in the working directory)."""
  for name in list(flag_values):
    value = flag_values[name].value
    if name == "config" and value is not None:
      _expand_config(value)
    elif _starts_with_tilde(value):
      setattr(flag_values, name, os.path.expanduser(value))
    elif isinstance(value, list) and any(map(_starts_with_tilde, value)):
      setattr(flag_values, name, [os.path.expanduser(v) if _starts_with_tilde(v) else v
                                  for v in value])


def _expand_argument(argument: str) -> str:
  name, equals, value = argument.partition("=")
  if argument.startswith("-") and equals and _starts_with_tilde(value):
    return f"{name}={os.path.expanduser(value)}"
  return argument


def _expand_config(config) -> None:
  for key, value in config.items():
    if hasattr(value, "items"):
      _expand_config(value)
    elif _starts_with_tilde(value):
      config[key] = os.path.expanduser(value)


def _starts_with_tilde(value) -> bool:
  return isinstance(value, str) and value.startswith("~")
