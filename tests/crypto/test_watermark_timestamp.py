"""RFC 3161 tokens over commitment records: accepted from the trusted TSA, refused otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crypto import watermark as wm
from crypto.watermark.timestamp import TimestampError, load_certificate, verify_token

from .tsa import OpensslTSA

ARCH = wm.Architecture.of("lora", {"enc.q": (32, 48), "enc.v": (32, 48)})


@pytest.fixture(scope="module")
def tsas(tmp_path_factory: pytest.TempPathFactory) -> tuple[OpensslTSA, OpensslTSA]:
    root = tmp_path_factory.mktemp("tsa")
    return OpensslTSA(root / "trusted", "trusted tsa"), OpensslTSA(root / "other", "forger tsa")


@pytest.fixture(scope="module")
def record() -> dict:
    return wm.make_record(wm.generate_key(), job_id="job/0/abc", arch=ARCH)


def test_token_from_the_trusted_tsa_dates_the_record(tsas, record, tmp_path):
    trusted, _ = tsas
    for token_only in (False, True):
        token = trusted.stamp(
            wm.canonical_start(record), tmp_path / f"t{token_only}.tsr", token_only=token_only
        )
        when = verify_token(
            token.read_bytes(),
            data=wm.canonical_start(record),
            tsa_cert=load_certificate(trusted.cert.read_bytes()),
        )
        assert abs(datetime.now(UTC) - when) < timedelta(minutes=5)


def test_token_over_another_record_is_refused(tsas, record, tmp_path):
    trusted, _ = tsas
    token = trusted.stamp(wm.canonical_start(record), tmp_path / "t.tsr").read_bytes()
    backdated = {**record, "created": "2020-01-01T00:00:00Z"}
    with pytest.raises(TimestampError, match="message imprint"):
        verify_token(
            token,
            data=wm.canonical_start(backdated),
            tsa_cert=load_certificate(trusted.cert.read_bytes()),
        )


def test_token_from_a_self_made_tsa_is_refused(tsas, record, tmp_path):
    trusted, forger = tsas
    token = forger.stamp(wm.canonical_start(record), tmp_path / "f.tsr").read_bytes()
    with pytest.raises(TimestampError, match="another TSA"):
        verify_token(
            token,
            data=wm.canonical_start(record),
            tsa_cert=load_certificate(trusted.cert.read_bytes()),
        )


def test_tampered_token_is_refused(tsas, record, tmp_path):
    trusted, _ = tsas
    token = bytearray(trusted.stamp(wm.canonical_start(record), tmp_path / "t.tsr").read_bytes())
    cert = load_certificate(trusted.cert.read_bytes())
    # The TSTInfo's genTime digits sit inside the signed content: change one.
    at = bytes(token).find(datetime.now(UTC).strftime("%Y%m%d").encode())
    assert at > 0
    token[at + 7] = ord("0") + (token[at + 7] - ord("0") + 1) % 10
    with pytest.raises(TimestampError, match="message-digest"):
        verify_token(bytes(token), data=wm.canonical_start(record), tsa_cert=cert)
    signed = bytearray(trusted.stamp(wm.canonical_start(record), tmp_path / "u.tsr").read_bytes())
    signed[-1] ^= 0x01  # the last byte of the SignerInfo's signature
    with pytest.raises(TimestampError, match="signature does not verify"):
        verify_token(bytes(signed), data=wm.canonical_start(record), tsa_cert=cert)
    with pytest.raises(TimestampError, match="not an RFC 3161"):
        verify_token(b"\x30\x03\x02\x01\x00", data=b"", tsa_cert=cert)
