"""The one aggregation-protocol interface.

A protocol is a factory of two small state machines that exchange bytes, stage by stage:

* :class:`ServerSession` opens a round for a cohort (:meth:`~ServerSession.start`), then
  receives the replies of whoever answered (:meth:`~ServerSession.advance`) and either asks
  for the next stage or finishes. Missing replies are dropouts.
* :class:`ClientSession` is built from the client's update vector and weight and answers
  each server message (:meth:`~ClientSession.handle`). Where clients hold the decryption key
  the server's last messages carry the encrypted aggregate and the client decodes it.

The outcome is an :class:`Aggregate`: the weighted sum of the surviving cohort's vectors, the
total weight, who learned it, and a per-coordinate error bound. The runner only ferries bytes
(see :mod:`crypto.core.stage_loop`), so the same protocol runs in-process and over Flower.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from ..errors import ParameterError, ProtocolError
from . import identity
from .identity import Keyring

LearnedBy = Literal["server", "clients"]


@dataclass(frozen=True)
class RoundSpec:
    """What every party knows before a round starts."""

    job_id: str
    round: int
    cohort: tuple[int, ...]
    dim: int

    def __post_init__(self) -> None:
        if not self.cohort:
            raise ValueError("a round needs a non-empty cohort")
        if len(set(self.cohort)) != len(self.cohort):
            raise ValueError(f"cohort has duplicate client ids: {self.cohort}")
        if any(c < 0 or c >= 0xFFFFFFFF for c in self.cohort):
            raise ValueError("client ids must be in [0, 2**32 - 1)")
        if self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")

    @property
    def session_id(self) -> bytes:
        """16-byte id binding messages to this job, round and cohort."""
        text = f"secfed/session/{self.job_id}/{self.round}/{','.join(map(str, self.cohort))}"
        return hashlib.sha256(text.encode()).digest()[:16]


@dataclass(frozen=True)
class Aggregate:
    """Result of one aggregation round."""

    weighted_sum: NDArray[np.float64]
    total_weight: float
    contributors: tuple[int, ...]
    learned_by: LearnedBy
    error_bound: float = 0.0

    @property
    def mean(self) -> NDArray[np.float64]:
        """Weighted mean of the contributors' vectors."""
        if self.total_weight <= 0:
            raise ProtocolError(f"total weight {self.total_weight} is not positive")
        return self.weighted_sum / self.total_weight


@dataclass(frozen=True)
class ServerStep:
    """What the server sends next. ``final`` messages expect no reply."""

    messages: dict[int, bytes]
    final: bool = False


@dataclass(frozen=True)
class ThreatModel:
    """Who holds which key, what the server sees, what breaks the protocol."""

    protocol: str
    key_holders: str
    server_sees: str
    dropouts: str
    breaks_if: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    # What holds against each adversary: "semi_honest_server", "malicious_server_with_roster",
    # "network_attacker" (each sentence attacked by a test in tests/crypto/).
    adversaries: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "key_holders": self.key_holders,
            "server_sees": self.server_sees,
            "dropouts": self.dropouts,
            "breaks_if": self.breaks_if,
            "notes": list(self.notes),
            "adversaries": dict(self.adversaries),
        }


ROSTER = (
    "the job's roster (client id -> Ed25519 public key, made at job start or by `secfed keys "
    "generate --scheme identity`) is the PKI every party trusts"
)
NETWORK = (
    "every message is authenticated by its sender over job, round, cohort, a per-attempt "
    "nonce, stage, sender and recipient (Ed25519 signatures checked against the roster, or a "
    "GMAC under a pair key agreed by signed messages): an altered, injected, "
    "re-addressed, re-stamped or replayed message (also from an earlier attempt) is refused "
    "and counts as its sender's dropout, never a wrong sum; messages are not encrypted"
)
UNAUTHENTICATED = (
    "UNAUTHENTICATED mode (no roster): messages are unsigned, so nothing holds against a "
    "malicious server or a network attacker beyond what the payloads protect themselves"
)


def adversaries(*, authenticated: bool, semi_honest: str, malicious: str) -> dict[str, str]:
    """The threat model's per-adversary statements (network and roster text shared)."""
    if not authenticated:
        return {
            "semi_honest_server": semi_honest,
            "malicious_server_with_roster": UNAUTHENTICATED,
            "network_attacker": UNAUTHENTICATED,
        }
    return {
        "semi_honest_server": semi_honest,
        "malicious_server_with_roster": f"{ROSTER}; {malicious}",
        "network_attacker": NETWORK,
    }


class ClientSession(ABC):
    """Client side of one round."""

    #: Coordinates clipped to the protocol's range under ``out_of_range = "clip"``
    #: (:mod:`crypto.core.valuerange`); 0 otherwise.
    clipped_coordinates: int = 0

    def __init__(self, spec: RoundSpec, client_id: int, vector: NDArray[Any], weight: float):
        if client_id not in spec.cohort:
            raise ValueError(f"client {client_id} is not in the round's cohort {spec.cohort}")
        vec = np.asarray(vector)
        if vec.ndim != 1 or vec.shape[0] != spec.dim:
            raise ValueError(f"update has shape {vec.shape}, expected ({spec.dim},)")
        if not np.all(np.isfinite(vec)):
            raise ValueError(f"client {client_id}'s update holds NaN or infinity")
        if not (weight > 0 and np.isfinite(weight)):
            raise ValueError(f"client weight must be positive and finite, got {weight}")
        self.spec = spec
        self.client_id = client_id
        self.vector = vec.astype(np.float32, copy=False)
        self.weight = float(weight)

    @abstractmethod
    def handle(self, message: bytes) -> bytes | None:
        """Answer one server message; ``None`` when the message expects no reply."""

    def aggregate(self) -> Aggregate | None:
        """The decoded aggregate, where this client can read it (after the final message)."""
        return None


class ServerSession(ABC):
    """Server side of one round."""

    def __init__(self, spec: RoundSpec):
        self.spec = spec
        # Clients whose message failed a check, with the reason: they count as dropped out.
        self.refused: dict[int, str] = {}
        self._inbox: dict[int, bytes] = {}

    @abstractmethod
    def start(self) -> dict[int, bytes]:
        """Messages of the first stage, one per cohort member."""

    @abstractmethod
    def advance(self, replies: Mapping[int, bytes]) -> ServerStep:
        """Take the replies of the clients that answered; clients absent are dropouts."""

    def receive(self, client: int, reply: bytes) -> None:
        """One client's reply to the current stage, handed over as it arrives.

        A transport that gets replies one by one calls this for each, then
        :meth:`close_stage`. The default keeps the reply until then; a session overrides it to
        absorb large replies at once (so the server holds a running sum, not every reply).
        """
        if client in self._inbox:
            raise ProtocolError(f"client {client}'s reply was handed over twice in one stage")
        self._inbox[client] = reply

    def close_stage(self) -> ServerStep:
        """:meth:`advance` over the replies handed to :meth:`receive` since the last step."""
        replies, self._inbox = self._inbox, {}
        return self.advance(replies)

    def aggregate(self) -> Aggregate | None:
        """The aggregate, where the server can read it (after the final step)."""
        return None


class Protocol(ABC):
    """Factory of client and server sessions for one job.

    Subclasses set ``name`` and ``learned_by``, validate their options in ``__init__``
    (unknown or insecure options raise :class:`~crypto.errors.ParameterError`), and state their
    threat model in the module docstring and :meth:`threat_model`.
    """

    name: ClassVar[str]
    learned_by: ClassVar[LearnedBy]
    option_names: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.option_names)
        if unknown:
            known = ", ".join(sorted(self.option_names)) or "(none)"
            raise ParameterError(
                f"unknown option(s) {sorted(unknown)} for protocol {self.name!r}; known: {known}"
            )
        self.options = dict(options)
        self.keyring: Keyring | None = None

    def setup(self, *, job_id: str, key_dir: Path | None = None) -> None:
        """Create or load job-wide key material; loads ``key_dir/identity`` when present."""
        self.load_identities(key_dir)

    def load_identities(self, key_dir: Path | None) -> None:
        """Adopt the roster and identity keys in ``key_dir/identity`` if that directory exists."""
        if key_dir is not None and self.keyring is None:
            found = identity.load(Path(key_dir) / identity.SUBDIR)
            if found is not None:
                self.use_identities(found)

    def use_identities(self, keyring: Keyring | None) -> None:
        """Sign and check every message against ``keyring`` (None: UNAUTHENTICATED mode)."""
        self.keyring = keyring

    @property
    def authenticated(self) -> bool:
        """Whether messages are signed and checked against a roster."""
        return self.keyring is not None

    @abstractmethod
    def client_session(
        self, spec: RoundSpec, client_id: int, vector: NDArray[Any], weight: float
    ) -> ClientSession:
        """Client side of a round for ``client_id``'s update."""

    @abstractmethod
    def server_session(self, spec: RoundSpec) -> ServerSession:
        """Server side of a round; it holds no client secret."""

    @abstractmethod
    def max_dropouts(self, cohort_size: int) -> int:
        """How many cohort members may drop (at any stage) with the round still exact."""

    @abstractmethod
    def threat_model(self) -> ThreatModel:
        """Who holds which key, what the server sees, which collusion breaks it."""
