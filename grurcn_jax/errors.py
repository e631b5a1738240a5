"""Errors meant for the person running the job, printed without a traceback."""


class ConfigError(ValueError):
  """A config name or value that cannot work; the message lists the valid ones."""
