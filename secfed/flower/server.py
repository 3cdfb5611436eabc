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

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import crypto
import privacy

from ..assembly import JobParts, build_parts
from ..checkpoint import load_checkpoint
from ..config import ExperimentConfig, load_config
from ..data import ClientShard, TextDataset
from ..errors import ConfigError, ResumeError
from ..job_dp import SampleLevelDP
from ..rundir import RunDir
from ..runner import ClientResult, FederatedRunner
from .codec import Envelope, envelope_aggregate, vector_bytes
from .exchange import Exchange
from .nodedata import load_eval_file, shared_tokenizer_texts
from .policy import check_deployable

log = logging.getLogger(__name__)


class _Started(crypto.ServerSession):
    """A server session whose first stage went out with the training requests."""

    def __init__(self, inner: crypto.ServerSession, first: dict[int, bytes]):
        super().__init__(inner.spec)
        self.inner, self.first = inner, first
        self.refused = inner.refused  # the stage loop reads who the session refused

    def start(self) -> dict[int, bytes]:
        return self.first

    def advance(self, replies: Mapping[int, bytes]) -> crypto.ServerStep:
        return self.inner.advance(replies)

    def receive(self, client: int, reply: bytes) -> None:
        self.inner.receive(client, reply)

    def close_stage(self) -> crypto.ServerStep:
        return self.inner.close_stage()

    def aggregate(self) -> crypto.Aggregate | None:
        return self.inner.aggregate()


class FlowerTransport:
    """A :class:`crypto.Transport` whose clients sit behind SuperNodes (one envelope each).

    ``first`` is stage 0's delivery when it already travelled with the training requests.
    """

    def __init__(
        self, exchange: Exchange, spec: crypto.RoundSpec, nodes: dict[int, int], *,
        timeout: float, first: crypto.Delivery | None = None,
    ):  # fmt: skip
        self.exchange, self.spec, self.nodes, self.timeout = exchange, spec, nodes, timeout
        self.clients_of = {node: cid for cid, node in nodes.items()}
        self.first = first

    def meta(self, stage: int, *, final: bool) -> dict[str, Any]:
        spec = self.spec
        return {"job_id": spec.job_id, "round": spec.round, "cohort": list(spec.cohort),
                "dim": spec.dim, "stage": stage, "final": final}  # fmt: skip

    def deliver(self, stage: int, messages: Mapping[int, bytes], *, final: bool) -> crypto.Delivery:
        if stage == 0 and self.first is not None:
            return self.first
        base = self.meta(stage, final=final)
        requests = {
            self.nodes[cid]: Envelope("stage", base, msg)
            for cid, msg in messages.items()
            if cid in self.nodes
        }
        got = self.exchange.send(
            requests, timeout=self.timeout, group=f"{self.spec.round}/stage{stage}"
        )
        out = crypto.Delivery()
        for node, env in got.items():
            read_stage(out, self.clients_of[node], env.meta, env.data, final=final)
        return out


def read_stage(
    out: crypto.Delivery, cid: int, meta: Mapping[str, Any], data: bytes, *, final: bool
) -> None:
    """Add one client's answer to a stage to ``out``."""
    out.answered.add(cid)
    out.client_seconds[cid] = float(meta.get("seconds", 0.0))
    if final:
        if (agg := envelope_aggregate(Envelope("stage", dict(meta), data))) is not None:
            out.aggregates.append(agg)
    elif meta.get("reply"):
        out.replies[cid] = data


def discover(
    exchange: Exchange, clients: int, timeout: float
) -> tuple[dict[int, int], dict[int, dict[str, Any]]]:
    """Client id -> node id, and what each node reported, asking every node whom it serves.

    Refuses (before round 1) a job whose clients are not each served by exactly one node.
    """
    found: dict[int, int] = {}
    infos: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while True:
        nodes = [n for n in exchange.node_ids() if n not in found.values()]
        if nodes:
            hello = {n: Envelope("hello") for n in nodes}
            for node, reply in exchange.send(hello, timeout=30.0, group="hello").items():
                cid = int(reply.meta["client"])
                if cid in found:
                    raise ConfigError(
                        f"nodes {found[cid]} and {node} both serve client {cid}: give every "
                        "SuperNode a distinct partition-id"
                    )
                found[cid], infos[cid] = node, dict(reply.meta)
        if len(found) >= clients or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    missing = sorted(set(range(clients)) - set(found))
    if missing:
        raise ConfigError(
            f"the job has {clients} clients but after {timeout:.0f} s no SuperNode serves "
            f"client(s) {missing} (found {sorted(found)}): start a SuperNode and agent with "
            f"partition-id={missing[0]}, or set federation.clients = {len(found)}"
        )
    log.info("clients on nodes: %s", found)
    return found, infos


class FlowerRunner(FederatedRunner):
    """Runs a job's rounds against remote clients reached through an :class:`Exchange`.

    Before round 1 it asks every SuperNode whom it serves and refuses a cohort that does not
    match the job (a missing client, two nodes for one client, nodes with different models or
    label sets). Each round's training requests carry the protocol's first stage, so a round
    of ``plain`` is one round trip and a client that fails to train is a stage-0 dropout.
    """

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
        eval_path: str | None = None,
    ):
        check_deployable(cfg)
        if crypto.get_protocol(cfg.aggregation.protocol).learned_by == "clients":
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
        self.eval_path = eval_path
        self.nodes, self.infos = discover(exchange, cfg.federation.clients, connect_timeout)
        modes = {info.get("data", "partition") for info in self.infos.values()}
        if len(modes) > 1:
            raise ConfigError(
                "some SuperNodes name their own data-path and others do not: give every node "
                "its own file, or none (then each takes its partition of the job's dataset)"
            )
        self.local_data = modes == {"local"}
        if eval_path and not self.local_data:
            raise ConfigError("eval-path is for nodes with their own files; these use partitions")
        self._check_labels()
        super().__init__(cfg, run_dir)
        dims = {cid: int(info["dim"]) for cid, info in self.infos.items()}
        if set(dims.values()) != {self.dim}:
            labels = {cid: info.get("num_labels") for cid, info in self.infos.items()}
            raise ConfigError(
                f"the SuperNodes built adapters of sizes {dims} and the server {self.dim}: the "
                "job files differ, or the nodes' files hold different numbers of label classes "
                f"({labels}); use one job file and add num-labels=K to every node config"
            )
        self._first: tuple[crypto.ServerSession, dict[int, bytes], crypto.Delivery] | None = None

    @classmethod
    def resume_over(cls, run_dir: str | Path, exchange: Exchange, **kwargs: Any) -> FlowerRunner:
        """Reopen a run directory at its last complete checkpoint, clients over Flower."""
        rd = RunDir(run_dir)
        if not rd.config.exists():
            raise ResumeError(f"{run_dir} has no config.toml: it is not a secfed run directory")
        latest = rd.latest_checkpoint()
        if latest is None:
            raise ResumeError(f"{run_dir} has no complete checkpoint; start it again")
        runner = cls(load_config(rd.config), run_dir, exchange, **kwargs)
        runner._restore(load_checkpoint(latest))
        return runner

    def _check_labels(self) -> None:
        names = {cid: info.get("label_names") for cid, info in self.infos.items()}
        if len({json.dumps(v) for v in names.values()}) > 1:
            raise ConfigError(
                f"the nodes' files name their labels differently ({names}): label i must mean "
                "the same class everywhere; use integer labels 0..K-1 or the same set of names"
            )

    # -- what the server builds: no client rows when the nodes hold their own files --------
    def build_parts(self, cfg: ExperimentConfig) -> JobParts:
        if not self.local_data:
            return build_parts(cfg)
        num_labels = max([2] + [int(i.get("num_labels") or 0) for i in self.infos.values()])
        if self.eval_path:
            data, names = load_eval_file(cfg, self.eval_path)
            node_names = next(iter(self.infos.values())).get("label_names")
            if names != node_names:
                raise ConfigError(
                    f"eval-path {self.eval_path} names labels {names}, the nodes {node_names}"
                )
            shards = [ClientShard(0, np.zeros(0, dtype=int), np.arange(len(data.texts)))]
        else:  # federated evaluation: the server holds no examples (one blank text to encode)
            data, shards = TextDataset([""], [0]), []
        return build_parts(cfg, data=data, shards=shards, num_labels=num_labels,
                           tokenizer_texts=shared_tokenizer_texts(cfg))  # fmt: skip

    def setup_sample_dp(self) -> None:
        """DP-SGD ledger from the example counts the nodes reported (never their rows)."""
        if self.cfg.privacy.sample.enabled:
            sizes = {cid: int(info["num_examples"]) for cid, info in self.infos.items()}
            self.sample_dp = SampleLevelDP(self.cfg, sizes)

    def evaluate(self) -> dict[str, float]:
        """Server-side held-out set, or federated evaluation summed over every node."""
        if not self.local_data or self.eval_path:
            return super().evaluate()
        vec = vector_bytes(self.state.global_vector)
        requests = {node: Envelope("evaluate", {}, vec) for node in self.nodes.values()}
        got = self.exchange.send(requests, timeout=self.stage_timeout,
                                 group=f"{self.state.round}/evaluate")  # fmt: skip
        n = sum(int(r.meta["n"]) for r in got.values())
        if n == 0:
            log.warning("no node answered the evaluation: accuracy and loss are NaN this round")
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {
            "loss": sum(float(r.meta["loss_sum"]) for r in got.values()) / n,
            "accuracy": sum(int(r.meta["correct"]) for r in got.values()) / n,
            "evaluated_on": n,
        }

    # -- the two hooks of the in-process round ------------------------------------------
    def _spec(self, round_: int, cohort: list[int]) -> crypto.RoundSpec:
        return crypto.RoundSpec(
            job_id=self.state.job_id,
            round=round_,
            cohort=tuple(cohort),
            # with adaptive clipping each client appends its (scaled) unclipped bit
            dim=self.dim + (self.user_dp.count_slots if self.user_dp is not None else 0),
        )

    def train_cohort(self, round_: int, cohort: list[int]) -> list[ClientResult]:
        """Remote training with the protocol's first stage; clients that fail are dropouts."""
        spec = self._spec(round_, cohort)
        server = self.protocol.server_session(spec)
        first = server.start()
        transport = FlowerTransport(self.exchange, spec, self.nodes, timeout=self.stage_timeout)
        stage_meta = transport.meta(0, final=False)
        vec = vector_bytes(self.state.global_vector)
        user = self.user_dp.state_dict() if self.user_dp is not None else None
        spent = self.sample_dp.ledger.state_dict()["clients"] if self.sample_dp else {}
        scale = max(int(info["num_examples"]) for info in self.infos.values())
        requests = {}
        for cid in cohort:
            meta = {"round": round_, "client": cid, "job_id": self.state.job_id,
                    "user_dp": user, "accountant": spent.get(str(cid)), "weight_scale": scale,
                    "stage": stage_meta, "stage_len": len(first.get(cid, b""))}  # fmt: skip
            requests[self.nodes[cid]] = Envelope("train", meta, first.get(cid, b"") + vec)
        replies = self.exchange.send(requests, timeout=self.train_timeout, group=f"{round_}/train")
        trained, delivery = [], crypto.Delivery()
        for cid in cohort:
            reply = replies.get(self.nodes[cid])
            if reply is None:
                continue
            m = reply.meta
            r = ClientResult(cid, np.zeros(0), 1.0, int(m["steps"]), float(m["loss"]),
                             float(m["seconds"]))  # fmt: skip
            if self.sample_dp is not None:
                try:
                    self._sync_accountant(round_, cid, m["accountant"], steps=r.steps)
                except crypto.ProtocolError as err:
                    log.error("round %d: client %d's update discarded: %s", round_, cid, err)
                    continue
            trained.append(r)
            read_stage(delivery, cid, m["stage"], reply.data, final=False)
        if not trained:
            raise crypto.ProtocolError(
                f"round {round_}: no client of cohort {cohort} trained within "
                f"{self.train_timeout:.0f} s; check the SuperNodes and their agents"
            )
        self._first = (server, first, delivery)
        return trained

    def aggregate(self, round_: int, results: list[ClientResult]) -> crypto.RoundOutcome:
        """The protocol's remaining stages as Flower round trips (stage 0 already done)."""
        assert self._first is not None, "train_cohort runs before aggregate"
        server, first, delivery = self._first
        self._first = None
        self.clipped_coordinates = None  # counted by each node's session, not reported here
        transport = FlowerTransport(
            self.exchange, server.spec, self.nodes, timeout=self.stage_timeout, first=delivery
        )
        return crypto.drive_round(_Started(server, first), transport)

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

    def threat_report(self) -> dict[str, Any]:
        """The runner's report, plus what the Flower deployment adds."""
        tm = super().threat_report()
        tm["deployment"] = "flower"
        if self.local_data:
            tm["deployment_data"] = (
                "each organisation's file stays on its node; the server learns client ids, "
                "example counts, label names"
                + (
                    ""
                    if self.eval_path
                    else " and, per round, each node's held-out loss and "
                    "accuracy sums (federated evaluation)"
                )
            )
        if self.protocol.learned_by == "clients":
            tm["deployment_note"] = (
                "key holders return the decoded aggregate to the server, which keeps the global "
                "model: the server learns the aggregate, never an individual update"
            )
        return tm
