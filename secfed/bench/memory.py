"""Peak resident memory of one client and of the server, each in its own process.

Method (``peak_rss_bytes``): one extra round per point, without dropouts, in which client 0 and
the server each run in a fresh ``spawn`` process; the other clients run in the bench process and
messages travel over pipes (raw bytes in 1 MiB pieces read into one buffer, so nothing is
pickled or held twice on the way). Each party process records its resident set size after
importing and setting up the protocol and running an 8-parameter round of it in-process
(``baseline``: interpreter, libraries, keys, first-use tables such as Paillier's) and its
high-water mark at the end (``VmHWM`` of ``/proc/self/status``, which, unlike ``ru_maxrss``,
restarts at ``exec`` and so does not inherit the bench process's size), and the largest
``VmHWM`` of its live worker processes (a Paillier pool). The client receives its update as raw
float32 bytes, which it holds like any client holds its update. Reported per party: the
high-water mark, the part above the baseline, and that part over the float32 size of the update
(``4 * params``); the largest finished worker process (Paillier's pool) is reported on its own,
not added.

The server's process hands each reply to its session as it arrives
(:meth:`crypto.ServerSession.receive`, then :meth:`~crypto.ServerSession.close_stage`): plain,
secagg and secagg+ add it to a running sum at once, so their figure does not grow with the cohort;
the other protocols keep a stage's replies until it closes.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import pickle
import struct
import sys
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

import crypto

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_CHUNK = 1 << 20
_ERROR = b"\x00secfed-probe-error\x00"
_PROBE_ROUND = 1_000_000


def _status_kb(field: str, pid: int | str = "self") -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` in bytes (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def _send_big(conn: Connection, body: bytes) -> None:
    """``body`` as its size and 1 MiB pieces (see :func:`_recv_big`)."""
    view = memoryview(body)
    conn.send_bytes(_U64.pack(len(view)))
    for at in range(0, len(view), _CHUNK):
        conn.send_bytes(view[at : at + _CHUNK])


def _recv_big(conn: Connection, recv: Callable[[], bytes]) -> bytearray:
    """A body sent by :func:`_send_big`, read into one buffer of its size.

    ``Connection.recv_bytes`` would grow a ``BytesIO`` for a large message (a transient second
    copy); the pieces land in place, so a party holds one copy of what it receives.
    """
    (size,) = _U64.unpack(recv())
    out = bytearray(size)
    view = memoryview(out)
    at = 0
    while at < size:
        at += conn.recv_bytes_into(view, at)
    return out


def _send_map(conn: Connection, messages: Mapping[int, bytes]) -> None:
    conn.send_bytes(_U32.pack(len(messages)))
    for cid, body in messages.items():
        conn.send_bytes(_U32.pack(cid))
        _send_big(conn, body)


def _warm_up(proto: crypto.Protocol, spec: crypto.RoundSpec, weight: float) -> None:
    """A whole 8-parameter round in this process: first-use imports, tables and caches."""
    tiny = crypto.RoundSpec(spec.job_id, spec.round - 1, spec.cohort, 8)
    zeros = np.zeros(8, dtype=np.float32)
    clients = {c: proto.client_session(tiny, c, zeros, weight) for c in tiny.cohort}
    crypto.run_round(proto.server_session(tiny), clients)


def _party(conn: Connection, role: str, setup: dict[str, Any]) -> None:
    """Child process: one party of one round, driven over ``conn``."""
    try:
        proto = crypto.create_protocol(setup["name"], **setup["options"])
        proto.setup(job_id=setup["job_id"], key_dir=setup["key_dir"])
        spec = crypto.RoundSpec(setup["job_id"], _PROBE_ROUND, setup["cohort"], setup["dim"])
        _warm_up(proto, spec, setup["weight"])
        gc.collect()
        baseline = _status_kb("VmRSS")
        conn.send_bytes(b"ready")
        if role == "client":
            vector = np.frombuffer(_recv_big(conn, conn.recv_bytes), dtype=np.float32)
            client = proto.client_session(spec, setup["client"], vector, setup["weight"])
            while msg := _recv_big(conn, conn.recv_bytes):
                conn.send_bytes(client.handle(bytes(msg)) or b"")
            client.aggregate()
        else:
            server = proto.server_session(spec)
            _send_map(conn, server.start())
            while conn.recv_bytes() == b"advance":
                (count,) = _U32.unpack(conn.recv_bytes())
                for _ in range(count):  # each reply handed over as it arrives, then let go
                    (cid,) = _U32.unpack(conn.recv_bytes())
                    server.receive(cid, _recv_big(conn, conn.recv_bytes))  # type: ignore[arg-type]
                step = server.close_stage()
                conn.send_bytes(b"final" if step.final else b"more")
                _send_map(conn, step.messages)
        peak = _status_kb("VmHWM")
        workers = max(
            (_status_kb("VmHWM", c.pid) for c in mp.active_children() if c.pid), default=0
        )
        pools = sys.modules.get("crypto.paillier.math")
        if pools is not None:
            pools.shutdown_pools()
        conn.send_bytes(pickle.dumps({"peak": peak, "baseline": baseline, "workers": workers}))
    except Exception as err:  # reported to the parent, which raises it
        conn.send_bytes(_ERROR + f"{type(err).__name__}: {err}".encode())
    finally:
        conn.close()


class _Remote:
    def __init__(self, role: str, setup: dict[str, Any]):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # Not a daemon: a party may start its own worker pool (Paillier).
        self.proc = ctx.Process(target=_party, args=(child, role, setup))
        self.proc.start()
        child.close()
        self.recv()

    def recv(self) -> bytes:
        data = self.conn.recv_bytes()
        if data.startswith(_ERROR):
            self.close()
            raise crypto.ProtocolError(f"memory probe party failed: {data[len(_ERROR) :]!r}")
        return data

    def finish(self) -> dict[str, Any]:
        data = self.recv()
        report: dict[str, Any] = pickle.loads(data)
        self.close()
        return report

    def close(self) -> None:
        self.conn.close()
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()


def _recv_map(conn: Connection, recv: Callable[[], bytes]) -> dict[int, bytes]:
    (count,) = _U32.unpack(recv())
    out = {}
    for _ in range(count):
        (cid,) = _U32.unpack(recv())
        out[cid] = bytes(_recv_big(conn, recv))
    return out


def party_peaks(
    protocol: crypto.Protocol,
    *,
    name: str,
    options: Mapping[str, Any],
    key_dir: Path | None,
    job_id: str,
    vectors: Mapping[int, Any],
    weights: Mapping[int, float],
) -> dict[str, dict[str, float]]:
    """One round with client 0 and the server in their own processes; their RSS peaks."""
    cohort = tuple(sorted(vectors))
    dim = int(np.asarray(vectors[cohort[0]]).shape[0])
    setup = {
        "name": name,
        "options": dict(options),
        "key_dir": key_dir,
        "job_id": job_id,
        "cohort": cohort,
        "dim": dim,
        "client": cohort[0],
        "weight": weights[cohort[0]],
    }
    remote_client = _Remote("client", setup)
    try:
        remote_server = _Remote("server", setup)
    except BaseException:
        remote_client.close()
        raise
    try:
        return _drive(protocol, setup, remote_client, remote_server, vectors, weights)
    finally:
        remote_client.close()
        remote_server.close()


def _drive(
    protocol: crypto.Protocol,
    setup: dict[str, Any],
    remote_client: _Remote,
    remote_server: _Remote,
    vectors: Mapping[int, Any],
    weights: Mapping[int, float],
) -> dict[str, dict[str, float]]:
    job_id, cohort, dim = setup["job_id"], setup["cohort"], setup["dim"]
    spec = crypto.RoundSpec(job_id, _PROBE_ROUND, cohort, dim)
    local = {c: protocol.client_session(spec, c, vectors[c], weights[c]) for c in cohort[1:]}
    probe = cohort[0]
    _send_big(remote_client.conn, np.ascontiguousarray(vectors[probe], np.float32).tobytes())
    messages = _recv_map(remote_server.conn, remote_server.recv)
    final = False
    while True:
        replies: dict[int, bytes] = {}
        for cid, body in sorted(messages.items()):
            if cid == probe:
                _send_big(remote_client.conn, body)
                reply: bytes | None = remote_client.recv() or None
            elif final:
                continue  # only the probed client decodes the final message
            else:
                reply = local[cid].handle(body)
            if reply is not None and not final:
                replies[cid] = reply
        if final:
            break
        remote_server.conn.send_bytes(b"advance")
        _send_map(remote_server.conn, replies)
        final = remote_server.recv() == b"final"
        messages = _recv_map(remote_server.conn, remote_server.recv)
        if final and not messages:
            break
    _send_big(remote_client.conn, b"")
    remote_server.conn.send_bytes(b"stop")
    update = 4.0 * dim
    out: dict[str, dict[str, float]] = {}
    for role, remote in (("client", remote_client), ("server", remote_server)):
        rep = remote.finish()
        above = rep["peak"] - rep["baseline"]
        out[role] = {
            "peak_rss_bytes": float(rep["peak"]),
            "baseline_rss_bytes": float(rep["baseline"]),
            "worker_peak_rss_bytes": float(rep["workers"]),
            "above_baseline_bytes": float(above),
            "over_update": above / update,
        }
    return out
