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


class DataError(SftprepError, ValueError):
    """A prepared dataset (manifest, LATEST, shards) that is malformed or leaves its root."""
