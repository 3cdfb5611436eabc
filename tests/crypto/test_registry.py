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


# Places outside crypto/ allowed to name a protocol: the config default and the Flower
# baseline in the benchmark, which sizes its graph like secfed's secagg+ for a fair comparison.
_NAMED_ON_PURPOSE = {("secfed/config.py", "plain"), ("secfed/bench/sweep.py", "secagg+")}


def test_no_protocol_is_special_cased_outside_crypto():
    """A new protocol needs no change outside its package, its test and one registry line:
    nothing in secfed/, privacy/ or models/ branches on a protocol's name."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    names = set(protocol_names())
    found = set()
    for pkg in ("secfed", "privacy", "models"):
        for path in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in names:
                    found.add((path.relative_to(root).as_posix(), node.value))
    assert found <= _NAMED_ON_PURPOSE, f"protocol names hard-coded: {found - _NAMED_ON_PURPOSE}"


def test_protocol_imports_are_one_line_each():
    """crypto/__init__ registers each protocol family with one import line under [protocols]."""
    from pathlib import Path

    import crypto
    from crypto import get_protocol

    text = Path(crypto.__file__).read_text()
    block = text.split("# [protocols]", 1)[1].split("\n)\n", 1)[0]
    families = {line.strip().split(",")[0] for line in block.splitlines()[2:] if line.strip()}
    for name in protocol_names():
        family = get_protocol(name).__module__.split(".")[1]
        assert family in families, f"{name} is registered from {family}, not under [protocols]"
