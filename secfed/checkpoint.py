"""Per-round checkpoints: everything needed to continue a job exactly where it stopped."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ResumeError


@dataclass
class JobState:
    """Mutable state carried from round to round."""

    round: int
    job_id: str
    global_vector: NDArray[np.float64]
    strategy: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(directory: Path, state: JobState) -> None:
    """Write ``state`` into ``directory``; the ``COMPLETE`` marker is written last."""
    tmp = directory.with_name(directory.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    arrays = {"global_vector": state.global_vector}
    arrays.update({f"strategy/{k}": v for k, v in state.strategy.items()})
    np.savez(tmp / "arrays.npz", **arrays)  # type: ignore[arg-type]
    meta = {
        "round": state.round,
        "job_id": state.job_id,
        "privacy": state.privacy,
        "extra": state.extra,
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    (tmp / "COMPLETE").write_text("ok\n")
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)


def load_checkpoint(directory: Path) -> JobState:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    if not (directory / "COMPLETE").exists():
        raise ResumeError(f"checkpoint {directory} is incomplete; it cannot be resumed from")
    meta = json.loads((directory / "state.json").read_text())
    with np.load(directory / "arrays.npz") as npz:
        arrays = {k: npz[k].astype(np.float64) for k in npz.files}
    strategy = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("strategy/")}
    return JobState(
        round=int(meta["round"]),
        job_id=str(meta["job_id"]),
        global_vector=arrays["global_vector"],
        strategy=strategy,
        privacy=meta.get("privacy", {}),
        extra=meta.get("extra", {}),
    )
