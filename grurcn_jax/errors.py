"""Every error meant for the person running the job, in one place.

Each is a problem the user can fix from the message alone (which names the field,
file or value and what would work); the command-line programs print it as one line
with no traceback. Anything else is a bug in this package and keeps its traceback.
"""


class Error(Exception):
  """Base class: the message says what is wrong and what to do."""


class ConfigError(Error, ValueError):
  """A config name or value that cannot work; the message lists the valid ones."""


class CheckpointMismatchError(ConfigError):
  """The checkpoint was trained with a model config other than the current one."""


class CheckpointReadError(Error, RuntimeError):
  """A checkpoint whose files cannot be read (damaged, or partly deleted)."""


class TrainingError(Error, RuntimeError):
  """Training cannot go on (non-finite loss, preemption); the message says what to do.
  `exit_status`: the program's (130 for a Ctrl-C, as a shell reports one)."""

  def __init__(self, message: str, exit_status: int = 1):
    super().__init__(message)
    self.exit_status = exit_status


class FeatureFormatError(Error, RuntimeError):
  """A feature directory or shard that cannot be read; the message names the file."""


class SplitFileError(Error, RuntimeError):
  """A missing or malformed split file or class index (reported before any work)."""


class VideoDecodeError(Error, RuntimeError):
  """A video file that cannot be decoded (skipped and reported by extraction)."""


class ExtractionError(Error, RuntimeError):
  """Features that cannot be stored faithfully: the network gave NaN or infinite
  activations (broken weights), or normalised values beyond float16's range; the
  message names the level and the video."""


class FusionError(Error, ValueError):
  """Score files that cannot be fused; the message says why."""


class FlopCountError(Error, ValueError):
  """A model whose FLOPs cannot be counted statically (a loop with a runtime trip
  count); the message says what to use instead."""
