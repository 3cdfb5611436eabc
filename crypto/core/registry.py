"""Guarded registry of aggregation protocols, by name."""

from __future__ import annotations

from typing import Any

from ..errors import RegistryError
from .protocol import Protocol

_PROTOCOLS: dict[str, type[Protocol]] = {}


def register(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator adding a protocol under ``cls.name``; duplicates raise."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise RegistryError(f"{cls.__qualname__} needs a non-empty class attribute 'name'")
    if name in _PROTOCOLS and _PROTOCOLS[name] is not cls:
        raise RegistryError(
            f"protocol {name!r} is already registered by {_PROTOCOLS[name].__qualname__}; "
            f"registered: {', '.join(sorted(_PROTOCOLS))}"
        )
    _PROTOCOLS[name] = cls
    return cls


def protocol_names() -> list[str]:
    """Names of every registered protocol, sorted."""
    return sorted(_PROTOCOLS)


def get_protocol(name: str) -> type[Protocol]:
    """The protocol class registered as ``name``."""
    try:
        return _PROTOCOLS[name]
    except KeyError:
        raise RegistryError(
            f"unknown protocol {name!r}; choose one of: {', '.join(protocol_names())}"
        ) from None


def create_protocol(name: str, **options: Any) -> Protocol:
    """Instantiate the protocol ``name`` with its options."""
    return get_protocol(name)(**options)
