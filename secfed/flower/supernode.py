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

Flower waits for a message's objects (its content) with an exponential backoff starting at
1 s (``PULL_INITIAL_BACKOFF``, doubling up to 10 s). The receiver often asks a moment before
the sender has finished pushing them: a SuperNode creates the task before it has pulled the
content from the SuperLink, and a ServerApp sees a reply before its objects arrived. Each
such miss cost a whole second per stage. :func:`shorten_pull_backoff` starts that backoff at
``PULL_BACKOFF`` (0.02 s, capped at 0.5 s) in the processes secfed runs: the SuperNode (here),
the ServerApp and the node agent; Flower's limits on tries and total time stay.

If the Flower version lacks a patched module attribute that part runs unpatched, with a
warning.
"""

from __future__ import annotations

import functools
import importlib
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
PULL_BACKOFF, PULL_BACKOFF_CAP = 0.02, 0.5
#: The modules that call Flower's ``pull_objects`` through a module-level name.
PULLERS = (
    "flwr.supercore.inflatable.inflatable_utils",  # pull_and_inflate_object_from_tree
    "flwr.supernode.start_client_internal",  # a SuperNode pulling from the SuperLink
    "flwr.superlink.grid.http_grid",  # a ServerApp pulling replies
)


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


def shorten_pull_backoff(initial: float = PULL_BACKOFF, cap: float = PULL_BACKOFF_CAP) -> int:
    """Start Flower's wait for missing message objects at ``initial`` s; modules patched."""
    from flwr.supercore.inflatable import inflatable_utils

    original = getattr(inflatable_utils, "pull_objects", None)
    if original is None:
        log.warning("this Flower version has no pull_objects: object pulls unchanged")
        return 0
    original = getattr(original, "__wrapped__", original)  # patched before: re-wrap the original

    @functools.wraps(original)
    def pull_objects(*args: object, **kwargs: object) -> object:
        # pull_and_inflate_object_from_tree passes Flower's defaults explicitly: cap them
        kwargs["initial_backoff"] = min(float(kwargs.get("initial_backoff", initial)), initial)  # type: ignore[arg-type]
        kwargs["backoff_cap"] = min(float(kwargs.get("backoff_cap", cap)), cap)  # type: ignore[arg-type]
        return original(*args, **kwargs)

    done = 0
    for name in PULLERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(getattr(module, "pull_objects", None), "__wrapped__", None) is original or (
            getattr(module, "pull_objects", None) is original
        ):
            module.pull_objects = pull_objects  # type: ignore[attr-defined]
            done += 1
        else:
            log.warning("%s does not call pull_objects as expected: unchanged", name)
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
    shorten_pull_backoff()
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
