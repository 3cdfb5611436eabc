"""Checking an RFC 3161 timestamp token over a commitment record, against a trusted TSA.

Accepted input: a DER ``TimeStampResp`` (``openssl ts -reply`` output, ``.tsr``) or a bare
``TimeStampToken`` (CMS ``ContentInfo``). Checked: the response status is granted; the
token is CMS SignedData over a ``TSTInfo``; its message imprint is the hash of the data
(SHA-256/384/512); the single signer is the trusted certificate (issuer and serial, or
subject key identifier); the signed attributes carry the content type and the digest of
the encapsulated ``TSTInfo``; the signature over them verifies with the certificate's
key (RSA PKCS#1 v1.5 or ECDSA); the certificate has the timeStamping extended key usage
and was valid at ``genTime``. Not checked: a chain from the TSA certificate to a root,
or revocation. The verifier names the one TSA certificate it trusts.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from asn1crypto import cms, tsp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from .errors import WatermarkError

_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class TimestampError(WatermarkError, ValueError):
    """A timestamp token is malformed, not over the data, or not from the trusted TSA."""


def load_certificate(data: bytes) -> x509.Certificate:
    """A PEM or DER X.509 certificate."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as err:
        raise TimestampError(f"cannot read the TSA certificate: {err}") from err


def _token(data: bytes) -> cms.ContentInfo:
    try:
        resp = tsp.TimeStampResp.load(data)
        status = resp["status"]["status"].native
        if status not in ("granted", "granted_with_mods"):
            raise TimestampError(f"timestamp response status is {status!r}, not granted")
        token = resp["time_stamp_token"]
        token.native  # noqa: B018 - force a full parse
        return token
    except TimestampError:
        raise
    except Exception:  # not a response: try a bare token
        pass
    try:
        token = cms.ContentInfo.load(data)
        token.native  # noqa: B018
        return token
    except Exception as err:
        raise TimestampError(f"not an RFC 3161 response or token: {err}") from err


def _hash(name: str, data: bytes) -> bytes:
    if name not in _HASHES:
        raise TimestampError(f"hash {name!r} not accepted; use one of {sorted(_HASHES)}")
    return hashlib.new(name, data).digest()


def verify_token(token_der: bytes, *, data: bytes, tsa_cert: x509.Certificate) -> datetime:
    """The token's ``genTime`` (UTC) if it timestamps ``data`` and is signed by ``tsa_cert``."""
    token = _token(token_der)
    if token["content_type"].native != "signed_data":
        raise TimestampError("timestamp token is not CMS SignedData")
    signed = token["content"]
    encap = signed["encap_content_info"]
    if encap["content_type"].native != "tst_info":
        raise TimestampError("timestamp token does not carry a TSTInfo")
    tst_der = encap["content"].contents  # the eContent octets (DER TSTInfo)
    tst = tsp.TSTInfo.load(tst_der)
    imprint = tst["message_imprint"]
    if imprint["hashed_message"].native != _hash(
        imprint["hash_algorithm"]["algorithm"].native, data
    ):
        raise TimestampError("timestamp token is over other data (message imprint differs)")
    signers = list(signed["signer_infos"])
    if len(signers) != 1:
        raise TimestampError(f"timestamp token has {len(signers)} signers; expected one")
    signer = signers[0]
    _check_signer_id(signer, tsa_cert)
    attrs = signer["signed_attrs"]
    if not attrs:
        raise TimestampError("timestamp token has no signed attributes")
    found = {a["type"].native: a["values"][0].native for a in attrs}
    if found.get("content_type") != "tst_info":
        raise TimestampError("signed content-type attribute is not TSTInfo")
    digest_alg = signer["digest_algorithm"]["algorithm"].native
    if found.get("message_digest") != _hash(digest_alg, tst_der):
        raise TimestampError("signed message-digest attribute does not match the TSTInfo")
    signed_bytes = b"\x31" + attrs.dump()[1:]  # [0] IMPLICIT -> SET OF, as signed
    _check_signature(tsa_cert, signer["signature"].native, signed_bytes, digest_alg)
    gen_time: datetime = tst["gen_time"].native.astimezone(UTC)
    _check_cert(tsa_cert, gen_time)
    return gen_time


def _check_signer_id(signer: cms.SignerInfo, cert: x509.Certificate) -> None:
    sid = signer["sid"]
    if sid.name == "issuer_and_serial_number":
        serial = sid.chosen["serial_number"].native
        issuer = sid.chosen["issuer"].dump()
        if serial != cert.serial_number or issuer != cert.issuer.public_bytes():
            raise TimestampError("timestamp token was signed by another TSA certificate")
    else:
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound as err:
            raise TimestampError("TSA certificate has no subject key identifier") from err
        if sid.chosen.native != ski:
            raise TimestampError("timestamp token was signed by another TSA certificate")


def _check_signature(cert: x509.Certificate, sig: bytes, data: bytes, digest_alg: str) -> None:
    if digest_alg not in _HASHES:
        raise TimestampError(f"signer digest {digest_alg!r} not accepted")
    algo = _HASHES[digest_alg]()
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, data, padding.PKCS1v15(), algo)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(algo))
        else:
            raise TimestampError(f"TSA key type {type(key).__name__} not supported (RSA, EC)")
    except InvalidSignature as err:
        raise TimestampError(
            "timestamp token signature does not verify with the TSA certificate"
        ) from err


def _check_cert(cert: x509.Certificate, when: datetime) -> None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as err:
        raise TimestampError("TSA certificate lacks the timeStamping extended key usage") from err
    if ExtendedKeyUsageOID.TIME_STAMPING not in eku:
        raise TimestampError("TSA certificate is not for timeStamping (extended key usage)")
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise TimestampError(
            f"TSA certificate was not valid at the token's time {when:%Y-%m-%d %H:%M:%S}Z"
        )
