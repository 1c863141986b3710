"""Errors a user can fix. The CLI prints their message as one sentence and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad flag, unknown profile, bad file). Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """Invalid configuration or preset."""


class ProfileError(UserError):
    """Unknown profile name or malformed profile file."""


class ModelLoadError(UserError):
    """Weights missing (e.g. while offline) or an adapter that does not fit the base models."""

    exit_code = 3


class UntrainedModelError(ModelLoadError):
    """The fusion modules were never trained: every photo would get the same score. Exit code 3."""


class DBAccessError(UserError):
    """The database cannot be opened or written."""

    exit_code = 4


class DBUnavailableError(DBAccessError):
    """The database is usable but not right now: its server is unreachable, or its disk is full.

    Exit code 75 (``EX_TEMPFAIL``): trying again later can work, so a service manager should restart the daemon
    (the README's systemd unit prevents restarts only for 2, 3 and 4).
    """

    exit_code = 75


class DatasetError(UserError):
    """A dataset root is missing files or columns."""
