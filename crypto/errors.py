"""Domain exceptions of the crypto package."""

from __future__ import annotations


class CryptoError(Exception):
    """Base class of every error raised by ``crypto``."""


class ProtocolError(CryptoError):
    """A message was malformed, truncated, replayed, foreign or out of order."""


class AuthenticationError(ProtocolError):
    """A message failed a check (signature, sender, recipient, session, attempt, stage): it is
    refused and its sender counts as dropped out."""


class DropoutError(ProtocolError):
    """Too many clients dropped out for the protocol to finish correctly."""


class EncodingError(CryptoError, ValueError):
    """A value cannot be encoded without overflow or loss beyond the stated bound."""


class KeyMaterialError(CryptoError):
    """Key material is missing, malformed, too weak or held by the wrong party."""


class ParameterError(CryptoError, ValueError):
    """Protocol options are invalid or insecure."""


class RegistryError(ValueError):
    """Unknown or duplicate protocol name."""
