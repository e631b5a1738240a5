"""absl flag parsing for the command-line programs that take a --config
(`main`, `bench`): a config file that does not load, and config overrides that
name no field or give a value of the wrong type, are one `error:` line and exit
status 1 instead of a traceback."""

import re
import sys

from absl import flags


def parse(argv, flag_values: flags.FlagValues = flags.FLAGS):
  """absl's flag parsing (an `app.run` flags_parser), with config errors reported
  as one line."""
  try:
    argv = flag_values(argv)
    if "config" in flag_values:
      flag_values.config.get   # config_flags defers a load failure to first use
    return argv
  except flags.Error as e:
    print(f"error: {e}\nPass --helpfull for the flags.", file=sys.stderr)
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
