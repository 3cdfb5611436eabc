"""Conformance of the plain baseline protocol."""

from __future__ import annotations

from crypto import Protocol, create_protocol
from tests.crypto.conformance import ProtocolConformance


class TestPlainConformance(ProtocolConformance):
    protocol_name = "plain"

    def make_protocol(self, tmp_path) -> Protocol:
        return create_protocol("plain")
