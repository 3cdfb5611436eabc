"""Domain exceptions of the watermark library."""

from __future__ import annotations

from ..errors import CryptoError, KeyMaterialError


class WatermarkError(CryptoError):
    """Base class of watermark errors."""


class WatermarkCapacityError(WatermarkError, ValueError):
    """More bits were asked for than the anchor can carry with the safety factor."""


class AnchorError(WatermarkError, ValueError):
    """The adapter's parameters do not give the anchor a key was made for."""


class WatermarkKeyError(WatermarkError, KeyMaterialError):
    """A watermark key file is malformed or does not match its commitment."""
