"""The server half of a Flower deployment: the in-process runner with remote clients.

:class:`FlowerRunner` is a :class:`~secfed.runner.FederatedRunner` whose clients live on
SuperNodes. Cohort sampling, privacy admission, the strategy, evaluation, metrics and
checkpoints are the runner's own; only local training and the protocol's byte ferry go over
the network. Each protocol stage is one round trip of Flower messages, so SecAgg's four
stages are four exchanges per FL round; a node that misses a stage's deadline is a dropout.

Where the clients hold the decryption key (paillier, ckks) the key holders send the decoded
aggregate back: the server keeps the global model, so it learns the aggregate (never an
individual update), and the run's threat report says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import crypto
import privacy

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..runner import ClientResult, FederatedRunner
from .agent import check_deployable
from .codec import Envelope, envelope_aggregate, vector_bytes
from .exchange import Exchange

log = logging.getLogger(__name__)


class FlowerTransport:
    """A :class:`crypto.Transport` whose clients sit behind SuperNodes (one envelope each)."""

    def __init__(
        self, exchange: Exchange, spec: crypto.RoundSpec, nodes: dict[int, int], *, timeout: float
    ):
        self.exchange, self.spec, self.nodes, self.timeout = exchange, spec, nodes, timeout
        self.clients_of = {node: cid for cid, node in nodes.items()}

    def deliver(self, stage: int, messages: Mapping[int, bytes], *, final: bool) -> crypto.Delivery:
        spec = self.spec
        base = {"job_id": spec.job_id, "round": spec.round, "cohort": list(spec.cohort),
                "dim": spec.dim, "stage": stage, "final": final}  # fmt: skip
        requests = {
            self.nodes[cid]: Envelope("stage", base, msg)
            for cid, msg in messages.items()
            if cid in self.nodes
        }
        got = self.exchange.send(requests, timeout=self.timeout, group=f"{spec.round}/stage{stage}")
        out = crypto.Delivery()
        for node, env in got.items():
            cid = self.clients_of[node]
            out.answered.add(cid)
            out.client_seconds[cid] = float(env.meta.get("seconds", 0.0))
            if final:
                if (agg := envelope_aggregate(env)) is not None:
                    out.aggregates.append(agg)
            elif env.meta.get("reply"):
                out.replies[cid] = env.data
        return out


class FlowerRunner(FederatedRunner):
    """Runs a job's rounds against remote clients reached through an :class:`Exchange`."""

    # Each party loads its own identity from key_dir/identity (secfed keys generate --scheme
    # identity); without one the protocol runs unauthenticated, as it says in its report.
    simulates_all_parties = False

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: str | Path,
        exchange: Exchange,
        *,
        train_timeout: float = 600.0,
        stage_timeout: float = 120.0,
        connect_timeout: float = 120.0,
    ):
        check_deployable(cfg)
        super().__init__(cfg, run_dir)
        if self.protocol.learned_by == "clients":
            key_dir = cfg.aggregation.key_dir
            if not key_dir or not Path(key_dir).is_dir():
                raise ConfigError(
                    f"protocol {cfg.aggregation.protocol!r} over Flower needs the job's keys made "
                    f"beforehand: run `secfed keys generate --scheme {cfg.aggregation.protocol}`, "
                    "give each SuperNode's agent the full key dir (--key-dir) and the server a "
                    "copy holding only the public part (aggregation.key_dir)"
                )
        self.exchange = exchange
        self.train_timeout = train_timeout
        self.stage_timeout = stage_timeout
        self.nodes: dict[int, int] = self.discover(connect_timeout)

    def discover(self, timeout: float) -> dict[int, int]:
        """Map client ids to node ids by asking every node whom it serves."""
        want = self.cfg.federation.clients
        found: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while True:
            nodes = [n for n in self.exchange.node_ids() if n not in found.values()]
            if nodes:
                hello = {n: Envelope("hello") for n in nodes}
                for node, reply in self.exchange.send(hello, timeout=30.0, group="hello").items():
                    cid = int(reply.meta["client"])
                    if cid in found:
                        raise ConfigError(
                            f"nodes {found[cid]} and {node} both serve client {cid}: give every "
                            "SuperNode a distinct partition-id"
                        )
                    found[cid] = node
            if len(found) >= want or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        missing = sorted(set(range(want)) - set(found))
        if missing:
            log.warning("no SuperNode serves clients %s: they count as dropped when sampled",
                        missing)  # fmt: skip
        log.info("clients on nodes: %s", found)
        return found

    # -- the two hooks of the in-process round ------------------------------------------
    def train_cohort(self, round_: int, cohort: list[int]) -> list[ClientResult]:
        """Remote training on the cohort's SuperNodes; clients that fail to train are left out."""
        pending = [ClientResult(cid, np.zeros(0), 1.0, 0, float("nan"), 0.0) for cid in cohort]
        trained = self._train_remote(round_, pending)
        if not trained:
            raise crypto.ProtocolError(
                f"round {round_}: no client of cohort {cohort} trained within "
                f"{self.train_timeout:.0f} s; check the SuperNodes and their agents"
            )
        return trained

    def aggregate(self, round_: int, results: list[ClientResult]) -> crypto.RoundOutcome:
        """The protocol's stages as Flower round trips among the clients that trained."""
        spec = crypto.RoundSpec(
            job_id=self.state.job_id,
            round=round_,
            cohort=tuple(r.client_id for r in results),
            # with adaptive clipping each client appends its (scaled) unclipped bit
            dim=self.dim + (self.user_dp.count_slots if self.user_dp is not None else 0),
        )
        return self._ferry(spec)

    def _train_remote(self, round_: int, results: list[ClientResult]) -> list[ClientResult]:
        vec = vector_bytes(self.state.global_vector)
        user = self.user_dp.state_dict() if self.user_dp is not None else None
        spent = self.sample_dp.ledger.state_dict()["clients"] if self.sample_dp else {}
        requests = {}
        for r in results:
            if r.client_id not in self.nodes:
                log.warning("client %d has no SuperNode: dropped from round %d", r.client_id,
                            round_)  # fmt: skip
                continue
            meta = {"round": round_, "client": r.client_id, "job_id": self.state.job_id,
                    "user_dp": user, "accountant": spent.get(str(r.client_id))}  # fmt: skip
            requests[self.nodes[r.client_id]] = Envelope("train", meta, vec)
        replies = self.exchange.send(requests, timeout=self.train_timeout, group=f"{round_}/train")
        trained = []
        for r in results:
            reply = replies.get(self.nodes.get(r.client_id, -1))
            if reply is None:
                continue
            m = reply.meta
            r.steps, r.loss, r.seconds = int(m["steps"]), float(m["loss"]), float(m["seconds"])
            if self.sample_dp is not None:
                try:
                    self._sync_accountant(round_, r.client_id, m["accountant"], steps=r.steps)
                except crypto.ProtocolError as err:
                    log.error("round %d: client %d's update discarded: %s", round_, r.client_id,
                              err)  # fmt: skip
                    continue
            trained.append(r)
        return trained

    def _sync_accountant(
        self, round_: int, client_id: int, acc_state: dict[str, Any], *, steps: int
    ) -> None:
        """Adopt the client's accountant after its training and record the round's spend."""
        assert self.sample_dp is not None
        ledger = self.sample_dp.ledger
        before = ledger.accountant(client_id).steps
        reported = privacy.ClientAccountant.from_state_dict(acc_state).steps
        if reported < before + steps:
            raise crypto.ProtocolError(
                f"client {client_id} reports {reported} DP steps in all, fewer than the {before} "
                f"accounted before plus the {steps} it just took: its accountant lost history"
            )
        state = ledger.state_dict()
        state["clients"][str(client_id)] = acc_state
        state["recorded_steps"].setdefault(str(client_id), 0)
        ledger.load_state_dict(state)
        ledger.record(client_id, round=round_)

    def _ferry(self, spec: crypto.RoundSpec) -> crypto.RoundOutcome:
        """The crypto stage loop over Flower: one round trip of envelopes per stage."""
        transport = FlowerTransport(self.exchange, spec, self.nodes, timeout=self.stage_timeout)
        return crypto.drive_round(self.protocol.server_session(spec), transport)

    def threat_report(self) -> dict[str, Any]:
        """The runner's report, plus what the Flower deployment adds."""
        tm = super().threat_report()
        tm["deployment"] = "flower"
        if self.protocol.learned_by == "clients":
            tm["deployment_note"] = (
                "key holders return the decoded aggregate to the server, which keeps the global "
                "model: the server learns the aggregate, never an individual update"
            )
        return tm
