"""Commitment records: a key bound to a job, an architecture and a time before training.

A record is written when the job starts (:func:`make_record`) and completed with the
trained adapter's SHA-256 when it ends (:func:`finish_record`). Its *digest* covers the
start fields only (scheme, key hash, job id, owner label, anchor kind, architecture,
creation time), so a timestamp token over the digest, requested when the job starts,
proves the key existed and was bound to this job at that time. The ``created`` field on
its own is the claimant's word; only an independent timestamp (:mod:`.timestamp`) makes
the time evidence. Dispute rule: of two records claiming one adapter, the one with the
earliest independently timestamped digest wins.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import WatermarkKeyError
from .keys import Architecture, WatermarkKey, check_key_hash, key_hash

START_FIELDS = ("scheme", "key_hash", "job_id", "owner", "anchor_kind", "architecture", "created")


class CommitmentError(WatermarkKeyError):
    """A commitment record does not match the key, the adapter or its own digest."""


def canonical_start(record: dict[str, Any]) -> bytes:
    """The bytes a timestamp token covers: canonical JSON of the start fields."""
    try:
        body = {f: record[f] for f in START_FIELDS}
    except KeyError as err:
        raise CommitmentError(
            f"commitment record lacks field {err}; fields: {START_FIELDS}"
        ) from err
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def record_digest(record: dict[str, Any]) -> str:
    """Hex SHA-256 of :func:`canonical_start` (what to send to a timestamp authority)."""
    return hashlib.sha256(canonical_start(record)).hexdigest()


def make_record(
    key: WatermarkKey, *, job_id: str, arch: Architecture, created: datetime | None = None
) -> dict[str, Any]:
    """The start-of-job record for ``key`` (no secret in it)."""
    when = (created or datetime.now(UTC)).astimezone(UTC)
    record: dict[str, Any] = {
        "scheme": key.scheme,
        "key_hash": key_hash(key),
        "job_id": job_id,
        "owner": key.owner,
        "anchor_kind": arch.kind,
        "architecture": arch.fingerprint,
        "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    record["digest"] = record_digest(record)
    record["adapter_sha256"] = None
    return record


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the saved adapter weights)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def finish_record(record: dict[str, Any], *, adapter_sha256: str) -> dict[str, Any]:
    """The record with the trained adapter's hash added (the digest is unchanged)."""
    return {**record, "adapter_sha256": adapter_sha256}


def check_record(
    record: dict[str, Any],
    key: WatermarkKey,
    *,
    arch: Architecture | None = None,
    adapter_sha256: str | None = None,
) -> list[str]:
    """Raise if the record is not this key's (or not for this architecture); else notes.

    The notes say what holds only partly: the adapter tested differs from the one the job
    produced (expected for an attacked or re-saved copy), or the record has no adapter hash.
    """
    if record.get("digest") != record_digest(record):
        raise CommitmentError("commitment record digest does not match its fields (edited?)")
    if record["scheme"] != key.scheme or not check_key_hash(key, str(record["key_hash"])):
        raise CommitmentError(
            f"commitment record of job {record['job_id']!r} commits to another key "
            f"({str(record['key_hash'])[:16]}...), not this one"
        )
    if arch is not None and (
        record["architecture"] != arch.fingerprint or record["anchor_kind"] != arch.kind
    ):
        raise CommitmentError(
            f"commitment record of job {record['job_id']!r} is for another {record['anchor_kind']} "
            f"architecture ({str(record['architecture'])[:16]}...), not the adapter at hand"
        )
    notes = []
    produced = record.get("adapter_sha256")
    if produced is None:
        notes.append("record has no adapter hash (the job did not finish)")
    elif adapter_sha256 is not None and produced != adapter_sha256:
        notes.append("the adapter tested is not byte-identical to the one this job produced")
    return notes


def save_record(record: dict[str, Any], path: Path) -> None:
    """Write a record as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def load_record(path: Path) -> dict[str, Any]:
    """Read a record written by :func:`save_record`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CommitmentError(f"cannot read commitment record {path}: {err}") from err
    if not isinstance(data, dict):
        raise CommitmentError(f"{path} is not a commitment record (a JSON object)")
    return data
