"""The run directory: resolved config, metrics, summary, checkpoints, adapter.

Stable names other tools rely on: ``config.toml``, ``metrics.jsonl`` (one JSON object per
round), ``summary.json``, ``adapter/`` (loadable by peft), ``checkpoints/round_NNNN/``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunDir:
    """Paths and append-only records of one run."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def base_model(self) -> Path:
        return self.root / "base_model"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, round_: int) -> Path:
        return self.checkpoints / f"round_{round_:04d}"

    def complete_checkpoints(self) -> list[Path]:
        """Checkpoints carrying the ``COMPLETE`` marker, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.glob("round_*") if (p / "COMPLETE").exists())

    def latest_checkpoint(self) -> Path | None:
        done = self.complete_checkpoints()
        return done[-1] if done else None

    def set_aside(self, checkpoint: Path) -> Path:
        """Rename an unreadable checkpoint to ``corrupt_<name>`` (kept for inspection)."""
        target = checkpoint.with_name(f"corrupt_{checkpoint.name}")
        if target.exists():
            shutil.rmtree(target)
        checkpoint.rename(target)
        return target

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True, default=_jsonable) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        rows = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line))
        return rows

    def truncate_metrics(self, last_round: int) -> None:
        """Drop records of rounds after ``last_round`` (work lost in a crash is redone)."""
        kept = [r for r in self.read_metrics() if r.get("round", 0) <= last_round]
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        os.replace(tmp, self.metrics)

    def remove_incomplete_checkpoints(self) -> None:
        if self.checkpoints.is_dir():
            for p in self.checkpoints.glob("round_*"):
                if p.is_dir() and not (p / "COMPLETE").exists():
                    shutil.rmtree(p)
