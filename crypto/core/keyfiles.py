"""Key files: written atomically, owner-only (0600), never through a symbolic link."""

from __future__ import annotations

import os
from pathlib import Path


def write_owner_only(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 via a fresh temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
