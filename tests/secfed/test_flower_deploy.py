"""Flower deployments on 127.0.0.1: the launcher's refusals (nothing started), a real SuperLink
with SuperNodes and agents (slow), organisations going away, Flower's simulation runtime."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from secfed.checkpoint import load_checkpoint
from secfed.flower.procs import pid_alive
from secfed.rundir import RunDir
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job
from tests.secfed.flower_helpers import job, write_org_files


# -- the local launcher's refusals (nothing is started) ------------------------------------
@pytest.mark.parametrize(
    ("setup", "args", "reason"),
    [
        ("exists", [], "already exists and is not empty"),
        ("", ["--supernodes", "2"], "--supernodes 2 but the job has federation.clients = 3"),
        ("scaffold", [], "scaffold"),
        ("", ["--data", "a.csv"], "1 --data files for 3 clients"),
        ("", ["--resume", "RUN"], "no secfed run with a checkpoint"),
    ],
)
def test_launcher_refuses_in_one_line_before_starting_anything(
    tmp_path, caplog, monkeypatch, setup, args, reason
):
    from secfed.flower import launch

    spawned = []
    monkeypatch.setattr(launch.LocalDeployment, "_spawn", lambda *a: spawned.append(a))
    cfg = tiny_job(federation={"strategy": "scaffold"} if setup == "scaffold" else {})
    job_file = tmp_path / "job.toml"
    job_file.write_text(cfg.to_toml())
    out = tmp_path / "RUN"
    if setup == "exists":
        out.mkdir()
        (out / "summary.json").write_text("{}")
    argv = [str(job_file), "--out", str(out)] + [a.replace("RUN", str(out)) for a in args]
    with pytest.raises(SystemExit) as exc:
        launch.main(argv)
    assert exc.value.code == 2 and not spawned
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and reason in errors[0] and "\n" not in errors[0]


def test_launcher_pairs_each_agent_with_its_supernodes_tasks(tmp_path, monkeypatch):
    """Each agent claims the tasks of its own SuperNode (same Runtime API port), both hold the
    SuperExec secret (mode 0600), and Flower's telemetry is off in every process."""
    from secfed.flower import launch

    monkeypatch.delenv("FLWR_TELEMETRY_ENABLED", raising=False)
    spawned: dict[str, list[str]] = {}
    monkeypatch.setattr(launch.LocalDeployment, "_spawn",
                        lambda self, name, cmd: spawned.setdefault(name, cmd))  # fmt: skip
    job_file = tmp_path / "job.toml"
    job_file.write_text(tiny_job().to_toml())
    dep = launch.LocalDeployment(job_file, 3, tmp_path / "d")
    with pytest.raises(TimeoutError):  # nothing really started, so nothing becomes ready
        dep.start(ready_timeout=0.1)
    assert dep.env["FLWR_TELEMETRY_ENABLED"] == "0"

    def arg(cmd: list[str], flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    secret = tmp_path / "d" / "superexec.secret"
    assert secret.stat().st_mode & 0o077 == 0 and len(secret.read_bytes()) == 32
    ports = set()
    for i in range(3):
        agent, node = spawned[f"agent-{i}"], spawned[f"supernode-{i}"]
        assert arg(node, "--isolation") == "process"
        assert arg(agent, "--runtime-api-address") == f"127.0.0.1:{arg(node, '--port')}"
        assert arg(agent, "--superexec-auth-secret-file") == str(secret)
        assert arg(node, "--superexec-auth-secret-file") == str(secret)
        ports.add(arg(node, "--port"))
    assert len(ports) == 3


# -- a real SuperLink with three SuperNodes ------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["process", "subprocess"])
def test_superlink_with_three_supernodes_matches_in_process(tmp_path, isolation, caplog):
    """Both ways of running the ClientApp (the agent claims the node's tasks; Flower starts a
    process per message) end where the in-process job ends, and stop every process."""
    from secfed.flower.launch import LocalDeployment

    cfg = job()
    job_file = tmp_path / "job.toml"
    job_file.write_text(cfg.to_toml())
    ref = FederatedRunner(cfg, tmp_path / "ref")
    ref.run()
    dep = LocalDeployment(job_file, 3, tmp_path / "deploy", isolation=isolation)
    try:
        dep.start()
        pids = [p.pid for _, p in dep.procs]
        summary = dep.run(tmp_path / "out", timeout=540)
    finally:
        dep.stop()
    assert all(p.poll() is not None for _, p in dep.procs)
    assert not any(pid_alive(pid) for pid in pids)
    assert "ignored SIGTERM" not in caplog.text  # every process ends when asked
    out = RunDir(tmp_path / "out")
    assert [r["dropped"] for r in out.read_metrics()] == [[], []], out.read_metrics()
    latest = out.latest_checkpoint()
    assert latest is not None
    assert np.array_equal(load_checkpoint(latest).global_vector, ref.state.global_vector)
    assert summary["rounds"] == 2
    assert summary["privacy"]["epsilon"] == ref.privacy_summary()["epsilon"]


# -- three organisations on a real SuperLink -----------------------------------------------
@pytest.mark.slow
def test_three_organisations_on_a_superlink_and_one_goes_away(tmp_path, monkeypatch):
    """Three SuperNodes read three different local files; node 2's agent stops after round 1
    and client 2 becomes a dropout while the job goes on; logs stay, scratch dirs go."""
    import signal as signals

    from secfed.flower.launch import LocalDeployment

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    files = write_org_files(tmp_path)
    cfg = job("plain", privacy={}, rounds=3)
    job_file = tmp_path / "job.toml"
    job_file.write_text(cfg.to_toml())
    out = tmp_path / "out"
    dep = LocalDeployment(job_file, 3, tmp_path / "d", logdir=out / "flower-logs", data=files)
    stopper_done = threading.Event()

    def stop_agent_2_after_round_1():
        while not stopper_done.is_set():
            if len(RunDir(out).read_metrics()) >= 1:
                dict(dep.procs)["agent-2"].send_signal(signals.SIGTERM)
                return
            time.sleep(0.2)

    try:
        dep.start()
        threading.Thread(target=stop_agent_2_after_round_1, daemon=True).start()
        summary = dep.run(out, timeout=540)
    finally:
        stopper_done.set()
        dep.stop()
    rows = RunDir(out).read_metrics()
    assert [r["contributors"] for r in rows] == [[0, 1, 2], [0, 1], [0, 1]], rows
    assert [r["dropped"] for r in rows] == [[], [2], [2]]
    assert all(r["evaluated_on"] == 10 + 14 + (18 if i == 0 else 0) for i, r in enumerate(rows))
    assert summary["rounds"] == 3 and "agent-2" in dep.lost
    assert (out / "flower-logs" / "supernode-2.log").exists()
    assert not list(scratch.glob("secfed-agent-*")), "agent scratch directories left behind"


@pytest.mark.slow
def test_simulation_runtime_runs_the_same_app(tmp_path):
    """`flwr run` on Flower's simulation runtime (ray) ends where the in-process job ends."""
    import contextlib
    import signal
    import subprocess
    import sys

    pytest.importorskip("ray")
    from secfed.flower.launch import APP_TOML

    cfg = job("secagg", privacy={}, rounds=2)
    (tmp_path / "job.toml").write_text(cfg.to_toml())
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "pyproject.toml").write_text(APP_TOML)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "sim"\n\n[superlink.sim]\noptions.num-supernodes = 3\n'
        "options.backend.client-resources.num-cpus = 2\noptions.backend.init-args.num-cpus = 2\n"
    )
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bindir}:{os.environ['PATH']}"}
    run_config = f'job="{tmp_path / "job.toml"}" out="{tmp_path / "out"}" simulation=true'
    try:
        subprocess.run(
            [f"{bindir}/flwr", "run", str(tmp_path / "app"), "sim", "--stream",
             "--run-config", run_config],
            env=env, cwd=tmp_path, timeout=840, check=True, capture_output=True,
        )  # fmt: skip
    finally:  # `flwr run` leaves its local SuperLink running: stop it and its helpers
        from secfed.flower.procs import descendants

        ours = [
            int(p.parent.name)
            for p in Path("/proc").glob("[0-9]*/cmdline")
            if str(home) in p.read_bytes().decode(errors="replace")
        ]
        for pid in ours + descendants(ours):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
    ref = FederatedRunner(cfg, tmp_path / "ref")
    ref.run()
    out = RunDir(tmp_path / "out")
    assert [r["contributors"] for r in out.read_metrics()] == [[0, 1, 2], [0, 1, 2]]
    latest = out.latest_checkpoint()
    assert latest is not None
    assert np.array_equal(load_checkpoint(latest).global_vector, ref.state.global_vector)


@pytest.mark.slow
def test_a_supernode_process_killed_mid_run_is_a_dropout(tmp_path):
    """SIGKILL to SuperNode 2 itself (not its agent) after round 1 of a 4-client secagg job
    (it tolerates one dropout; secagg+ with 3 clients tolerates none and stops with a
    DropoutError): the job goes on without it, client 2 is a dropout in the metrics, and
    nothing waits forever."""
    import signal as signals

    from secfed.flower.launch import LocalDeployment

    cfg = job("secagg", privacy={}, rounds=3, clients=4)
    job_file = tmp_path / "job.toml"
    job_file.write_text(cfg.to_toml())
    out = tmp_path / "out"
    dep = LocalDeployment(job_file, 4, tmp_path / "d", logdir=out / "flower-logs")
    stopper_done = threading.Event()
    killed: list[int] = []

    def kill_supernode_2_after_round_1():
        while not stopper_done.is_set():
            if len(RunDir(out).read_metrics()) >= 1:
                proc = dict(dep.procs)["supernode-2"]
                proc.send_signal(signals.SIGKILL)
                killed.append(proc.pid)
                return
            time.sleep(0.1)

    try:
        dep.start()
        threading.Thread(target=kill_supernode_2_after_round_1, daemon=True).start()
        # a node that vanishes without a word is noticed by its deadline: keep them short
        summary = dep.run(out, run_config={"stage-timeout": 15.0, "train-timeout": 30.0},
                          timeout=400)  # fmt: skip
    finally:
        stopper_done.set()
        dep.stop()
    rows = RunDir(out).read_metrics()
    assert killed and not pid_alive(killed[0])
    assert [r["contributors"] for r in rows] == [[0, 1, 2, 3], [0, 1, 3], [0, 1, 3]], rows
    assert [r["dropped"] for r in rows] == [[], [2], [2]]
    assert summary["rounds"] == 3 and "supernode-2" in dep.lost
    assert all(p.poll() is not None for _, p in dep.procs)  # its agent was stopped too
