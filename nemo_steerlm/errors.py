"""User-facing error types: input or configuration a user can fix. Stages turn them into one line and exit 2."""

from __future__ import annotations


class UserError(ValueError):
    """Base of every error caused by user input (data, config, checkpoint); its message says what to change."""


class MissingInputError(UserError):
    """A stage needs an input (``model=``, ``data=``) that was not given or does not exist."""
