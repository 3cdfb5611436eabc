"""Domain exceptions of the models package."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised by ``models``."""


class ModelConfigError(ModelError, ValueError):
    """An unknown family or task, or an invalid tiny-model setting."""


class ModelLoadError(ModelError, OSError):
    """A pretrained model or tokenizer could not be found or loaded."""


class AdapterConfigError(ModelError, ValueError):
    """An adapter method or option is unknown or has an invalid value."""


class AdapterStateError(ModelError, ValueError):
    """An adapter vector does not match the model's adapter layout."""
