"""``ckks``: CKKS homomorphic aggregation (TenSEAL) with a blind server.

Threat model. One CKKS secret key per job, shared by every client (``secret.ctx``); the server
holds ``public.ctx``: the encryption parameters and no key at all. Clients encrypt with the
secret key (symmetric CKKS), so no public key exists and the server can neither decrypt nor
encrypt. The server sees ciphertexts, their count (the vector length), the cohort, who
dropped out and timings; with ``weighting="client"`` (default) each client pre-multiplies its
update by its weight and sends the weight encrypted in the last slot, so the server learns no
weight; with ``weighting="server"`` clients send their weight in the clear and the server
multiplies by it (plaintext scalar), learning every weight and the total. The encrypted
aggregate goes back to the surviving clients, who decrypt it (``learned_by = "clients"``).
Dropouts: one collection stage; clients absent from it are excluded, any n - 1 may drop.
It breaks if the server colludes with any one client (the shared key opens every upload), if
another party reads a client's upload in transit (use an authenticated, encrypted channel),
or if the server is malicious in ways the checks below miss. Against a malicious server given
the roster, decoders verify each listed contributor's signed statement (attempt, id, upload
hash) and their own membership, so a list naming clients that did not upload in this attempt
or leaving out the decoder is refused. Which of the listed uploads the server actually summed
is NOT bound (CKKS has no exact check slot): it could return a subset, e.g. one client's
ciphertext, as the aggregate of the whole list, caught only if the range check trips. Every
message is signed and bound to the attempt (:mod:`crypto.core.channel`): a network
attacker's altered or replayed message is refused as its sender's dropout. Exact CKKS
decryptions leak the secret key to whoever also holds the ciphertext (Li and Micciancio,
EUROCRYPT 2021): clients round every decrypted value to a power-of-two grid just above the
noise bound before releasing it, a heuristic mitigation; do not hand raw decryptions to the
server. Client inputs are not proven well-formed: a client can bias the sum (the decryptors
only check it is in range).

Wire (every message framed by :mod:`crypto.core.wire`, tag ``ckks``):

* stage 0, server -> client: parms id of the data level (32 B), scale (f64), weighting (u8);
* stage 0, client -> server: [weight f64, server weighting only] + chunk list;
* stage 1, server -> survivors (final): contributor count u32 + ids u32 each +
  [total weight f64 + sum of squared weights f64, server weighting only] + chunk list.

A chunk list is ``u32 count`` then ``u32 length || SEAL ciphertext`` per chunk; a chunk
packs ``N/2`` values (the slot count), so a vector of any length takes ``ceil(len / (N/2))``
ciphertexts. The receiver wraps each chunk as a one-ciphertext TenSEAL ``CKKSVector`` with
the size and scale it expects itself.

Size. SEAL compresses serializations (zstd) but uniformly random 60-bit residues do not
compress. What shrinks ciphertexts is (1) fewer data primes: aggregation needs depth 0
(client weighting: one data prime) or depth 1 (server weighting: one rescaling prime), against
TenSEAL's usual four-prime chain; and (2) seeded symmetric encryption: TenSEAL's own
symmetric mode expands the random half of the ciphertext, so clients encrypt through SEAL's
``encrypt_symmetric`` serializable form, which stores a 64-byte seed instead of the second
polynomial and halves the upload (the server pays for expanding the seeds: summing is about
2.5x slower than with full ciphertexts). With the ``fast`` preset (N = 8192, primes [60, 60],
scale 2**36) 1M parameters upload at 16.1 bytes each and the aggregate returns at 32.1
(float32: 4; TenSEAL's tutorial parameters [60, 40, 40, 60]: 80.8). The 2**36 scale leaves
21 bits of headroom in the 60-bit prime (|weighted sum| < 2**21, e.g. 209 clients at weight
1e4 and |x| <= 1) and ~1e-8 noise per client; ``precise`` (N = 16384, two data primes, scale
2**50) trades twice the bytes for 2**66 headroom and ~1e-12 noise. Bounds: :mod:`.params`.

Range: a coordinate outside ``[-clip, clip]`` is refused before encryption
(``out_of_range = "refuse"``, the default) or clipped (``"clip"``), the policy every protocol
with a range shares (:mod:`crypto.core.valuerange`).
"""

from __future__ import annotations

import hashlib
import inspect
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from numpy.typing import NDArray

from ..core import valuerange, wire
from ..core.channel import Channel, UploadRound
from ..core.identity import Keyring
from ..core.protocol import (
    Aggregate,
    ClientSession,
    Protocol,
    RoundSpec,
    ServerSession,
    ServerStep,
    ThreatModel,
    adversaries,
)
from ..core.registry import register
from ..errors import EncodingError, KeyMaterialError, ProtocolError
from . import params as cp
from .keys import TS_ERRORS, CkksKeys, chain, load_or_create_keys

_NAME = "ckks"
_HELLO = struct.Struct("!4QdB")
_U32 = struct.Struct("!I")
_F64 = struct.Struct("!d")
_STATEMENT = struct.Struct("!I32s64s")
_SIG = 64


def contribution_statement(binding: bytes, client: int, upload_hash: bytes) -> bytes:
    """What a client signs about its upload: this attempt, its id and the upload's hash."""
    return b"secfed/ckks/v2/contribution" + binding + _U32.pack(client) + upload_hash


# -- sessions --------------------------------------------------------------------------
def _hello(params: cp.CkksParams, keys: CkksKeys) -> bytes:
    first = keys.server.seal_context().data.first_parms_id()
    return _HELLO.pack(*first, keys.scale, params.depth)


def _load(keys: CkksKeys, ctx: ts.Context, ct: cp.Buffer, size: int, who: str) -> ts.CKKSVector:
    try:
        return ts.ckks_vector_from(ctx, cp.wrap_chunk(ct, size=size, scale=keys.scale))
    except TS_ERRORS as err:
        raise ProtocolError(f"{who} sent a malformed CKKS ciphertext: {err}") from None


class CkksClient(ClientSession):
    """Encrypts its (weighted) update once, then decrypts the aggregate it gets back."""

    def __init__(
        self,
        spec: RoundSpec,
        client_id: int,
        vector: NDArray[Any],
        weight: float,
        *,
        params: cp.CkksParams,
        keys: CkksKeys,
        keyring: Keyring | None = None,
        out_of_range: str = valuerange.REFUSE,
    ):
        super().__init__(spec, client_id, vector, weight)
        self._channel = Channel(
            tag=_NAME, session_id=spec.session_id, me=client_id, keyring=keyring,
            stage_names=("encrypted input", "aggregate"),
        )  # fmt: skip
        if keys.client is None:
            raise KeyMaterialError(
                "this party holds only public.ctx: a client needs key_dir/ckks/secret.ctx"
            )
        self.vector, self.clipped_coordinates = valuerange.enforce(
            self.vector, clip=params.clip, policy=out_of_range, who=f"client {client_id}"
        )
        if self.weight > params.max_weight:
            raise EncodingError(
                f"client {client_id}'s weight {self.weight} exceeds max_weight="
                f"{params.max_weight}: normalise the weights or raise 'max_weight'"
            )
        self.params, self.keys = params, keys
        self._stage = 0
        self._result: Aggregate | None = None

    def handle(self, message: bytes) -> bytes | None:
        if self._stage > 1:
            raise ProtocolError(f"client {self.client_id}'s round is over: replayed message")
        body = self._channel.open(message, stage=self._stage, sender=wire.SERVER)
        self._stage += 1
        if self._stage == 2:
            self._result = self._decrypt(body)
            return None
        if body != _hello(self.params, self.keys):
            raise KeyMaterialError("the server runs other CKKS parameters than this client")
        x = self.vector.astype(np.float64)
        if self.params.weighting == "client":
            values, head = np.append(self.weight * x, self.weight), b""
        else:
            values, head = x, _F64.pack(self.weight)
        sizes = cp.chunk_sizes(self.params, length=values.shape[0])
        try:
            chunks = self.keys.encrypt(values, sizes)
        except TS_ERRORS as err:
            raise EncodingError(f"CKKS encoding failed: {err}") from None
        payload = head + cp.pack_chunks(chunks)
        statement = contribution_statement(
            self._channel.binding, self.client_id, hashlib.sha256(payload).digest()
        )
        sig = self._channel.sign(statement).ljust(_SIG, b"\0")
        return self._channel.seal(0, wire.SERVER, payload + sig)

    def _decrypt(self, body: bytes) -> Aggregate:
        p, dim = self.params, self.spec.dim
        try:
            (n,) = _U32.unpack_from(body)
            rows = [_STATEMENT.unpack_from(body, _U32.size + _STATEMENT.size * i) for i in range(n)]
        except struct.error:
            raise ProtocolError("final CKKS message is truncated") from None
        ids = tuple(int(r[0]) for r in rows)
        pos = _U32.size + _STATEMENT.size * n
        if list(ids) != sorted(set(ids)) or not set(ids) <= set(self.spec.cohort):
            raise ProtocolError(f"contributors {ids} are not distinct members of the cohort")
        if self.client_id not in ids:
            raise ProtocolError(f"the aggregate sent to client {self.client_id} excludes it")
        for cid, digest, sig in rows:
            self._channel.check_signature(
                cid, sig, contribution_statement(self._channel.binding, cid, digest),
                what=f"contribution of client {cid} listed in the aggregate",
            )  # fmt: skip
        total = wsq = 0.0
        if p.weighting == "server":
            if len(body) < pos + 2 * _F64.size:
                raise ProtocolError("final CKKS message is truncated")
            total, wsq = _F64.unpack_from(body, pos)[0], _F64.unpack_from(body, pos + 8)[0]
            pos += 2 * _F64.size
        sizes = cp.chunk_sizes(p, length=dim + (p.weighting == "client"))
        chunks = cp.unpack_chunks(body, offset=pos, count=len(sizes), who="server")
        ctx = self.keys.client
        parts = [
            np.asarray(_load(self.keys, ctx, ct, size, "server").decrypt(), dtype=np.float64)
            for ct, size in zip(chunks, sizes, strict=True)
        ]
        decoded = np.concatenate(parts)
        if p.weighting == "client":
            total = float(decoded[dim])
        raw = cp.error_bound(
            p, scale=self.keys.scale, n_clients=n, weight_sum=abs(total), weight_sq_sum=wsq
        )
        peak = float(np.max(np.abs(decoded[:dim])))
        if not (0 < total <= n * p.max_weight + raw and peak <= p.clip * total + raw):
            raise ProtocolError(
                f"decrypted aggregate is out of range (total weight {total:.4g}, peak "
                f"{peak:.4g}): a client used another key set or broke the clip/max_weight limits"
            )
        grid = cp.release_grid(raw)
        return Aggregate(
            weighted_sum=np.round(decoded[:dim] / grid) * grid,
            total_weight=round(total / grid) * grid,
            contributors=tuple(ids),
            learned_by="clients",
            error_bound=cp.released_bound(raw),
        )

    def aggregate(self) -> Aggregate | None:
        return self._result


class CkksServer(ServerSession):
    """Adds the clients' ciphertexts (times their clear weights with server weighting)."""

    def __init__(
        self,
        spec: RoundSpec,
        *,
        params: cp.CkksParams,
        keys: CkksKeys,
        keyring: Keyring | None = None,
    ):
        super().__init__(spec)
        self._round = UploadRound(
            tag=_NAME, session_id=spec.session_id, cohort=spec.cohort, keyring=keyring,
            stage_names=("encrypted input", "aggregate"),
        )  # fmt: skip
        self._channel = self._round.channel
        cp.check_cohort(params, n_clients=len(spec.cohort))
        self.params, self.keys = params, keys
        self._sizes = cp.chunk_sizes(params, length=spec.dim + (params.weighting == "client"))
        self._done = False

    def start(self) -> dict[int, bytes]:
        return self._round.start(_hello(self.params, self.keys))

    def advance(self, replies: Mapping[int, bytes]) -> ServerStep:
        if self._done:
            raise ProtocolError("ckks round already finished")
        uploads = self._round.collect(replies, refused=self.refused, body_bytes=None)
        bodies = {cid: up.body for cid, up in uploads.items()}
        statements = {cid: up.statement_row() for cid, up in uploads.items()}
        p, ctx, server_w = self.params, self.keys.server, self.params.weighting == "server"
        acc: list[ts.CKKSVector] = []
        total = wsq = 0.0
        for cid, body in bodies.items():
            w = _F64.unpack_from(body)[0] if server_w and len(body) >= _F64.size else 1.0
            if not (0 < w <= p.max_weight):
                raise ProtocolError(f"client {cid} sent weight {w}, outside (0, max_weight]")
            who = f"client {cid}"
            chunks = cp.unpack_chunks(
                body, offset=_F64.size * server_w, count=len(self._sizes), who=who
            )
            for j, (ct, size) in enumerate(zip(chunks, self._sizes, strict=True)):
                vec = _load(self.keys, ctx, ct, size, who)
                try:
                    if server_w:
                        vec.mul_(w)
                    acc.append(vec) if len(acc) <= j else acc[j].add_(vec)
                except TS_ERRORS as err:
                    raise ProtocolError(f"{who}'s ciphertext does not fit the sum: {err}") from None
            total, wsq = total + w, wsq + w * w
        ids = sorted(bodies)
        self._check(acc, ids)
        head = _U32.pack(len(ids)) + b"".join(statements[c] for c in ids)
        if server_w:
            head += _F64.pack(total) + _F64.pack(wsq)
        payload = head + cp.pack_chunks([cp.unwrap_chunk(v.serialize()) for v in acc])
        self._done = True
        return ServerStep(messages=self._round.finish(ids, payload), final=True)

    def _check(self, acc: list[ts.CKKSVector], ids: list[int]) -> None:
        """Every sum must be a 2-part ciphertext at the expected level and scale."""
        data = self.keys.server.seal_context().data.first_context_data()
        level = (data.next_context_data() if self.params.depth else data).parms_id()
        for vec in acc:
            ct = vec.ciphertext()[0]
            if ct.size() != 2 or ct.parms_id() != level or ct.scale != self.keys.scale:
                raise ProtocolError(
                    f"one of clients {ids} sent a ciphertext of the wrong level, size or scale"
                )


@register
class CkksProtocol(Protocol):
    """CKKS (TenSEAL) aggregation: clients hold the key, the server adds blindly."""

    name = _NAME
    learned_by = "clients"
    option_names = frozenset(inspect.signature(cp.resolve).parameters) | {valuerange.OPTION}

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.out_of_range = valuerange.policy(options)
        self.params = cp.resolve(**{k: v for k, v in options.items() if k != valuerange.OPTION})
        chain(self.params)  # SEAL accepts the chain, or ParameterError now
        self._keys: CkksKeys | None = None

    def setup(self, *, job_id: str, key_dir: Path | None = None) -> None:
        self.load_identities(key_dir)
        self._keys = load_or_create_keys(self.params, key_dir)

    @property
    def keys(self) -> CkksKeys:
        if self._keys is None:
            raise KeyMaterialError("call setup(job_id=..., key_dir=...) before opening a round")
        return self._keys

    def client_session(
        self, spec: RoundSpec, client_id: int, vector: NDArray[Any], weight: float
    ) -> ClientSession:
        cp.check_cohort(self.params, n_clients=len(spec.cohort))
        return CkksClient(
            spec, client_id, vector, weight, params=self.params, keys=self.keys,
            keyring=self.keyring, out_of_range=self.out_of_range,
        )  # fmt: skip

    def server_session(self, spec: RoundSpec) -> ServerSession:
        return CkksServer(spec, params=self.params, keys=self.keys, keyring=self.keyring)

    def max_dropouts(self, cohort_size: int) -> int:
        return cohort_size - 1

    def threat_model(self) -> ThreatModel:
        clear = self.params.weighting == "server"
        return ThreatModel(
            protocol=_NAME,
            key_holders="every client shares one CKKS secret key; the server holds only the "
            "parameters (public.ctx, no key): it can neither encrypt nor decrypt",
            server_sees="ciphertexts, their count, cohort and dropouts; "
            + ("each weight and the total in the clear" if clear else "no weight (encrypted)"),
            dropouts="any n - 1; clients missing from the one collection stage are excluded",
            breaks_if="the server colludes with any client (the shared key opens every upload),"
            " uploads leak in transit, or raw decryptions reach it",
            adversaries=adversaries(
                authenticated=self.authenticated,
                semi_honest="sees ciphertexts, their count, cohort and dropouts"
                + (", each weight" if clear else "")
                + "; never an update nor the aggregate",
                malicious="decoders verify every listed contributor's signed statement over its "
                "upload hash and refuse an aggregate that excludes them; NOT bound: which listed "
                "uploads were summed (a subset, e.g. one client's ciphertext, passed off as the "
                "list's aggregate is caught only by the range check): a wrong sum is possible",
            ),
            notes=(
                "aggregate learned by the surviving clients, who decrypt it",
                "released values are rounded to a grid above the CKKS noise bound",
                f"parameters: N={self.params.poly_modulus_degree}, primes "
                f"{list(self.params.coeff_mod_bit_sizes)}, scale 2**{self.params.scale_bits}, "
                f"{self.params.security_bits}-bit security",
            ),
        )
