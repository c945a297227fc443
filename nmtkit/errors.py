"""User-facing errors: the CLIs print these as one line and exit non-zero, without a traceback.

Programming errors (bugs) are ordinary exceptions and keep their traceback.
"""

from __future__ import annotations


class NmtkitError(Exception):
    """A mistake in the user's input, config or files; the message says what and where."""


class ConfigError(NmtkitError):
    """An invalid configuration value or combination of values."""


class DataError(NmtkitError):
    """Unreadable, inconsistent or missing data files."""


class CheckpointError(NmtkitError):
    """A checkpoint that is missing, corrupt or from an incompatible version."""


class RegistryError(NmtkitError):
    """A component registered twice, with the wrong base class, or asked for by an unknown name."""
