"""Aggregation protocols behind one interface, their shared pieces, and watermarking.

Layout: ``core/`` holds what every protocol shares (interface, registry, wire framing, the
stage loop, encoding and key-agreement primitives); each protocol family is a package
(``secagg/``, ``paillier/``, ``ckks/``) or a module (``plain``); ``watermark/`` is IP
protection. Importing the package registers every built-in protocol.
"""

# Protocol modules register themselves on import; keep one line per protocol below.
# [protocols]
from . import (
    ckks,  # noqa: F401
    paillier,  # noqa: F401
    plain,  # noqa: F401  (registers "plain")
    secagg,  # noqa: F401
)
from .core import (
    Aggregate,
    ClientSession,
    Delivery,
    InProcessTransport,
    Protocol,
    RoundOutcome,
    RoundSpec,
    ServerSession,
    ServerStep,
    ThreatModel,
    Traffic,
    Transport,
    create_protocol,
    drive_round,
    get_protocol,
    protocol_names,
    register,
    run_round,
)
from .errors import CryptoError, DropoutError, ParameterError, ProtocolError, RegistryError

__all__ = [
    "Aggregate",
    "ClientSession",
    "CryptoError",
    "Delivery",
    "DropoutError",
    "InProcessTransport",
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
    "Transport",
    "create_protocol",
    "drive_round",
    "get_protocol",
    "protocol_names",
    "register",
    "run_round",
]
