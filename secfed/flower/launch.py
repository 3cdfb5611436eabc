"""Start a local Flower deployment for one job file and run it to the end.

``python -m secfed.flower.launch JOB.toml --out runs/x [--data a.csv --data b.csv ...]``
starts, on 127.0.0.1 only and with ``--insecure``: one ``flower-superlink``, one node agent
and one SuperNode per client (node config ``partition-id``, ``num-partitions``,
``agent-dir`` and, with ``--data``, that node's own ``data-path``; by default the agent
answers its SuperNode's ClientApp tasks, ``--isolation process``), submits the app with
``flwr run``, prints each round as it ends and waits for the job's ``summary.json``. What
would fail later is refused first, in one line: a cohort that does not match the job, an
existing run directory, a feature Flower does not carry. A SuperNode or agent that exits
mid-job is a dropout; the SuperLink or the ServerApp failing ends the launch with its error
line. Logs stay in ``RUN_DIR/flower-logs``; ``--resume RUN_DIR`` continues an interrupted
run. Every process it started is stopped at the end, also on failure.
Nothing is downloaded: the Flower app (a ``pyproject.toml`` naming secfed's ServerApp and
ClientApp) is written into a scratch directory and the installed secfed is used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SecfedError
from ..rundir import RunDir
from .policy import check_launch
from .procs import (
    descendants,
    find_bin,
    free_port,
    last_error,
    listening,
    pid_alive,
    send_signal,
    toml_str,
)

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
eval-path = ""
resume = ""
simulation = false
"""


def node_config(i: int, n: int, agent_dir: Path, data: Path | None, extra: str = "") -> str:
    """The ``--node-config`` string of SuperNode ``i`` (its agent is given the same)."""
    text = f"partition-id={i} num-partitions={n} agent-dir={toml_str(str(agent_dir))}"
    if data is not None:
        text += f" data-path={toml_str(str(data.resolve()))}"
    return f"{text} {extra}".strip()


@dataclass
class LocalDeployment:
    """The processes of one local deployment; :meth:`stop` ends all of them.

    ``workdir`` holds the agents' sockets and Flower's home (a short path: Unix sockets
    allow about 100 characters); ``logdir`` the processes' logs (default: ``workdir``).
    ``data`` gives node ``i`` its own file (``data-path`` in its node config);
    ``poll`` is the SuperNodes' idle poll (see :mod:`secfed.flower.supernode`).
    ``isolation`` ``process`` (default): each agent claims its SuperNode's ClientApp tasks
    itself, no process per message (:mod:`secfed.flower.executor`); ``subprocess``: Flower's
    own SuperExec starts a ClientApp process per message, which relays to the agent.
    """

    job: Path
    supernodes: int
    workdir: Path
    key_dir: Path | None = None
    logdir: Path | None = None
    data: list[Path] | None = None
    node_extra: str = ""
    poll: float = 0.1
    isolation: str = "process"
    env: dict[str, str] = field(default_factory=dict)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    control_address: str = ""
    lost: set[str] = field(default_factory=set)

    def log_path(self, name: str) -> Path:
        return (self.logdir or self.workdir) / f"{name}.log"

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        logfile = self.log_path(name).open("ab")
        proc = subprocess.Popen(
            cmd, stdout=logfile, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir
        )
        logfile.close()
        self.procs.append((name, proc))
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(cmd))
        return proc

    def start(self, *, ready_timeout: float = 300.0) -> None:
        """Agents first (they build the model), then the SuperLink and the SuperNodes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.logdir or self.workdir).mkdir(parents=True, exist_ok=True)
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        self.job = self.job.resolve()
        # Flower starts helpers (flower-superexec, flwr-serverapp) by name: PATH must hold them.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "FLWR_HOME": str(home), "OMP_NUM_THREADS": "1", "PATH": path}
        # Flower posts usage events to telemetry.flower.ai unless told not to; these processes
        # run on the organisations' machines: off unless the user set it.
        self.env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        if self.isolation not in ("process", "subprocess"):
            raise ConfigError(f"isolation {self.isolation!r}: use 'process' or 'subprocess'")
        secret = self.workdir / "superexec.secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        if self.poll > 0:
            self.env["SECFED_SUPERNODE_POLL"] = str(self.poll)
        port = free_port()  # Flower 1.41 serves Fleet, Control and runtime APIs on one port
        self.control_address = f"127.0.0.1:{port}"
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "secfed-local"\n\n[superlink.secfed-local]\n'
            f'address = "{self.control_address}"\ninsecure = true\n'
        )
        agent_dirs = [self.workdir / f"agent-{i}" for i in range(self.supernodes)]
        configs = [
            node_config(i, self.supernodes, d, self.data[i] if self.data else None,
                        self.node_extra)
            for i, d in enumerate(agent_dirs)
        ]  # fmt: skip
        runtime_ports = [free_port() for _ in configs]
        for i, (adir, conf) in enumerate(zip(agent_dirs, configs, strict=True)):
            cmd = [sys.executable, "-m", "secfed.flower.agent", str(self.job),
                   "--node-config", conf, "--agent-dir", str(adir)]  # fmt: skip
            if self.key_dir is not None:
                cmd += ["--key-dir", str(self.key_dir)]
            if self.isolation == "process":
                cmd += ["--runtime-api-address", f"127.0.0.1:{runtime_ports[i]}",
                        "--superexec-auth-secret-file", str(secret)]  # fmt: skip
            self._spawn(f"agent-{i}", cmd)
        self._spawn("superlink", [
            find_bin("flower-superlink"), "--insecure",
            "--host", "127.0.0.1", "--port", str(port),
        ])  # fmt: skip
        for i, conf in enumerate(configs):
            # poll <= 0: Flower's own flower-supernode with its stock intervals
            entry = ([sys.executable, "-m", "secfed.flower.supernode"] if self.poll > 0
                     else [find_bin("flower-supernode")])  # fmt: skip
            isolation = ["--isolation", self.isolation]
            if self.isolation == "process":
                isolation += ["--superexec-auth-secret-file", str(secret)]
            self._spawn(f"supernode-{i}", [
                *entry, "--insecure", *isolation,
                "--superlink", self.control_address,
                "--node-config", conf,
                "--host", "127.0.0.1", "--port", str(runtime_ports[i]),
            ])  # fmt: skip
        deadline = time.monotonic() + ready_timeout
        while not (all((d / "ready").exists() for d in agent_dirs) and listening(port)):
            self._check_alive(strict=True)
            if time.monotonic() > deadline:
                raise TimeoutError(f"node agents not ready after {ready_timeout:.0f} s")
            time.sleep(0.2)

    def _check_alive(self, *, strict: bool) -> None:
        """Fail when the SuperLink or ``flwr run`` failed (any process while ``strict``).

        After the start a SuperNode or agent that exits is one organisation going away: the
        job goes on and its client counts as a dropout.
        """
        for name, proc in self.procs:
            rc = proc.poll()
            if rc is None or name in self.lost or (name == "flwr-run" and rc == 0):
                continue
            if strict or name in ("superlink", "flwr-run"):
                raise LaunchError(f"{name} exited with {rc}: {last_error(self.log_path(name))} "
                                  f"(log: {self.log_path(name)})")  # fmt: skip
            self.lost.add(name)
            log.warning("%s exited with %s: its client counts as dropped from now on (log: %s)",
                        name, rc, self.log_path(name))  # fmt: skip
            self._stop_partner(name)

    def _stop_partner(self, name: str) -> None:
        """An organisation is its SuperNode and its agent: when one goes, stop the other.

        A SuperNode that ends cleanly leaves the federation at once, so the server gets
        "node unavailable" for it instead of waiting out a timeout on tasks nobody claims.
        """
        kind, _, index = name.partition("-")
        partner = {"agent": "supernode", "supernode": "agent"}.get(kind)
        if partner is None:
            return
        proc = dict(self.procs).get(f"{partner}-{index}")
        if proc is not None and proc.poll() is None:
            self.lost.add(f"{partner}-{index}")
            proc.terminate()

    def run(
        self, out: Path, *, run_config: dict[str, Any] | None = None, timeout: float = 3600.0,
        rounds: int | None = None, resume: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """Submit the app with ``flwr run``, report each round, and return the job's summary."""
        app_dir = self.workdir / "app"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "pyproject.toml").write_text(APP_TOML)
        values: dict[str, Any] = {"job": str(self.job.resolve()), "out": str(out.resolve())}
        if resume:
            values["resume"] = str(out.resolve())
        if self.key_dir is not None:
            values["key-dir"] = str(self.key_dir.resolve())
        values.update(run_config or {})
        rc = " ".join(f"{k}={toml_str(v) if isinstance(v, str) else v}" for k, v in values.items())
        summary = out / "summary.json"
        started = time.time()
        proc = self._spawn("flwr-run", [
            find_bin("flwr"), "run", str(app_dir), "secfed-local", "--run-config", rc, "--stream",
        ])  # fmt: skip
        deadline = time.monotonic() + timeout
        reported = len(RunDir(out).read_metrics()) if resume else 0
        while not (summary.exists() and summary.stat().st_mtime >= started):
            if time.monotonic() > deadline:
                raise LaunchError(f"job did not finish in {timeout:.0f} s; logs in "
                                  f"{self.logdir or self.workdir}")  # fmt: skip
            self._check_alive(strict=False)
            if proc.poll() == 0 and not summary.exists():
                raise LaunchError(f"the ServerApp ended without a summary: "
                                  f"{last_error(self.log_path('flwr-run'))}")  # fmt: skip
            reported = self._progress(out, reported, rounds)
            time.sleep(0.2)
        self._progress(out, reported, rounds)
        proc.wait(timeout=30) if proc.poll() is None else None
        return dict(json.loads(summary.read_text()))

    @staticmethod
    def _progress(out: Path, reported: int, rounds: int | None) -> int:
        try:
            rows = RunDir(out).read_metrics()
        except (OSError, ValueError):  # a line being written
            return reported
        for row in rows[reported:]:
            dropped = f" dropped {row['dropped']}" if row.get("dropped") else ""
            log.info("round %s/%s: accuracy %.4f loss %.4f%s (%.1f s)", row["round"],
                     rounds or "?", row["accuracy"], row["loss"], dropped,
                     row.get("seconds", 0.0))  # fmt: skip
        return max(reported, len(rows))

    def stop(self) -> None:
        """Terminate every process started here and their helpers (kill after 20 s)."""
        helpers = descendants([p.pid for _, p in self.procs if p.poll() is None])
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 20  # one deadline for all: a loaded machine is slow
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM: killing it", name, proc.pid)
                proc.kill()
                proc.wait(timeout=10)
        for pid in helpers:  # Flower's detached helpers outlive their parent otherwise
            send_signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (alive := [p for p in helpers if pid_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in alive:
            send_signal(pid, signal.SIGKILL)

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LaunchError(SecfedError):
    """The local deployment could not run the job (the message names the process and why)."""


def main(argv: list[str] | None = None) -> None:
    """``python -m secfed.flower.launch JOB.toml --out DIR [--data F0 --data F1 ...]``."""
    ap = argparse.ArgumentParser(description="Run a secfed job on a local Flower deployment.")
    ap.add_argument("job", type=Path, nargs="?", help="experiment file (not with --resume)")
    ap.add_argument("--supernodes", type=int, default=None,
                    help="must equal federation.clients (the default)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="default: the job's output.dir")
    ap.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                    help="continue an interrupted run in RUN_DIR")  # fmt: skip
    ap.add_argument(
        "--data",
        type=Path,
        action="append",
        default=None,
        help="node i's own data file (repeat once per client, in client order)",
    )
    ap.add_argument(
        "--eval-path",
        type=Path,
        default=None,
        help="server-side evaluation file (with --data; default: federated)",
    )
    ap.add_argument("--key-dir", type=Path, default=None, help="keys for paillier/ckks")
    ap.add_argument("--poll", type=float, default=0.1,
                    help="SuperNode idle poll in seconds (0: Flower's stock 3 s)")  # fmt: skip
    ap.add_argument("--isolation", choices=("process", "subprocess"), default="process",
                    help="process: each agent runs its node's ClientApp tasks (default); "
                         "subprocess: Flower starts a ClientApp process per message")  # fmt: skip
    ap.add_argument("--stage-timeout", type=float, default=120.0)
    ap.add_argument("--train-timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    signal.signal(signal.SIGTERM, _interrupt)  # stop every process, as on Ctrl-C
    try:
        summary = _launch(args)
    except (SecfedError, TimeoutError) as err:
        log.error("error: %s", err)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        log.error("interrupted: every process was stopped; continue with --resume")
        raise SystemExit(130) from None
    log.info("finished: %d rounds, accuracy %s, results in %s", summary["rounds"],
             summary["accuracy"], summary["_out"])  # fmt: skip


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _launch(args: argparse.Namespace) -> dict[str, Any]:
    from ..config import load_config

    if args.resume is not None:
        job = args.resume / "config.toml"
        if not job.is_file() or RunDir(args.resume).latest_checkpoint() is None:
            raise ConfigError(f"--resume {args.resume}: no secfed run with a checkpoint there")
    elif args.job is None:
        raise ConfigError("give a job file, or --resume RUN_DIR")
    else:
        job = args.job
    cfg = load_config(job)
    out = args.out or args.resume or Path(cfg.output.dir)
    n = check_launch(cfg, args, out)
    logdir = out / "flower-logs"
    out.mkdir(parents=True, exist_ok=True)
    run_config: dict[str, Any] = {"stage-timeout": args.stage_timeout,
                                  "train-timeout": args.train_timeout}  # fmt: skip
    if args.eval_path is not None:
        run_config["eval-path"] = str(args.eval_path.resolve())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="secfed-flower-") as tmp:
        dep = LocalDeployment(job, n, Path(tmp), key_dir=args.key_dir, logdir=logdir,
                              data=args.data, poll=args.poll, isolation=args.isolation)  # fmt: skip
        with dep:
            log.info("starting a SuperLink and %d SuperNodes on 127.0.0.1 (logs: %s)", n, logdir)
            dep.start()
            log.info("nodes ready after %.1f s; running %d rounds", time.perf_counter() - t0,
                     cfg.federation.rounds)  # fmt: skip
            summary = dep.run(out, run_config=run_config, rounds=cfg.federation.rounds,
                              resume=args.resume is not None)  # fmt: skip
    summary["_out"] = str(out)
    return summary


if __name__ == "__main__":
    main()
