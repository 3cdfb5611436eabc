"""A throw-away RFC 3161 timestamp authority made with the ``openssl`` command line tool.

OpenSSL's ``ts`` implementation is independent of the verifier under test, so a token it
issues checks the parser, the imprint, the signed attributes and the signature for real.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

_CONF = """
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = {name}
[ tsa_ext ]
extendedKeyUsage = critical,timeStamping
subjectKeyIdentifier = hash
basicConstraints = CA:false
[ tsa ]
default_tsa = tsa_config1
[ tsa_config1 ]
serial = {dir}/serial
signer_cert = {dir}/tsa.crt
signer_key = {dir}/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256
ess_cert_id_alg = sha256
"""


class OpensslTSA:
    """A TSA key and certificate in ``directory``; :meth:`stamp` issues a token."""

    def __init__(self, directory: Path, name: str = "test tsa"):
        if shutil.which("openssl") is None:
            pytest.skip("the openssl command line tool is not installed")
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "serial").write_text("01\n")
        self.conf = directory / "tsa.cnf"
        self.conf.write_text(_CONF.format(name=name, dir=directory))
        self._run(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "tsa.key", "-out", "tsa.crt", "-days", "30", "-config", str(self.conf),
            "-extensions", "tsa_ext",
        )  # fmt: skip
        self.cert = directory / "tsa.crt"

    def _run(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)

    def stamp(self, data: bytes, out: Path, *, token_only: bool = False) -> Path:
        """A timestamp response (or bare token) over ``data`` written to ``out``."""
        src = self.dir / "data.bin"
        src.write_bytes(data)
        query = self.dir / "q.tsq"
        self._run("ts", "-query", "-data", str(src), "-sha256", "-cert", "-out", str(query))
        extra = ["-token_out"] if token_only else []
        self._run(
            "ts", "-reply", "-config", str(self.conf), "-queryfile", str(query),
            "-out", str(out), *extra,
        )  # fmt: skip
        return out
