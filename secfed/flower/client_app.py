"""The Flower ClientApp: relays each secfed envelope to the SuperNode's node agent.

The SuperNode's node config names the agent (``agent-dir``, the directory holding its socket
and authentication key); see :mod:`secfed.flower.agent` for why training and protocol state
live there. ``partition-id`` and ``num-partitions`` are checked against the agent's answer.
This module imports no torch, so a message costs a process start and one socket round trip.
With ``flower-supernode --isolation process`` no ClientApp process is started at all: the
agent claims the node's tasks itself and answers them through :func:`answer`
(:mod:`secfed.flower.executor`).
Under Flower's simulation runtime (run config ``simulation = true``, no ``agent-dir``) the
agent lives in the simulation's worker process instead (:func:`in_process_agent`).
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from .codec import (
    AGENT_AUTHKEY,
    AGENT_SOCKET,
    Envelope,
    EnvelopeError,
    from_frame,
    from_record,
    to_frame,
    to_record,
)

AGENT_DIR = "agent-dir"

app = ClientApp()


def call_agent(agent_dir: Path, request: Envelope) -> Envelope:
    """One authenticated request/reply with the agent listening in ``agent_dir``."""
    sock, key = agent_dir / AGENT_SOCKET, agent_dir / AGENT_AUTHKEY
    if not sock.exists() or not key.exists():
        raise EnvelopeError(
            f"no secfed node agent in {agent_dir}: start `python -m secfed.flower.agent JOB "
            f"--client-id N --agent-dir {agent_dir}` beside this SuperNode"
        )
    with Client(str(sock), family="AF_UNIX", authkey=key.read_bytes()) as conn:
        conn.send_bytes(to_frame(request))
        return from_frame(conn.recv_bytes())


#: Simulation runtime: the agents of this process, one per (run, partition-id).
_IN_PROCESS: dict[tuple[int, int], Any] = {}


def in_process_agent(context: Context) -> Any:
    """The node agent living in this process (Flower's simulation runtime, no agent-dir).

    Flower's simulation engine runs ClientApps in long-lived Ray actors, so the agent that a
    deployment keeps beside the SuperNode lives in the actor instead; the job comes from the
    run config. Every virtual node's messages must reach the same actor: run the simulation
    with one actor (``options.backend.client-resources.num-cpus`` = the CPUs Ray is given).
    """
    from ..config import load_config
    from .agent import NodeAgent

    cid = int(context.node_config["partition-id"])
    key = (int(context.run_id), cid)
    if key not in _IN_PROCESS:
        job = context.run_config.get("job")
        if not isinstance(job, str) or not job:
            raise EnvelopeError("the run config lacks 'job' (the experiment file's path)")
        key_dir = str(context.run_config.get("key-dir") or "")
        _IN_PROCESS[key] = NodeAgent(
            load_config(job), client_id=cid, key_dir=Path(key_dir) if key_dir else None,
            node_config=dict(context.node_config),
        )  # fmt: skip
    return _IN_PROCESS[key]


def handle_message(message: Message, context: Context) -> Message:
    """Relay ``message`` to the agent named in the node config and wrap its answer."""
    agent_dir = context.node_config.get(AGENT_DIR)
    if (
        agent_dir is None
        and "partition-id" in context.node_config
        and context.run_config.get("simulation")
    ):
        return answer(message, context, in_process_agent(context).handle)
    if not isinstance(agent_dir, str):
        raise EnvelopeError(
            f"the SuperNode's node config lacks {AGENT_DIR!r}: start it with --node-config "
            f"'partition-id=0 num-partitions=3 {AGENT_DIR}=\"/path/to/agent\"'"
        )
    return answer(message, context, lambda env: call_agent(Path(agent_dir), env))


def answer(message: Message, context: Context, ask: Callable[[Envelope], Envelope]) -> Message:
    """The reply to ``message`` from an agent reached through ``ask``.

    A ``hello`` answer is checked against the node config's ``partition-id``: a SuperNode
    and an agent started with different ids would otherwise train the wrong client.
    """
    reply = ask(from_record(message.content))
    partition = context.node_config.get("partition-id")
    if reply.kind == "hello" and partition is not None and int(partition) != reply.meta["client"]:
        reply = Envelope(
            "error",
            {"error": f"node config partition-id={partition} but its agent serves client "
                      f"{reply.meta['client']}: start them with the same id"},
        )  # fmt: skip
    return Message(to_record(reply), reply_to=message)


@app.query()
def query(message: Message, context: Context) -> Message:
    """Flower entry point for every secfed message."""
    return handle_message(message, context)
