"""Aggregation protocols behind one interface, their shared pieces, and watermarking.

Importing the package registers every built-in protocol.
"""

# Protocol modules register themselves on import; keep one line per protocol below.
# [protocols]
from . import (
    ckks,  # noqa: F401
    paillier,  # noqa: F401
    plain,  # noqa: F401  (registers "plain")
    secagg,  # noqa: F401
)
from .driver import RoundOutcome, Traffic, run_round
from .errors import CryptoError, DropoutError, ParameterError, ProtocolError, RegistryError
from .protocol import (
    Aggregate,
    ClientSession,
    Protocol,
    RoundSpec,
    ServerSession,
    ServerStep,
    ThreatModel,
)
from .registry import create_protocol, get_protocol, protocol_names, register

__all__ = [
    "Aggregate",
    "ClientSession",
    "CryptoError",
    "DropoutError",
    "ParameterError",
    "Protocol",
    "ProtocolError",
    "RegistryError",
    "RoundOutcome",
    "RoundSpec",
    "ServerSession",
    "ServerStep",
    "ThreatModel",
    "Traffic",
    "create_protocol",
    "get_protocol",
    "protocol_names",
    "register",
    "run_round",
]
