"""Flower adapter, in one process: envelope encoding, the ClientApp relay and the task executor,
the server/client logic over Flower records (LocalExchange), dropouts, resume, every protocol."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

import crypto
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
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job
from tests.secfed.flower_helpers import DP, exchange_of, identities, job, local_deployment


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


# -- the agent's task executor (flower-supernode --isolation process) ----------------------
def _fab(clientapp: str):
    """A Flower app bundle (zip with pyproject.toml) naming ``clientapp``."""
    import io
    import zipfile

    from flwr.supercore.fab import Fab

    from secfed.flower.launch import APP_TOML

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", APP_TOML.replace("secfed.flower.client_app:app", clientapp))
    return Fab(hash_str=f"hash-{clientapp}", content=buf.getvalue(), verifications={})


def test_the_executor_runs_only_secfeds_client_app():
    """A server cannot make a node run code it sends: an app naming another ClientApp is
    refused (the task ends with an error reply), secfed's own is served."""
    from secfed.flower.executor import TaskExecutor

    ex = TaskExecutor("127.0.0.1:9", lambda m, c: m)
    try:
        ex._check_app(_fab("secfed.flower.client_app:app"))
        with pytest.raises(PermissionError, match=r"runs only 'secfed\.flower\.client_app:app'"):
            ex._check_app(_fab("evil.steal:app"))
    finally:
        ex.close()


def test_object_pulls_start_their_backoff_short(monkeypatch):
    """Flower's wait for not-yet-pushed objects starts at 1 s; in secfed's processes every
    puller (node, ServerApp, agent) starts at 0.02 s, even where Flower passes its default."""
    import importlib

    from secfed.flower import supernode

    modules = [importlib.import_module(name) for name in supernode.PULLERS]
    seen: list[dict] = []

    def fake_pull_objects(object_ids, pull_object_fn, **kwargs):
        seen.append(kwargs)
        return {}

    for m in modules:
        monkeypatch.setattr(m, "pull_objects", fake_pull_objects)
    assert supernode.shorten_pull_backoff() == len(modules)
    for m in modules:
        m.pull_objects(["x"], None)  # as the SuperNode and the Grid call it
    modules[0].pull_objects(["x"], None, initial_backoff=1, backoff_cap=10)  # as inflate does
    assert seen == [{"initial_backoff": 0.02, "backoff_cap": 0.5}] * (len(modules) + 1)


# -- server and client logic over Flower records -------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process run of ``job()`` that the Flower runs must reproduce (read only)."""
    ref = FederatedRunner(job(), tmp_path_factory.mktemp("ref") / "run")
    ref.run()
    return ref


def test_flower_runner_equals_in_process_runner_with_secagg_plus_and_dp(tmp_path, reference):
    cfg, ref = job(), reference
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
    exchange = exchange_of(agents)
    fl = FlowerRunner(server_cfg, tmp_path / "fl", exchange)
    fl.run()
    row = fl.dir.read_metrics()[-1]
    assert row["dropped"] == [] and row["contributors"] == [0, 1, 2]
    bound = row["aggregate_error_bound"]  # 0 for the integer schemes: then exact
    diff = np.max(np.abs(fl.state.global_vector - ref.state.global_vector))
    assert diff <= 2 * bound + 1e-7 if bound else diff == 0.0


def test_resume_over_flower_ends_where_an_uninterrupted_run_ends(tmp_path, reference):
    cfg, ref = job(), reference  # secagg+ with DP-SGD: the accountants must survive the restart
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
