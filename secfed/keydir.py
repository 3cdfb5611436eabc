"""Key directories: which protocols keep keys in files, and the checks before using a user's.

A job without ``aggregation.key_dir`` makes its keys inside its run directory. A job with one
only ever reads it: missing keys, or keys of another scheme, are refused with the command that
makes the right ones, so a user's key directory is never written behind their back.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)


def key_schemes() -> list[str]:
    """Registered protocols whose keys live in files: those whose clients hold the secret
    key (``learned_by == "clients"``); each keeps them in ``<key_dir>/<protocol name>/``."""
    import crypto

    return [n for n in crypto.protocol_names() if crypto.get_protocol(n).learned_by == "clients"]


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def schemes_in(key_dir: Path) -> list[str]:
    """The schemes whose key files ``key_dir`` holds."""
    return [name for name in key_schemes() if _holds_files(key_dir / name)]


def check_job_key_dir(protocol: str, key_dir: Path) -> None:
    """Refuse a user-given ``aggregation.key_dir`` that lacks ``protocol``'s keys."""
    if protocol not in key_schemes():
        log.warning("aggregation.key_dir is unused: protocol %r has no key files", protocol)
        return
    make = f"`secfed keys generate --scheme {protocol} --out {key_dir}`"
    keep = "or remove aggregation.key_dir to keep the job's own keys in its run directory"
    if not key_dir.is_dir():
        raise ConfigError(
            f"aggregation.key_dir {str(key_dir)!r} does not exist: make the keys with {make}, "
            f"{keep}"
        )
    if _holds_files(key_dir / protocol):
        return
    found = schemes_in(key_dir)
    held = f"holds {' and '.join(found)} keys, not {protocol} keys" if found else "holds no keys"
    raise ConfigError(
        f"aggregation.key_dir {str(key_dir)!r} {held} (protocol {protocol!r}): make them "
        f"with {make}, {keep}"
    )


def prepare_generate(scheme: str, out: Path, *, force: bool) -> None:
    """Check ``secfed keys generate`` may write ``scheme`` keys into ``out``.

    Existing keys of that scheme are kept unless ``force`` (then they are deleted first).
    """
    schemes = key_schemes()
    if scheme not in schemes:
        raise ConfigError(
            f"--scheme {scheme!r} has no key files: choose one of {', '.join(schemes)} "
            "(the other protocols need none)"
        )
    target = out / scheme
    if _holds_files(target):
        if not force:
            raise ConfigError(
                f"{target} already holds {scheme} keys: keep them, choose another --out, or "
                "pass --force to replace them (runs that used the old keys cannot resume)"
            )
        shutil.rmtree(target)
