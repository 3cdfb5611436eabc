"""Domain exceptions of the federation core."""

from __future__ import annotations


class SecfedError(Exception):
    """Base class of errors raised by ``secfed``."""


class ConfigError(SecfedError, ValueError):
    """The experiment file is invalid; the message names the key and the fix."""


class DataError(SecfedError, ValueError):
    """Data cannot be loaded or partitioned as configured."""


class ResumeError(SecfedError):
    """A run directory cannot be resumed."""
