"""Progress events of a job: building its parts and the work inside each round.

Library code reports through an optional :data:`ProgressCallback` (the CLI draws it with
rich) and logs the coarse steps; nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """One step of progress.

    ``stage`` is one of ``data``, ``tokenizer``, ``model``, ``pretrain`` (building the job)
    or ``train``, ``aggregate``, ``evaluate`` (inside round ``round``). ``done`` of
    ``total`` counts pre-training steps, or a client's local steps (``client``, the
    ``member``-th of a cohort of ``cohort``); ``total`` is 0 when unknown.
    """

    stage: str
    done: int = 0
    total: int = 0
    round: int = 0
    client: int | None = None
    member: int = 0
    cohort: int = 0


ProgressCallback = Callable[[ProgressEvent], None]


def emit(callback: ProgressCallback | None, event: ProgressEvent) -> None:
    """Pass ``event`` to ``callback`` if there is one."""
    if callback is not None:
        callback(event)
