"""What every protocol shares: the interface, registry, wire framing, the stage loop, and the
primitives (fixed-point encoding, packing, Shamir sharing, key agreement, mask expansion)."""

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
from .stage_loop import (
    Delivery,
    InProcessTransport,
    RoundOutcome,
    Traffic,
    Transport,
    drive_round,
    run_round,
)

__all__ = [
    "Aggregate",
    "ClientSession",
    "Delivery",
    "InProcessTransport",
    "Protocol",
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
