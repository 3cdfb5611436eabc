"""Domain exceptions of the privacy package."""

from __future__ import annotations


class PrivacyError(Exception):
    """Base class of every error raised by ``privacy``."""


class PrivacyConfigError(PrivacyError, ValueError):
    """A privacy parameter (epsilon, delta, noise, rate, norm, ...) is invalid."""


class PrivacyBudgetExceeded(PrivacyError):  # noqa: N818  (name fixed by the design)
    """A client would spend, or has spent, more epsilon than its budget allows."""


class UnsupportedUnderDP(PrivacyError):  # noqa: N818  (name fixed by the design)
    """The model or adapter cannot be trained with correct per-example gradients."""
