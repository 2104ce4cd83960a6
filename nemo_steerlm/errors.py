"""User-facing error types: input or configuration a user can fix. Stages turn them into one line and exit 2."""

from __future__ import annotations


class UserError(ValueError):
    """Base of every error caused by user input (data, config, checkpoint); its message says what to change."""


class MissingInputError(UserError):
    """A stage needs an input (``model=``, ``data=``) that was not given or does not exist."""


class UnsafeCheckpointError(UserError):
    """A checkpoint member that could run code when loaded (a pickle naming a non-allow-listed global)."""


class DamagedCheckpointError(UserError):
    """A checkpoint archive that is not readable or whose member does not match its recorded checksum."""


class OutputInUseError(UserError):
    """An ``output_dir`` that holds results of other settings, or that another running stage holds."""
