"""The error types a user can meet; this module imports nothing of the project.

Each carries a message that says what to do. The command line prints it as one line and exits
non-zero; tracebacks are for `--verbose`.
"""

from __future__ import annotations


class SftprepError(Exception):
    """Base of every error sftprep reports as one line."""


class ConfigError(SftprepError, ValueError):
    """A configuration, option or input a user must fix; the message says how."""


class StorageError(SftprepError, OSError):
    """A file or object that cannot be read or written (missing, refused, unreachable)."""


class DatasetError(ConfigError):
    """A dataset that cannot be read as sftprep writes it: a path leading out of it, a
    malformed manifest.json or LATEST, a shard that is not Parquet or holds bad values."""
