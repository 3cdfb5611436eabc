"""Flower with each organisation's own file: the node reads it from its node config, the server
learns ids, counts and label names only; federated or server-side evaluation; refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("flwr")

from secfed.errors import ConfigError
from secfed.flower import LocalExchange
from secfed.flower.agent import NodeAgent
from secfed.flower.server import FlowerRunner
from tests.secfed.flower_helpers import exchange_of, job, org_agents, write_org_files


def test_nodes_train_on_their_own_files_and_the_server_sees_counts_only(tmp_path):
    files = write_org_files(tmp_path)
    cfg = job("secagg", privacy={}, rounds=1)
    agents = org_agents(cfg, files, **{"test-fraction": 0.2})
    exchange = exchange_of(agents)
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
    (tmp_path / "x").mkdir()
    eval_file = write_org_files(tmp_path / "x", sizes=(40,), string_labels=True)[0]
    cfg = job("plain", privacy={}, rounds=1)
    agents = org_agents(cfg, files)
    exchange = exchange_of(agents)
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
        FlowerRunner(cfg, tmp_path / "fl", exchange_of(agents))
