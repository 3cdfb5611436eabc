"""``secagg`` and ``secagg+``: pairwise-mask secure aggregation with dropout recovery.

SecAgg (Bonawitz et al., CCS 2017) over the complete graph and SecAgg+ (Bell et al., CCS
2020) over a random ``k``-regular graph with ``k = O(log n)``. The neighbour count ``k`` and
threshold ``t`` follow from the cohort size ``n``, the tolerated dropout rate ``delta``
(``max_dropout_fraction``) and corrupt fraction ``gamma`` (``max_corrupt_fraction``):
secagg uses ``k = n - 1`` and ``t = n - floor(delta * n)``; secagg+ uses the smallest even
``k`` whose largest ``t`` still survives a ``delta`` dropout rate (failure ``<= 2**-20``) while
``gamma`` corrupt clients reach ``t`` shares of no one (``<= 2**-40``) and honest survivors
stay connected, falling back to the complete graph when no ``k < n - 1`` qualifies (at
``n = 1000``: ``k = 114, t = 80`` for ``delta = gamma = 0.1``; the defaults ``0.3`` and ``0.2``
keep the graph complete up to a few thousand clients, so set them to the rates expected). Details in
:mod:`crypto.secagg.graph`; the encoding is in :mod:`crypto.secagg.encoding`.

Stages (each a server message and a client reply, framed and authenticated by
:mod:`crypto.core.channel` over job, round, cohort, the attempt's nonce, stage, sender and
recipient; signatures are checked against the job's roster, :mod:`crypto.core.identity`):

0. *advertise keys*: the server publishes 32 bytes of graph randomness and ``(k, t, m)``;
   each client checks them against its own derivation and answers with two fresh X25519
   public keys, ``c`` (share encryption) and ``s`` (masks).
1. *share keys*: the server relays to each client its live neighbours' own signed key
   advertisements; the client checks each signature against the roster (a server cannot
   substitute keys). It draws a self-mask seed ``b`` (256 bits, :mod:`secrets`),
   Shamir-shares ``b`` and its ``s`` private key ``t``-of-``k+1`` among its neighbours and
   itself, encrypts each neighbour's shares with AES-GCM under HKDF(X25519(c)), keyed per
   direction and bound (associated data) to protocol, attempt, sender and recipient, and
   commits to ``b`` by hash.
2. *masked input*: the server routes the sealed shares and tells each client whether it
   contributes (a client left with fewer than ``t`` live holders only holds shares and
   answers with nothing). A contributor sends, modulo ``2**m``,
   ``round(w * clip(x) * scale) + PRG(b) + sum_v ±PRG(s_uv)`` (``+`` towards larger ids)
   over its neighbours ``v`` that shared keys, where ``s_uv`` is HKDF of X25519(s) and PRG
   is AES-256-CTR; plus its weight ``round(w * 2**32)`` masked modulo 2**64.
3. *consistency check* (Bonawitz et al. 2017, Bell et al. 2020): the server sends the set
   ``U`` of clients whose masked input arrived to every client still holding shares; each
   signs ``(attempt, U)``, once (refusing a ``U`` that lists it wrongly as dropped or, for a
   client that only holds shares, as a survivor),
   and endorses the same statement to each neighbour with an HMAC tag under HKDF of their
   X25519(c) secret (direction inside the MAC), which only the two can make.
4. *unmasking*: the server returns ``U`` with the signatures it collected and the tags
   addressed to that client. A client refuses unless ``U`` is the set it signed and, for
   every peer whose shares it holds, ``t`` of that peer's own share holders endorsed ``U``
   (a neighbour's valid tag counts as its signature, otherwise the signature must verify
   against the roster: the complete graph needs no Ed25519 verification); it then reveals
   the ``b`` share of each peer in ``U`` and the ``s`` share of each other peer, so it never
   reveals both for one peer. The
   server reconstructs ``b`` for survivors (checked against the commitment) and ``s`` for
   dropped clients (checked against the public key), removes their masks, decodes the sum.

Threat model (clients may drop at any stage; "holders" of a client: its neighbours and itself):

* *who holds what*: every client holds its own update, its Ed25519 identity key (job-long),
  its ephemeral X25519 keys and self-mask seed for this round, and Shamir shares of its
  neighbours' seeds and mask keys. The server holds the roster, public keys, sealed shares it
  cannot open, commitments, the sum of the masked inputs and, while unmasking, the
  reconstructed seeds of survivors and mask keys of dropped clients (local values, never
  stored).
* *semi-honest server*: sees masked vectors that are uniformly random on their own, the
  weighted sum of the surviving clients' clipped updates and their total weight, who dropped
  when, and the neighbour graph; message sizes reveal only the parameters and who is live.
* *malicious server given the roster* (deviates arbitrarily, cannot forge clients'
  signatures): it cannot substitute a client's keys (relayed advertisements are signed), read
  or alter sealed shares, or obtain both shares of one client: the threshold rule demands
  ``2t - c > k + 1`` for ``c`` corrupt holders (deterministic for the complete graph,
  except with probability ``2**-40`` for secagg+), so two survivor sets cannot each gather
  ``t`` signatures of one client's holders, and the split attack (some holders told "v
  survived", others "v dropped") fails (``tests/crypto/test_split_attack.py``). It can still
  drop, delay or exclude clients (they count as dropouts), and for secagg+ it chooses the
  graph randomness, so it could grind it to place colluders around a victim (bounded only by
  the corrupt fraction per neighbourhood, not prevented).
* *network attacker*: every message is authenticated by its sender (signature, or a GMAC
  under a pair key agreed by signed keys) over job, round, cohort, the server's per-attempt
  nonce, stage, sender and recipient, so an altered, injected,
  re-addressed, re-stamped or replayed message (also from an earlier attempt of the same
  round) is refused with an error naming sender and stage and counts as that party's
  dropout; never a wrong sum (``tests/crypto/adversary.py``). Messages are not encrypted
  beyond the sealed shares: the attacker sees what the server sees.
* *what breaks it*: the server colluding with ``t`` or more of one client's share holders
  learns both of that client's secrets and hence its update; fewer learn nothing beyond the
  sum. Corrupt clients below ``max_corrupt_fraction`` stay below ``t`` and below the split
  bound (deterministically for secagg, with probability ``1 - 2**-40`` for secagg+). Without
  a roster (UNAUTHENTICATED mode, logged, for cost comparisons only) only the semi-honest
  server model holds. A malicious client can bias the sum within its clipped range.
* *dropouts*: any ``k + 1 - t`` dropouts at any stage (``max_dropouts``; ``n - t`` for
  secagg) are recovered exactly; secagg+ also survives a ``max_dropout_fraction`` of random
  dropouts with probability ``1 - 2**-20``. Otherwise the round fails with ``DropoutError``,
  never a wrong sum. A client dropping during key setup only removes itself: a neighbour
  left with fewer than ``t`` live holders (at key setup or key sharing) contributes no input
  but stays in the round holding its neighbours' shares (it answers the masked-input stage
  with nothing, signs the survivor set and reveals like any holder), so excluding it takes
  no holder from anyone and exclusions do not cascade round the ring
  (``test_two_adjacent_dropouts_at_key_setup_exclude_only_their_weak_neighbours``). The
  graph stays the one over the whole cohort: building it over the clients whose keys
  arrived would let a malicious server choose each client's neighbours by what it reports
  as arrived. Malicious-server safety costs sparsity: at
  30% dropouts and 20% corrupt clients the graph stays complete up to about 1,000 clients
  (``k = 114, t = 80`` at ``n = 1000`` with 10% and 10%).

Options: ``clip`` (1.0; coordinates are clipped to ``[-clip, clip]`` before encoding, the
runner sets it from the DP clipping norm), ``scale_bits`` (16; one fixed-point unit is
``quantum = 2**-scale_bits``), ``max_weight`` (1.0; a client's weight above it is refused
since the modulus is sized for ``n * max_weight * clip * 2**scale_bits``),
``max_dropout_fraction`` (0.3), ``max_corrupt_fraction`` (0.2), both below 1/2,
``threshold`` (override, capped at the number of share holders, checked for security), and
for secagg+ ``neighbours`` (override, even). The error bound is ``n * 0.5 * quantum`` per
coordinate (plus float64 rounding). ``out_of_range`` (:mod:`crypto.core.valuerange`):
``"refuse"`` (default) refuses an update with a coordinate outside ``[-clip, clip]``,
``"clip"`` clips it on purpose; the check applies to the vector as handed in, DP noise
included, so leave ``clip`` room for the noise (the runner does).
Masked vectors travel at ``m / 8`` bytes per parameter: 3 bytes with the defaults up to 127
clients, 4 bytes beyond.
"""

from __future__ import annotations

from typing import Any, ClassVar

from numpy.typing import NDArray

from ..core.protocol import (
    ClientSession,
    Protocol,
    RoundSpec,
    ServerSession,
    ThreatModel,
    adversaries,
)
from ..core.registry import register
from ..errors import ParameterError
from .client import SecAggClient
from .encoding import RoundParams, SecAggOptions, graph_params, round_params
from .graph import GraphParams
from .server import SecAggServer

_COMMON = frozenset(
    {
        "clip",
        "scale_bits",
        "max_weight",
        "max_dropout_fraction",
        "max_corrupt_fraction",
        "threshold",
        "out_of_range",
    }
)


class PairwiseMaskingProtocol(Protocol):
    """Shared implementation of secagg and secagg+; subclasses pick the graph.

    ``quantum`` (one fixed-point unit) lets the runner add integer DP noise.
    """

    learned_by = "server"
    sparse: ClassVar[bool]

    def __init__(self, **options: Any):
        super().__init__(**options)
        try:
            self.config = SecAggOptions(**options)
        except TypeError as err:  # pragma: no cover - option names are checked above
            raise ParameterError(str(err)) from None

    @property
    def quantum(self) -> float:
        """Value of one fixed-point unit (``1 / scale``), for integer DP noise."""
        return 1.0 / self.config.scale

    def graph_params(self, cohort_size: int) -> GraphParams:
        """Neighbour count and threshold for a cohort of ``cohort_size``."""
        return graph_params(self.config, sparse=self.sparse, cohort_size=cohort_size)

    def round_params(self, spec: RoundSpec) -> RoundParams:
        """Graph, threshold and modulus of a round (raises ``EncodingError`` on overflow)."""
        return round_params(
            self.config, sparse=self.sparse, cohort_size=len(spec.cohort), dim=spec.dim
        )

    def client_session(
        self, spec: RoundSpec, client_id: int, vector: NDArray[Any], weight: float
    ) -> ClientSession:
        return SecAggClient(
            spec, client_id, vector, weight, tag=self.name, params=self.round_params(spec),
            keyring=self.keyring, out_of_range=self.config.out_of_range,
        )  # fmt: skip

    def server_session(self, spec: RoundSpec) -> ServerSession:
        return SecAggServer(
            spec, tag=self.name, params=self.round_params(spec), keyring=self.keyring
        )

    def max_dropouts(self, cohort_size: int) -> int:
        return self.graph_params(cohort_size).max_dropouts

    def threat_model(self) -> ThreatModel:
        c = self.config
        holders = "its k neighbours and itself" if self.sparse else "every cohort member"
        return ThreatModel(
            protocol=self.name,
            key_holders=(
                "each client: its ephemeral X25519 keys and self-mask seed, plus Shamir shares "
                f"of those of {holders}; the server: public keys and sealed shares only"
            ),
            server_sees=(
                "uniformly masked vectors, the weighted sum of the survivors' clipped updates, "
                "their total weight, and who dropped at which stage"
            ),
            dropouts=(
                "any n - t (secagg) or k + 1 - t (secagg+) at any stage, recovered exactly; "
                f"tuned for a dropout rate of {c.max_dropout_fraction}; beyond that "
                "DropoutError, never a wrong sum"
            ),
            breaks_if=(
                "the server colludes with t or more of a client's share holders"
                + (
                    "; a malicious server may grind the graph randomness to surround a victim "
                    "with colluders (bounded by the corrupt fraction, not prevented)"
                    if self.sparse
                    else ""
                )
                + (
                    ""
                    if self.authenticated
                    else "; UNAUTHENTICATED (no roster): also any "
                    "malicious server or network attacker"
                )
            ),
            adversaries=adversaries(
                authenticated=self.authenticated,
                semi_honest="learns the weighted sum of the survivors' clipped updates, their "
                "total weight and who dropped when; each masked vector alone is uniformly random",
                malicious="it cannot substitute public keys (relayed advertisements are signed), "
                "read or alter sealed shares, or obtain both shares of one client: honest "
                "clients endorse one survivor set (a signature, and HMAC tags to neighbours) "
                "and reveal only with t endorsements of the peer's holders, and 2t - corrupt "
                "holders > k + 1, so the split attack fails; it can "
                "drop or exclude clients (dropouts)"
                + (", and it chooses the graph randomness" if self.sparse else ""),
            ),
            notes=(
                f"tolerated corrupt fraction {c.max_corrupt_fraction}",
                f"fixed point: quantum {self.quantum:g}, clip {c.clip}, max_weight {c.max_weight}",
            ),
        )


@register
class SecAggProtocol(PairwiseMaskingProtocol):
    """SecAgg: complete graph, ``t = n - floor(max_dropout_fraction * n)``."""

    name = "secagg"
    sparse = False
    option_names = _COMMON


@register
class SecAggPlusProtocol(PairwiseMaskingProtocol):
    """SecAgg+: random ``k``-regular graph, ``k = O(log n)``."""

    name = "secagg+"
    sparse = True
    option_names = _COMMON | {"neighbours"}
