"""Start a local Flower deployment for one job file and run it to the end.

``python -m secfed.flower.launch JOB.toml --supernodes 3 --out runs/x`` starts, on 127.0.0.1
only and with ``--insecure``: one ``flower-superlink``, one node agent and one
``flower-supernode`` per client (node config ``partition-id``, ``num-partitions``,
``agent-dir``), then submits the app with ``flwr run`` and waits for the job's
``summary.json``. Every process it started is stopped at the end, also on failure.
Nothing is downloaded: the Flower app (a ``pyproject.toml`` naming secfed's ServerApp and
ClientApp) is written into a scratch directory and the installed secfed is used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

APP_TOML = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "secfed-app"
version = "0.1.0"
description = "secfed job on Flower"
license = "GPL-3.0-or-later"
dependencies = []

[tool.flwr.app]
publisher = "secfed"

[tool.flwr.app.components]
serverapp = "secfed.flower.server_app:app"
clientapp = "secfed.flower.client_app:app"

[tool.flwr.app.config]
job = ""
out = ""
key-dir = ""
train-timeout = 600.0
stage-timeout = 120.0
connect-timeout = 120.0
"""


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


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name!r} is not installed: pip install -e '.[flower]' (Flower >= 1.41)"
        )
    return found


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


@dataclass
class LocalDeployment:
    """The processes of one local deployment; :meth:`stop` ends all of them."""

    job: Path
    supernodes: int
    workdir: Path
    key_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    control_address: str = ""

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        logfile = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            cmd, stdout=logfile, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir
        )
        self.procs.append((name, proc))
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(cmd))
        return proc

    def start(self, *, ready_timeout: float = 300.0) -> None:
        """Agents first (they build the model), then the SuperLink and the SuperNodes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        self.job = self.job.resolve()
        # Flower starts helpers (flower-superexec, flwr-serverapp) by name: PATH must hold them.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "FLWR_HOME": str(home), "OMP_NUM_THREADS": "1", "PATH": path}
        port = free_port()  # Flower 1.41 serves Fleet, Control and runtime APIs on one port
        self.control_address = f"127.0.0.1:{port}"
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "secfed-local"\n\n[superlink.secfed-local]\n'
            f'address = "{self.control_address}"\ninsecure = true\n'
        )
        agent_dirs = [self.workdir / f"agent-{i}" for i in range(self.supernodes)]
        for i, adir in enumerate(agent_dirs):
            cmd = [sys.executable, "-m", "secfed.flower.agent", str(self.job),
                   "--client-id", str(i), "--agent-dir", str(adir)]  # fmt: skip
            if self.key_dir is not None:
                cmd += ["--key-dir", str(self.key_dir)]
            self._spawn(f"agent-{i}", cmd)
        self._spawn("superlink", [
            _bin("flower-superlink"), "--insecure",
            "--host", "127.0.0.1", "--port", str(port),
        ])  # fmt: skip
        for i, adir in enumerate(agent_dirs):
            node_config = (
                f"partition-id={i} num-partitions={self.supernodes} "
                f"agent-dir={_toml_str(str(adir))}"
            )
            self._spawn(f"supernode-{i}", [
                _bin("flower-supernode"), "--insecure",
                "--superlink", self.control_address,
                "--node-config", node_config,
                "--host", "127.0.0.1", "--port", str(free_port()),
            ])  # fmt: skip
        deadline = time.monotonic() + ready_timeout
        while not (all((d / "ready").exists() for d in agent_dirs) and _listening(port)):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"node agents not ready after {ready_timeout:.0f} s")
            time.sleep(0.2)

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; see {self.workdir / name}.log"
                )

    def run(self, out: Path, *, run_config: dict[str, Any] | None = None,
            timeout: float = 3600.0) -> dict[str, Any]:  # fmt: skip
        """Submit the app with ``flwr run`` and wait for the job's summary."""
        app_dir = self.workdir / "app"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "pyproject.toml").write_text(APP_TOML)
        values: dict[str, Any] = {"job": str(self.job.resolve()), "out": str(out.resolve())}
        if self.key_dir is not None:
            values["key-dir"] = str(self.key_dir.resolve())
        values.update(run_config or {})
        rc = " ".join(f"{k}={_toml_str(v) if isinstance(v, str) else v}" for k, v in values.items())
        summary = out / "summary.json"
        proc = self._spawn("flwr-run", [
            _bin("flwr"), "run", str(app_dir), "secfed-local", "--run-config", rc, "--stream",
        ])  # fmt: skip
        deadline = time.monotonic() + timeout
        while not summary.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"job did not finish in {timeout:.0f} s; see {self.workdir}")
            for name, p in self.procs:
                if p.poll() is not None and (name != "flwr-run" or p.returncode != 0):
                    raise RuntimeError(
                        f"{name} exited with {p.returncode} before the job finished; see "
                        f"{self.workdir / name}.log"
                    )
            time.sleep(0.5)
        proc.wait(timeout=30) if proc.poll() is None else None
        return dict(json.loads(summary.read_text()))

    def stop(self) -> None:
        """Terminate every process started here and their helpers (kill after 10 s)."""
        helpers = descendants([p.pid for _, p in self.procs if p.poll() is None])
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM: killing it", name, proc.pid)
                proc.kill()
                proc.wait(timeout=10)
        for pid in helpers:  # Flower's detached helpers outlive their parent otherwise
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (alive := [p for p in helpers if _exists(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in alive:
            _signal(pid, signal.SIGKILL)

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m secfed.flower.launch JOB.toml --supernodes N --out DIR``."""
    ap = argparse.ArgumentParser(description="Run a secfed job on a local Flower deployment.")
    ap.add_argument("job", type=Path)
    ap.add_argument("--supernodes", type=int, default=None, help="default: federation.clients")
    ap.add_argument("--out", type=Path, default=None, help="default: the job's output.dir")
    ap.add_argument("--key-dir", type=Path, default=None, help="keys for paillier/ckks")
    ap.add_argument("--workdir", type=Path, default=None, help="logs and sockets (default: tmp)")
    ap.add_argument("--stage-timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from ..config import load_config

    cfg = load_config(args.job)
    n = args.supernodes or cfg.federation.clients
    out = args.out or Path(cfg.output.dir)
    with tempfile.TemporaryDirectory(prefix="secfed-flower-") as tmp:
        workdir = args.workdir or Path(tmp)
        with LocalDeployment(args.job, n, workdir, key_dir=args.key_dir) as dep:
            dep.start()
            summary = dep.run(out, run_config={"stage-timeout": args.stage_timeout})
    log.info("finished: %d rounds, accuracy %s, results in %s", summary["rounds"],
             summary["accuracy"], out)  # fmt: skip


if __name__ == "__main__":
    main()
