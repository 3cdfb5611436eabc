"""Round trips of secfed envelopes with a set of nodes, with a deadline.

:class:`GridExchange` sends over a Flower ``Grid`` (the SuperLink); :class:`LocalExchange`
calls node handlers in-process (tests, and the same server logic without a SuperLink). A node
that does not answer before the deadline, or answers with an error, is simply absent from
the replies: the protocol treats it as a dropout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from .codec import MESSAGE_TYPE, Envelope, EnvelopeError, from_record, to_record

if TYPE_CHECKING:
    from flwr.serverapp import Grid

log = logging.getLogger(__name__)

#: How often the server asks the SuperLink for replies (a local call on the SuperLink host).
POLL_SECONDS = 0.02


class Exchange(Protocol):
    """Sends one envelope per node and returns the answers received in time."""

    def node_ids(self) -> list[int]: ...

    def send(
        self, requests: Mapping[int, Envelope], *, timeout: float, group: str
    ) -> dict[int, Envelope]: ...


def _accept(node: int, reply: Envelope) -> bool:
    if reply.kind == "error":
        log.warning("node %d answered with an error (treated as dropped): %s", node,
                    reply.meta.get("error"))  # fmt: skip
        return False
    return True


class GridExchange:
    """Envelopes over a Flower Grid (Message API), polled until all answer or time runs out."""

    def __init__(self, grid: Grid):
        self.grid = grid

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def send(
        self, requests: Mapping[int, Envelope], *, timeout: float, group: str
    ) -> dict[int, Envelope]:
        from flwr.app import Message

        messages = [
            Message(to_record(env), node, MESSAGE_TYPE, group_id=group)
            for node, env in requests.items()
        ]
        pending = {
            mid: msg.metadata.dst_node_id
            for mid, msg in zip(self.grid.push_messages(messages), messages, strict=True)
        }
        replies: dict[int, Envelope] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for msg in self.grid.pull_messages(list(pending)):
                node = pending.pop(msg.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                if msg.has_error():
                    log.warning("node %d failed (treated as dropped): %s", node,
                                msg.error.reason)  # fmt: skip
                    continue
                try:
                    reply = from_record(msg.content)
                except EnvelopeError as err:
                    log.warning("node %d sent a foreign message (dropped): %s", node, err)
                    continue
                if _accept(node, reply):
                    replies[node] = reply
            if pending:
                time.sleep(POLL_SECONDS)
        for node in pending.values():
            log.warning("node %d gave no answer within %.0f s (treated as dropped)", node, timeout)
        return replies


class LocalExchange:
    """Envelopes to in-process handlers; ``silent`` nodes never answer (simulated dropouts)."""

    def __init__(self, handlers: Mapping[int, Callable[[Envelope], Envelope]]):
        self.handlers = dict(handlers)
        self.silent: set[int] = set()
        self.calls: list[tuple[str, str, int]] = []

    def node_ids(self) -> list[int]:
        return sorted(self.handlers)

    def send(
        self, requests: Mapping[int, Envelope], *, timeout: float, group: str
    ) -> dict[int, Envelope]:
        replies: dict[int, Envelope] = {}
        for node, env in requests.items():
            self.calls.append((group, env.kind, node))
            if node in self.silent:
                continue
            # Through the Flower record encoding, as on the wire.
            reply = from_record(to_record(self.handlers[node](from_record(to_record(env)))))
            if _accept(node, reply):
                replies[node] = reply
        return replies
