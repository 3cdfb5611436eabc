"""Process and port helpers of the local launcher (Linux ``/proc`` where needed)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path


def descendants(roots: list[int]) -> list[int]:
    """Pids of every process below ``roots`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def send_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name!r} is not installed: pip install -e '.[flower]' (Flower >= 1.41)"
        )
    return found


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def last_error(log_path: Path) -> str:
    """The most telling line of a process log: the last exception line (``XError: why``),
    else the last line mentioning an error, else the last line."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [ln for ln in lines if ln]
    for pattern in (r"^[\w.]*(Error|Exception): ", r"Error|ERROR"):
        for line in reversed(lines):
            if re.search(pattern, line):
                return line
    return lines[-1] if lines else "(empty log)"
