"""The protocol registry and the reach of the conformance suite."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import tests.crypto
from crypto import ParameterError, RegistryError, create_protocol, protocol_names, register
from crypto.plain import PlainProtocol
from tests.crypto.conformance import ProtocolConformance


def test_unknown_protocol_lists_known_names():
    with pytest.raises(RegistryError) as err:
        create_protocol("rot13")
    assert "rot13" in str(err.value) and "plain" in str(err.value)


def test_duplicate_name_is_refused():
    class Impostor(PlainProtocol):
        name = "plain"

    with pytest.raises(RegistryError, match="already registered"):
        register(Impostor)


def test_unknown_option_is_refused():
    with pytest.raises(ParameterError, match="unknown option"):
        create_protocol("plain", key_bits=2048)


def test_every_protocol_has_conformance():
    for mod in pkgutil.iter_modules(tests.crypto.__path__):
        if mod.name.startswith("test_"):
            importlib.import_module(f"tests.crypto.{mod.name}")

    def all_subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from all_subclasses(sub)

    covered = {c.protocol_name for c in all_subclasses(ProtocolConformance)}
    assert set(protocol_names()) <= covered, f"missing: {set(protocol_names()) - covered}"
