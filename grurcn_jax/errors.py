"""Errors meant for the person running the job, printed without a traceback."""


class ConfigError(ValueError):
  """A config name or value that cannot work; the message lists the valid ones."""


class TrainingError(RuntimeError):
  """Training cannot go on (non-finite loss, preemption); the message says what to do."""
