"""The client half of a Flower deployment: one node agent per SuperNode.

Flower 1.41 runs every ClientApp message in a fresh process, so nothing survives between two
messages but Flower's ``Context``. A secure-aggregation client keeps secrets between stages
(SecAgg key pairs and mask seeds) and a DP client keeps its accountant for the whole job;
neither belongs in a serialised context, and rebuilding the model per message would cost
seconds. The agent is the long-lived process that holds them: it builds the job's parts from
the job file (same seed, same model and data on every machine), trains with the in-process
runner's client logic, and answers protocol stages. The ClientApp only relays envelopes to it
over a Unix socket (``agent-dir`` in the SuperNode's node config).

Run one per SuperNode: ``python -m secfed.flower.agent JOB.toml --node-config '...'
--agent-dir DIR [--runtime-api-address HOST:PORT] [--key-dir KEYS]``. With
``--runtime-api-address`` (the SuperNode started with ``--isolation process --port PORT``) the
agent also claims and answers the node's ClientApp tasks itself, so no ClientApp process is
started per message (:mod:`secfed.flower.executor`).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

import numpy as np
import torch

import crypto
import models
import privacy

from ..assembly import JobParts, build_parts
from ..config import ExperimentConfig, load_config
from ..data import ClientShard
from ..errors import ConfigError, SecfedError
from ..job_dp import SampleLevelDP
from ..runner import ClientResult, FederatedRunner
from .codec import (
    AGENT_AUTHKEY,
    AGENT_SOCKET,
    Envelope,
    EnvelopeError,
    aggregate_envelope,
    bytes_vector,
    from_frame,
    to_frame,
)
from .executor import run_in_thread, start_executor
from .nodedata import LOCAL_KEY, NodeData, load_node_data, shared_tokenizer_texts
from .policy import check_deployable

log = logging.getLogger(__name__)

READY = "ready"


class _AgentRunner(FederatedRunner):
    """The client's runner: its own file's data, or its partition of the job's dataset."""

    def __init__(
        self, cfg: ExperimentConfig, run_dir: str, client_id: int, local: NodeData | None,
        node_config: dict[str, Any],
    ):  # fmt: skip
        self._client_id, self._local, self._node_config = client_id, local, node_config
        super().__init__(cfg, run_dir)

    def build_parts(self, cfg: ExperimentConfig) -> JobParts:
        local = self._local
        if local is None:
            return build_parts(cfg)
        empty = np.zeros(0, dtype=int)
        shards = [ClientShard(c, empty, empty) for c in range(cfg.federation.clients)]
        shards[self._client_id] = ClientShard(self._client_id, local.shard.train, local.shard.test)
        return build_parts(
            cfg, data=local.data, shards=shards,
            num_labels=int(self._node_config.get("num-labels", 0)) or max(local.data.num_labels, 2),
            tokenizer_texts=shared_tokenizer_texts(cfg),
        )  # fmt: skip


class NodeAgent:
    """Trains one client and answers its protocol stages (state lives across messages)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        client_id: int,
        key_dir: Path | None = None,
        node_config: dict[str, Any] | None = None,
    ):
        check_deployable(cfg)
        if not 0 <= client_id < cfg.federation.clients:
            raise ConfigError(
                f"client id {client_id} is outside the job's {cfg.federation.clients} clients: "
                f"set partition-id to 0..{cfg.federation.clients - 1}"
            )
        self.client_id = client_id
        self.key_dir = key_dir
        node_config = dict(node_config or {})
        self.local = (
            load_node_data(cfg, node_config, seed=cfg.seed) if LOCAL_KEY in node_config else None
        )
        self._scratch = tempfile.TemporaryDirectory(prefix="secfed-agent-")
        self.runner = _AgentRunner(cfg, self._scratch.name, client_id, self.local, node_config)
        if self.local is not None:
            self.info: dict[str, Any] = self.local.info()
        else:
            self.info = {
                "data": "partition",
                "num_examples": len(self.runner.client_data(client_id)),
            }
        self.info["dim"] = self.runner.dim
        if cfg.privacy.sample.enabled:
            self.runner.sample_dp = SampleLevelDP(cfg, {client_id: self.info["num_examples"]})
        self.job_id: str | None = None
        self.result: tuple[str, int, ClientResult] | None = None
        self.session: tuple[bytes, crypto.ClientSession] | None = None
        self._lock = threading.Lock()  # the socket relay and the task executor share us

    def close(self) -> None:
        """Remove the agent's scratch directory."""
        self._scratch.cleanup()

    def handle(self, env: Envelope) -> Envelope:
        """Answer one request; domain failures become an ``error`` envelope."""
        with self._lock:
            return self._handle(env)

    def _handle(self, env: Envelope) -> Envelope:
        try:
            if env.kind == "hello":
                return Envelope("hello", {"client": self.client_id, **self.info})
            if env.kind == "train":
                return self._train(env)
            if env.kind == "evaluate":
                return self._evaluate(env)
            if env.kind == "stage":
                return self._stage(env)
            raise EnvelopeError(f"an agent does not answer {env.kind!r} envelopes")
        except Exception as err:  # reported to the server, which treats us as dropped
            log.exception("client %d failed on a %s request", self.client_id, env.kind)
            return Envelope(
                "error", {"client": self.client_id, "error": f"{type(err).__name__}: {err}"}
            )

    def _adopt_job(self, job_id: str) -> None:
        if job_id != self.job_id:
            self.runner.protocol.setup(job_id=job_id, key_dir=self.key_dir)
            self.job_id = job_id
            self.runner.state.job_id = job_id

    def _train(self, env: Envelope) -> Envelope:
        """Train from the global adapter; with a fused stage 0, answer it in the same reply."""
        m = env.meta
        round_, cid = int(m["round"]), int(m["client"])
        if cid != self.client_id:
            raise EnvelopeError(f"train request for client {cid} reached client {self.client_id}")
        self._adopt_job(str(m["job_id"]))
        runner = self.runner
        split = int(m.get("stage_len", 0))
        stage_msg, vec = env.data[:split], env.data[split:]
        runner.state.global_vector = bytes_vector(vec, dim=runner.dim)
        if m.get("weight_scale"):  # the largest client's example count (FedAvg weight scale)
            runner.__dict__["max_client_examples"] = int(m["weight_scale"])
        if runner.user_dp is not None and m.get("user_dp") is not None:
            runner.user_dp.load_state_dict(m["user_dp"])
        dp = runner.sample_dp
        if dp is not None:
            self._adopt_spend(m.get("accountant"))
            sched = dp.schedules[cid]
            dp.ledger.check(cid, noise_multiplier=dp.noise[cid], sample_rate=sched.sample_rate,
                            steps=sched.steps)  # fmt: skip
        result = runner.train_client(round_, cid)
        self.result = (str(m["job_id"]), round_, result)
        meta: dict[str, Any] = {
            "client": cid,
            "steps": result.steps,
            "loss": result.loss,
            "seconds": result.seconds,
        }
        if dp is not None:
            meta["accountant"] = dp.ledger.state_dict()["clients"][str(cid)]
        if "stage" not in m:
            return Envelope("train", meta)
        reply = self._stage(Envelope("stage", m["stage"], stage_msg))
        return Envelope("train", {**meta, "stage": reply.meta}, reply.data)

    def _evaluate(self, env: Envelope) -> Envelope:
        """Held-out loss and accuracy sums of the global adapter on this node's data."""
        runner = self.runner
        vector = bytes_vector(env.data, dim=runner.dim)
        models.load_adapter_vector(runner.parts.model, vector.astype(np.float32))
        n = len(runner.parts.test_set)
        metrics = runner.evaluate() if n else {"loss": 0.0, "accuracy": 0.0}
        return Envelope(
            "evaluate",
            {"client": self.client_id, "n": n, "loss_sum": metrics["loss"] * n,
             "correct": round(metrics["accuracy"] * n)},
        )  # fmt: skip

    def _adopt_spend(self, acc_state: dict[str, Any] | None) -> None:
        """Take the job's record of our spend where it is ahead of ours (agent restarted)."""
        dp = self.runner.sample_dp
        if dp is None or acc_state is None:
            return
        cid = str(self.client_id)
        if (
            privacy.ClientAccountant.from_state_dict(acc_state).steps
            > dp.ledger.accountant(cid).steps
        ):
            log.warning("client %s adopts the job's privacy record (this agent restarted)", cid)
            state = dp.ledger.state_dict()
            state["clients"][cid] = acc_state
            state["recorded_steps"][cid] = privacy.ClientAccountant.from_state_dict(acc_state).steps
            dp.ledger.load_state_dict(state)

    def _stage(self, env: Envelope) -> Envelope:
        m = env.meta
        spec = crypto.RoundSpec(
            job_id=str(m["job_id"]),
            round=int(m["round"]),
            cohort=tuple(int(c) for c in m["cohort"]),
            dim=int(m["dim"]),
        )
        if int(m["stage"]) == 0:
            self.session = (spec.session_id, self._open_session(spec))
        if self.session is None or self.session[0] != spec.session_id:
            raise EnvelopeError(
                f"stage {m['stage']} of round {spec.round} arrived without its stage 0: this "
                "client holds no session for it"
            )
        session = self.session[1]
        t0 = time.perf_counter()
        reply = session.handle(env.data)
        seconds = time.perf_counter() - t0
        if m.get("final"):
            agg = session.aggregate()
            self.session = None
            out = aggregate_envelope(agg) if agg is not None else Envelope("stage")
            return Envelope("stage", {**out.meta, "seconds": seconds}, out.data)
        return Envelope("stage", {"reply": reply is not None, "seconds": seconds}, reply or b"")

    def _open_session(self, spec: crypto.RoundSpec) -> crypto.ClientSession:
        if self.result is None or self.result[:2] != (spec.job_id, spec.round):
            raise EnvelopeError(
                f"round {spec.round} asks for client {self.client_id}'s update before it trained"
            )
        result = self.result[2]
        vector = result.payload
        runner = self.runner
        if runner.user_dp is not None:
            rng = runner.noise_rng("client", spec.round, self.client_id)
            vector = vector + runner.user_dp.client_noise(
                spec.dim, cohort=len(spec.cohort), rng=rng
            )
        return runner.protocol.client_session(spec, self.client_id, vector, result.weight)


def serve(agent: NodeAgent, agent_dir: Path) -> None:
    """Answer relayed envelopes on ``agent_dir/agent.sock`` until terminated."""
    agent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(agent_dir, 0o700)
    authkey = secrets.token_bytes(32)
    key_path = agent_dir / AGENT_AUTHKEY
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(authkey)
    sock = agent_dir / AGENT_SOCKET
    sock.unlink(missing_ok=True)
    with Listener(str(sock), family="AF_UNIX", authkey=authkey) as listener:
        (agent_dir / READY).write_text(str(os.getpid()))
        log.info("client %d agent listening on %s", agent.client_id, sock)
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError) as err:  # failed handshake: keep serving
                log.warning("rejected a connection: %s", err)
                continue
            with conn:
                try:
                    request = from_frame(conn.recv_bytes())
                except (EnvelopeError, EOFError, OSError) as err:
                    log.warning("dropped a malformed request: %s", err)
                    continue
                conn.send_bytes(to_frame(agent.handle(request)))


def parse_node_config(text: str | None) -> dict[str, Any]:
    """A ``--node-config`` string, parsed as ``flower-supernode`` parses it."""
    if not text:
        return {}
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args([text]))
    except Exception as err:  # Flower raises ValueError or TOML errors
        raise ConfigError(f"cannot parse --node-config {text!r}: {err}") from err


def main(argv: list[str] | None = None) -> None:
    """``python -m secfed.flower.agent``: build the client and serve its SuperNode."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("job", type=Path, help="experiment file (the same on every machine)")
    ap.add_argument(
        "--node-config",
        default=None,
        help="the SuperNode's --node-config string (partition-id, data-path, ...)",
    )
    ap.add_argument("--client-id", type=int, default=None, help="default: partition-id")
    ap.add_argument("--agent-dir", type=Path, required=True, help="socket directory")
    ap.add_argument("--key-dir", type=Path, default=None, help="client keys (paillier/ckks)")
    ap.add_argument(
        "--runtime-api-address",
        default=None,
        metavar="HOST:PORT",
        help="the SuperNode's Runtime API (flower-supernode --isolation process --port PORT): "
        "this agent then runs the node's ClientApp tasks itself",
    )
    ap.add_argument(
        "--superexec-auth-secret-file",
        default=None,
        help="the secret file given to flower-supernode (only this agent may claim its tasks)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(levelname)s %(message)s")
    # SIGTERM unwinds like Ctrl-C, so the scratch directory and socket are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    torch.set_num_threads(1)
    try:
        node_config = parse_node_config(args.node_config)
        cid = args.client_id if args.client_id is not None else node_config.get("partition-id")
        if cid is None:
            raise ConfigError("give --client-id or partition-id in --node-config")
        agent = NodeAgent(load_config(args.job), client_id=int(cid), key_dir=args.key_dir,
                          node_config=node_config)  # fmt: skip
    except SecfedError as err:
        log.error("%s", err)
        sys.exit(2)
    stop = threading.Event()
    executor = None
    try:
        if args.runtime_api_address:
            try:
                executor = start_executor(agent.handle, args.runtime_api_address,
                                          args.superexec_auth_secret_file, stop)  # fmt: skip
                log.info("client %d answers the ClientApp tasks of the SuperNode at %s",
                         agent.client_id, args.runtime_api_address)  # fmt: skip
            except (OSError, ValueError) as err:
                log.error("cannot serve the SuperNode's tasks: %s", err)
                sys.exit(2)
        run_in_thread("relay", lambda: serve(agent, args.agent_dir), stop)
        # The main thread only waits: a signal delivered to any thread (torch's, Flower's)
        # runs its handler here within half a second, so SIGTERM always ends the agent.
        while not stop.wait(0.5):
            pass
        sys.exit(1)  # a serving thread failed (logged)
    finally:
        stop.set()
        if executor is not None:
            executor.close()
        agent.close()
        for name in (AGENT_SOCKET, AGENT_AUTHKEY, READY):
            (args.agent_dir / name).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
