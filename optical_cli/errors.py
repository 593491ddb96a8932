"""Error types that separate a user's mistake (exit 2) from a failed run (exit 1).

Domain modules raise these with a message that says what is wrong, where, and how to fix
it; the CLI prints the message as one line and exits with ``exit_code``. Anything else
that escapes a command is a failed run (exit 1) and is recorded in the run's manifest.
"""

from __future__ import annotations


class OpticalError(Exception):
    """A problem the user can fix: bad input, bad config, missing model."""

    exit_code = 2


class ConfigError(OpticalError):
    """A config file or ``--set`` override is invalid."""


class InputError(OpticalError):
    """An input file, directory or value is unusable."""


class ModelNotFoundError(OpticalError):
    """Weights could not be found at the hub id or path that was tried."""


class RunFailed(Exception):
    """The run started but could not finish (exit 1)."""

    exit_code = 1
