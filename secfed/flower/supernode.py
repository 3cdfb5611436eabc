"""``flower-supernode`` with a shorter idle poll: ``python -m secfed.flower.supernode ARGS``.

Flower 1.41's SuperNode asks the SuperLink for a message, and when there is none sleeps a
fixed 3 s before asking again (``flwr.supernode.start_client_internal``); it then waits for
its ClientApp's reply in 0.5 s steps. A secfed round is several short round trips (training,
then each protocol stage), so every trip waited on average 1.5 s, and for the slowest of N
nodes about ``3 N / (N + 1)`` s, before the node even saw its message: most of the Flower
job's overhead over the in-process job. This entry point runs the unchanged SuperNode with
those sleeps capped at ``SECFED_SUPERNODE_POLL`` seconds (default 0.1) and the SuperExec's
task poll (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, a documented Flower setting) at the same
value. Every ``flower-supernode`` argument works as is. Each idle node then sends the
SuperLink about ten small requests a second: fine for tens of organisations; raise the value
for many nodes.

Flower also gives a freshly started ClientApp process 30 s (``HEARTBEAT_DEFAULT_INTERVAL``)
from the task's claim to its first call; on an overloaded machine (load 25-30 on 2 cores was
seen) starting Python and importing Flower takes longer, the claim expires and every message
fails with "task-token authentication failed". This entry point extends that grace to
``SECFED_TASK_GRACE`` seconds (default 120) in the SuperNode's own task state.

If the Flower version lacks a patched module attribute that part runs unpatched, with a
warning.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

POLL_ENV = "SECFED_SUPERNODE_POLL"
DEFAULT_POLL = 0.1
GRACE_ENV = "SECFED_TASK_GRACE"
DEFAULT_GRACE = 120.0


class _CappedSleep(ModuleType):
    """A stand-in for the ``time`` module whose ``sleep`` never exceeds ``cap`` seconds."""

    def __init__(self, cap: float):
        super().__init__("time")
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def poll_seconds() -> float:
    """The idle poll from the environment, validated."""
    raw = os.environ.get(POLL_ENV, str(DEFAULT_POLL))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.01 <= value <= 3.0:
        raise SystemExit(f"{POLL_ENV}={raw!r}: give seconds between 0.01 and 3")
    return value


def extend_grace(seconds: float) -> bool:
    """Give a starting ClientApp ``seconds`` to call in; False where Flower differs."""
    from flwr.supercore.corestate import in_memory_corestate, sql_corestate

    done = True
    for module in (in_memory_corestate, sql_corestate):
        if not isinstance(getattr(module, "HEARTBEAT_DEFAULT_INTERVAL", None), int | float):
            log.warning("%s has no HEARTBEAT_DEFAULT_INTERVAL: grace unchanged", module.__name__)
            done = False
            continue
        module.HEARTBEAT_DEFAULT_INTERVAL = max(  # type: ignore[attr-defined]
            module.HEARTBEAT_DEFAULT_INTERVAL, seconds
        )
    return done


def patch(cap: float) -> bool:
    """Cap the SuperNode loop's sleeps; False where this Flower version differs."""
    from flwr.supernode import start_client_internal as sci

    if getattr(sci, "time", None) is not time:
        log.warning("this Flower version's SuperNode loop differs: running it unpatched")
        return False
    sci.time = _CappedSleep(cap)  # type: ignore[attr-defined]
    return True


def main() -> None:
    """Run ``flower-supernode`` with the capped idle poll."""
    cap = poll_seconds()
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(cap))
    patch(cap)
    try:
        grace = float(os.environ.get(GRACE_ENV, str(DEFAULT_GRACE)))
    except ValueError:
        raise SystemExit(f"{GRACE_ENV} must be seconds") from None
    extend_grace(grace)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
