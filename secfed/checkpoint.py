"""Per-round checkpoints: everything needed to continue a job exactly where it stopped."""

from __future__ import annotations

import json
import shutil
import zipfile
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
    """Read a checkpoint written by :func:`save_checkpoint`.

    A missing marker, an unreadable or truncated file raises :class:`ResumeError` naming the
    file, so a caller can fall back to an earlier checkpoint.
    """
    if not (directory / "COMPLETE").exists():
        raise ResumeError(f"checkpoint {directory} is incomplete; it cannot be resumed from")
    state_file, arrays_file = directory / "state.json", directory / "arrays.npz"
    try:
        meta = json.loads(state_file.read_text())
        round_, job_id = int(meta["round"]), str(meta["job_id"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ResumeError(f"{state_file} is unreadable ({type(err).__name__}: {err})") from err
    try:
        with np.load(arrays_file) as npz:
            arrays = {k: npz[k].astype(np.float64) for k in npz.files}
        global_vector = arrays["global_vector"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ResumeError(f"{arrays_file} is unreadable ({type(err).__name__}: {err})") from err
    strategy = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("strategy/")}
    return JobState(
        round=round_,
        job_id=job_id,
        global_vector=global_vector,
        strategy=strategy,
        privacy=meta.get("privacy", {}),
        extra=meta.get("extra", {}),
    )
