"""Errors a user can fix: a config value, a data file, a checkpoint, the workdir.

Their message names the bad value, what was expected and the fix. main.py prints it as one
line and exits with status 2; any other exception is a bug and keeps its traceback (every
exception does with --verbose). Each class is also the built-in error it refines, so code that
catches ValueError or FileNotFoundError still does.
"""


class UserError(ValueError):
  """Something in the config, the data, a checkpoint or the workdir is wrong."""


class NotFound(UserError, FileNotFoundError):
  """A file, folder or checkpoint that the run needs does not exist."""


class Diverged(UserError, FloatingPointError):
  """Training produced non-finite values (a learning rate too high, bad data)."""


class DiskFull(UserError, OSError):
  """A save ran out of disk space; the message names the last good checkpoint."""
