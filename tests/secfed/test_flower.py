"""Flower deployment adapter: envelope encoding, the ClientApp relay, the server/client logic
(in-process exchange through Flower records), dropouts, and a real local SuperLink run."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

import crypto
from secfed.checkpoint import load_checkpoint
from secfed.errors import ConfigError
from secfed.flower import Envelope, EnvelopeError, LocalExchange
from secfed.flower.agent import NodeAgent, serve
from secfed.flower.codec import (
    aggregate_envelope,
    envelope_aggregate,
    from_frame,
    from_record,
    to_frame,
    to_record,
)
from secfed.flower.server import FlowerRunner
from secfed.rundir import RunDir
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job

DP = {"deterministic_noise": True, "sample": {"enabled": True, "noise_multiplier": 1.0}}


def job(protocol: str = "secagg+", privacy: dict | None = None, **fed):
    return tiny_job(
        federation={"rounds": 2, "optimizer": "sgd", "lr": 0.5, **fed},
        aggregation={"protocol": protocol},
        privacy=privacy if privacy is not None else DP,
    )


def local_deployment(cfg, key_dir=None):
    agents = {
        100 + c: NodeAgent(cfg, client_id=c, key_dir=key_dir) for c in range(cfg.federation.clients)
    }
    return agents, LocalExchange({node: a.handle for node, a in agents.items()})


def identities(cfg, root: Path) -> Path:
    """The job's roster and identity keys (secfed keys generate --scheme identity)."""
    crypto.core.identity.load_or_create(root / "identity", range(cfg.federation.clients))
    return root


# -- encoding ------------------------------------------------------------------------------
def test_envelope_survives_frame_and_flower_record():
    env = Envelope("stage", {"round": 3, "cohort": [0, 2]}, b"\x00\xffprotocol-bytes")
    assert from_frame(to_frame(env)) == env
    assert from_record(to_record(env)) == env


def test_malformed_frames_and_foreign_records_are_rejected():
    frame = to_frame(Envelope("train", {"x": 1}, b"abc"))
    with pytest.raises(EnvelopeError, match="does not fit"):
        from_frame(frame[:6])
    with pytest.raises(EnvelopeError, match="unknown envelope kind"):
        Envelope("exfiltrate")
    from flwr.app import ConfigRecord, RecordDict

    with pytest.raises(EnvelopeError, match="not sent by secfed"):
        from_record(RecordDict({"other": ConfigRecord({"frame": b""})}))


def test_aggregate_envelope_roundtrip():
    agg = crypto.Aggregate(np.array([0.5, -1.25]), 2.0, (0, 2), "clients", 1e-9)
    back = envelope_aggregate(from_record(to_record(aggregate_envelope(agg))))
    assert back is not None and np.array_equal(back.weighted_sum, agg.weighted_sum)
    assert (back.total_weight, back.contributors, back.error_bound) == (2.0, (0, 2), 1e-9)


# -- the ClientApp relay -------------------------------------------------------------------
class EchoAgent:
    client_id = 1

    def handle(self, env: Envelope) -> Envelope:
        return Envelope("hello", {"client": self.client_id, "seen": env.kind})


def test_client_app_relays_a_flower_message_to_its_agent(tmp_path):
    from flwr.app import Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from secfed.flower.client_app import handle_message

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    agent_dir = tmp_path / "agent"
    threading.Thread(target=serve, args=(EchoAgent(), agent_dir), daemon=True).start()
    for _ in range(100):
        if (agent_dir / "ready").exists():
            break
        time.sleep(0.05)
    assert (agent_dir / "authkey").stat().st_mode & 0o077 == 0
    msg = Message(to_record(Envelope("hello")), dst_node_id=7, message_type="query")
    ctx = Context(1, 7, {"partition-id": 1, "agent-dir": str(agent_dir)}, RecordDict(), {})
    reply = from_record(handle_message(msg, ctx).content)
    assert reply == Envelope("hello", {"client": 1, "seen": "hello"})
    wrong = Context(1, 7, {"partition-id": 2, "agent-dir": str(agent_dir)}, RecordDict(), {})
    assert from_record(handle_message(msg, wrong).content).kind == "error"
    with pytest.raises(EnvelopeError, match="no secfed node agent"):
        handle_message(msg, Context(1, 7, {"agent-dir": str(tmp_path)}, RecordDict(), {}))


# -- server and client logic over Flower records -------------------------------------------
def test_flower_runner_equals_in_process_runner_with_secagg_plus_and_dp(tmp_path):
    cfg = job()
    ref = FederatedRunner(cfg, tmp_path / "ref")
    ref.run()
    # Over Flower every party loads the roster and its identity key, so messages are signed
    # (and byte counts equal) as in process.
    keys = identities(cfg, tmp_path / "ids")
    _agents, exchange = local_deployment(cfg, keys)
    fl = FlowerRunner(cfg.with_overrides(aggregation={"key_dir": str(keys)}), tmp_path / "fl",
                      exchange)  # fmt: skip

    def restart_agent(record):  # client 1's agent restarts between rounds
        if record["round"] == 1:
            exchange.handlers[101] = NodeAgent(cfg, client_id=1, key_dir=keys).handle

    summary = fl.run(on_round=restart_agent)
    assert fl.protocol.authenticated and ref.protocol.authenticated
    assert np.array_equal(fl.state.global_vector, ref.state.global_vector)
    want, got = ref.dir.read_metrics(), fl.dir.read_metrics()
    for a, b in zip(want, got, strict=True):
        assert a["epsilon"] == b["epsilon"] and a["accuracy"] == b["accuracy"]
        assert a["bytes_up_per_client"] == b["bytes_up_per_client"]
    # secagg+: setup travels with the training request; shares, masked input, the
    # consistency check and unmasking are separate message exchanges.
    groups = {g for g, _, _ in exchange.calls if g.startswith("1/")}
    assert groups == {"1/train", "1/stage1", "1/stage2", "1/stage3", "1/stage4"}
    assert summary["privacy"]["threat_model"]["deployment"] == "flower"


class DroppingExchange(LocalExchange):
    """A node goes silent from a given stage of round 1 on (a disconnected client)."""

    def __init__(self, handlers, *, node: int, stage: int):
        super().__init__(handlers)
        self.node, self.stage = node, stage

    def send(self, requests, *, timeout, group):
        if group == f"1/stage{self.stage}":
            self.silent.add(self.node)
        return super().send(requests, timeout=timeout, group=group)


def test_secagg_recovers_from_a_client_lost_mid_round(tmp_path):
    cfg = job("secagg", privacy={}, rounds=1, clients=4)
    agents = {100 + c: NodeAgent(cfg, client_id=c) for c in range(4)}
    exchange = DroppingExchange({n: a.handle for n, a in agents.items()}, node=102, stage=2)
    fl = FlowerRunner(cfg, tmp_path / "fl", exchange)
    start = fl.state.global_vector.copy()
    fl.run()
    row = fl.dir.read_metrics()[0]
    assert row["dropped"] == [2] and row["contributors"] == [0, 1, 3]
    survivors = []
    for c in (0, 1, 3):
        result = agents[100 + c].result
        assert result is not None
        survivors.append(result[2])
    total = sum(r.weight for r in survivors)
    mean = sum(r.weight * r.payload for r in survivors) / total
    bound = row["aggregate_error_bound"] / total + 1e-6
    assert np.max(np.abs((fl.state.global_vector - start) - mean)) <= bound


def test_no_answer_at_training_fails_clearly(tmp_path):
    cfg = job("plain", privacy={}, rounds=1)
    _, exchange = local_deployment(cfg)
    fl = FlowerRunner(cfg, tmp_path / "fl", exchange)
    exchange.silent.update(exchange.node_ids())
    with pytest.raises(crypto.ProtocolError, match="no client of cohort"):
        fl.run()


def test_homomorphic_protocols_need_keys_made_beforehand(tmp_path):
    with pytest.raises(ConfigError, match="secfed keys generate"):
        FlowerRunner(job("paillier", privacy={}), tmp_path / "fl", LocalExchange({}))


def test_unsupported_features_are_refused():
    with pytest.raises(ConfigError, match="scaffold"):
        NodeAgent(tiny_job(federation={"strategy": "scaffold"}), client_id=0)


# -- a real SuperLink with three SuperNodes ------------------------------------------------
@pytest.mark.slow
def test_superlink_with_three_supernodes_matches_in_process(tmp_path):
    from secfed.flower.launch import LocalDeployment

    cfg = job()
    job_file = tmp_path / "job.toml"
    job_file.write_text(cfg.to_toml())
    ref = FederatedRunner(cfg, tmp_path / "ref")
    ref.run()
    dep = LocalDeployment(job_file, 3, tmp_path / "deploy")
    try:
        dep.start()
        pids = [p.pid for _, p in dep.procs]
        summary = dep.run(tmp_path / "out", timeout=540)
    finally:
        dep.stop()
    assert all(p.poll() is not None for _, p in dep.procs)
    assert not any(_alive(pid) for pid in pids)
    out = RunDir(tmp_path / "out")
    assert [r["dropped"] for r in out.read_metrics()] == [[], []], out.read_metrics()
    latest = out.latest_checkpoint()
    assert latest is not None
    assert np.array_equal(load_checkpoint(latest).global_vector, ref.state.global_vector)
    assert summary["rounds"] == 2
    assert summary["privacy"]["epsilon"] == ref.privacy_summary()["epsilon"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _split_keys(protocol: str, options: dict, root: Path) -> tuple[Path, Path]:
    """Full key dir (clients) and a copy holding only the public part (server)."""
    full, public = root / "keys", root / "keys-public"
    crypto.create_protocol(protocol, **options).setup(job_id="keys", key_dir=full)
    name = {"paillier": "paillier/public.key", "ckks": "ckks/public.ctx"}[protocol]
    (public / name).parent.mkdir(parents=True)
    shutil.copy(full / name, public / name)
    return full, public


USER_DP = {"user": {"enabled": True, "clip_norm": 0.05, "noise": "distributed"}}
ADAPTIVE = {"user": {**USER_DP["user"], "noise": "central", "adaptive_quantile": 0.5}}
ADAPTIVE["user"]["adaptive_count_noise"] = 1.0


@pytest.mark.parametrize(
    ("protocol", "options", "privacy"),
    [
        ("paillier", {"insecure_key_bits": 512, "workers": 1}, {}),
        ("ckks", {}, {}),
        ("plain", {}, DP),
        ("secagg", {}, USER_DP),
        ("secagg+", {"clip": 0.5}, ADAPTIVE),  # the unclipped count: one more coordinate
    ],
)
def test_every_protocol_over_flower_matches_in_process(tmp_path, protocol, options, privacy):
    cfg = tiny_job(
        federation={"rounds": 1},
        aggregation={"protocol": protocol, "options": options},
        privacy={"deterministic_noise": True, **privacy},
    )
    server_cfg, client_keys = cfg, None
    if protocol in ("paillier", "ckks"):
        client_keys, public = _split_keys(protocol, options, tmp_path)
        cfg = cfg.with_overrides(aggregation={"key_dir": str(client_keys)})
        server_cfg = cfg.with_overrides(aggregation={"key_dir": str(public)})
    ref = FederatedRunner(cfg, tmp_path / "ref")
    ref.run()
    agents = {7 + c: NodeAgent(cfg, client_id=c, key_dir=client_keys) for c in range(3)}
    exchange = LocalExchange({n: a.handle for n, a in agents.items()})
    fl = FlowerRunner(server_cfg, tmp_path / "fl", exchange)
    fl.run()
    row = fl.dir.read_metrics()[-1]
    assert row["dropped"] == [] and row["contributors"] == [0, 1, 2]
    bound = row["aggregate_error_bound"]  # 0 for the integer schemes: then exact
    diff = np.max(np.abs(fl.state.global_vector - ref.state.global_vector))
    assert diff <= 2 * bound + 1e-7 if bound else diff == 0.0


# -- each organisation's own file ----------------------------------------------------------
def write_org_files(root: Path, sizes=(50, 70, 90), *, string_labels=False) -> list[Path]:
    """Three CSV files of the built-in task with different rows (one per organisation)."""
    from secfed import builtin_task

    texts, labels = builtin_task.generate(num_examples=sum(sizes), seed=41, label_noise=0.0)
    paths, at = [], 0
    for i, n in enumerate(sizes):
        path = root / f"org{i}.csv"
        rows = ["text,label"]
        for t, y in zip(texts[at : at + n], labels[at : at + n], strict=True):
            rows.append(f'"{t}",{["neg", "pos"][y] if string_labels else y}')
        path.write_text("\n".join(rows) + "\n")
        paths.append(path)
        at += n
    return paths


def org_agents(cfg, files, **extra):
    return {
        10 + c: NodeAgent(cfg, client_id=c, node_config={"data-path": str(f), **extra})
        for c, f in enumerate(files)
    }


def test_nodes_train_on_their_own_files_and_the_server_sees_counts_only(tmp_path):
    files = write_org_files(tmp_path)
    cfg = job("secagg", privacy={}, rounds=1)
    agents = org_agents(cfg, files, **{"test-fraction": 0.2})
    exchange = LocalExchange({n: a.handle for n, a in agents.items()})
    fl = FlowerRunner(cfg, tmp_path / "fl", exchange)
    # each client's data is its whole file: train + held-out = its rows, nothing shared
    for c, n in enumerate((50, 70, 90)):
        shard = agents[10 + c].local.shard
        assert len(shard.train) + len(shard.test) == n and len(shard.test) == round(0.2 * n)
        assert fl.infos[c]["num_examples"] == len(shard.train)
    told = json.dumps(fl.infos)
    assert "org0" not in told and str(tmp_path) not in told
    server_texts = set(fl.parts.data.texts)
    for f in files:
        assert not server_texts & set(f.read_text().splitlines()[1:])
    start = fl.state.global_vector.copy()
    fl.run()
    row = fl.dir.read_metrics()[0]
    assert row["contributors"] == [0, 1, 2] and row["dropped"] == []
    # the global update is the example-weighted mean of the three local updates
    results = [agents[10 + c].result[2] for c in range(3)]
    total = sum(r.weight for r in results)
    mean = sum(r.weight * r.payload for r in results) / total
    bound = row["aggregate_error_bound"] / total + 1e-6
    assert np.max(np.abs((fl.state.global_vector - start) - mean)) <= bound
    # FedAvg weights: each file's training rows over the largest file's (40, 56, 72 of 72)
    assert [r.weight for r in results] == pytest.approx([40 / 72, 56 / 72, 1.0])
    # federated evaluation = the global model evaluated on the union of held-out sets
    from secfed import training

    models_ = __import__("models")
    correct = loss = n = 0
    for a in agents.values():
        models_.load_adapter_vector(a.runner.parts.model, fl.state.global_vector.astype("float32"))
        m = training.evaluate(a.runner.parts.model, a.runner.parts.test_set)
        k = len(a.runner.parts.test_set)
        correct, loss, n = correct + m["accuracy"] * k, loss + m["loss"] * k, n + k
    assert row["evaluated_on"] == n == 42
    assert row["accuracy"] == pytest.approx(correct / n) and row["loss"] == pytest.approx(loss / n)


def test_a_server_evaluation_file_replaces_federated_evaluation(tmp_path):
    files = write_org_files(tmp_path, string_labels=True)
    eval_file = write_org_files(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path,
                                sizes=(40,), string_labels=True)[0]  # fmt: skip
    cfg = job("plain", privacy={}, rounds=1)
    agents = org_agents(cfg, files)
    exchange = LocalExchange({n: a.handle for n, a in agents.items()})
    fl = FlowerRunner(cfg, tmp_path / "fl", exchange, eval_path=str(eval_file))
    fl.run()
    assert not any(g.endswith("/evaluate") for g, _, _ in exchange.calls)
    row = fl.dir.read_metrics()[0]
    assert len(fl.parts.test_set) == 40 and "evaluated_on" not in row
    from secfed import training

    assert row["accuracy"] == training.evaluate(fl.parts.model, fl.parts.test_set)["accuracy"]


def test_a_cohort_that_does_not_match_the_nodes_is_refused_before_round_1(tmp_path):
    cfg = job("plain", privacy={}, rounds=1, clients=3)
    two = {100 + c: NodeAgent(cfg, client_id=c).handle for c in range(2)}
    with pytest.raises(ConfigError, match=r"no SuperNode serves client\(s\) \[2\]"):
        FlowerRunner(cfg, tmp_path / "fl", LocalExchange(two), connect_timeout=0.3)
    assert not (tmp_path / "fl").exists()


def test_nodes_whose_labels_mean_different_classes_are_refused(tmp_path):
    files = write_org_files(tmp_path, string_labels=True)
    odd = tmp_path / "odd.csv"
    odd.write_text(files[2].read_text().replace(",pos", ",positive"))
    cfg = job("plain", privacy={}, rounds=1)
    agents = org_agents(cfg, [*files[:2], odd])
    with pytest.raises(ConfigError, match="name their labels differently"):
        FlowerRunner(cfg, tmp_path / "fl", LocalExchange({n: a.handle for n, a in agents.items()}))


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


def test_resume_over_flower_ends_where_an_uninterrupted_run_ends(tmp_path):
    cfg = job(rounds=2)  # secagg+ with DP-SGD: the accountants must survive the restart
    ref = FederatedRunner(cfg, tmp_path / "ref")
    ref.run()
    _agents, exchange = local_deployment(cfg)
    first = FlowerRunner(cfg, tmp_path / "fl", exchange)
    first.start()
    first.run_round(1)  # then the server dies; the nodes' agents restart too
    _agents, exchange = local_deployment(cfg)
    resumed = FlowerRunner.resume_over(tmp_path / "fl", exchange)
    assert resumed.state.round == 1
    summary = resumed.run()
    assert np.array_equal(resumed.state.global_vector, ref.state.global_vector)
    assert [r["round"] for r in resumed.dir.read_metrics()] == [1, 2]
    assert summary["privacy"]["epsilon"] == ref.privacy_summary()["epsilon"]


def test_app_configs_declare_every_run_config_key():
    """Flower refuses --run-config keys the app does not declare: the launcher's app and the
    example app must both declare every key the ServerApp and ClientApp read."""
    import tomllib

    from secfed.flower.launch import APP_TOML

    read = {"job", "out", "key-dir", "train-timeout", "stage-timeout", "connect-timeout",
            "eval-path", "resume", "simulation"}  # fmt: skip
    example = Path(__file__).parents[2] / "examples" / "flower" / "pyproject.toml"
    for text in (APP_TOML, example.read_text()):
        assert set(tomllib.loads(text)["tool"]["flwr"]["app"]["config"]) == read


def test_simulation_runtime_keeps_one_agent_per_virtual_node_in_process(tmp_path):
    from flwr.app import Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from secfed.flower import client_app

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 5, 7, 1
    job_file = tmp_path / "job.toml"
    job_file.write_text(job("plain", privacy={}, rounds=1).to_toml())
    run_config = {"job": str(job_file), "simulation": True}
    ctx = Context(5, 7, {"partition-id": 1, "num-partitions": 3}, RecordDict(), run_config)
    msg = Message(to_record(Envelope("hello")), dst_node_id=7, message_type="query")
    try:
        first = from_record(client_app.handle_message(msg, ctx).content)
        agent = client_app._IN_PROCESS[(5, 1)]
        again = from_record(client_app.handle_message(msg, ctx).content)
        assert first.meta["client"] == 1 and first == again
        assert client_app._IN_PROCESS[(5, 1)] is agent  # built once, kept across messages
        # outside a simulation a node config without agent-dir is an error, never a new agent
        with pytest.raises(EnvelopeError, match="lacks 'agent-dir'"):
            client_app.handle_message(msg, Context(5, 7, ctx.node_config, RecordDict(), {}))
    finally:
        for a in client_app._IN_PROCESS.values():
            a.close()
        client_app._IN_PROCESS.clear()


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
