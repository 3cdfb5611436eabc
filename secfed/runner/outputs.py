"""The end of a job: the privacy report, the threat report and ``summary.json``.

:class:`JobOutputs` is mixed into :class:`~secfed.runner.FederatedRunner`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np

import crypto
import models

from ..assembly import JobParts
from ..checkpoint import JobState
from ..config import ExperimentConfig
from ..dpo import dpo_summary
from ..job_dp import SampleLevelDP, UserLevelDP, dp_threat, privacy_summary
from ..plugins import TrainingPlugin
from ..rundir import RunDir, write_json_atomic

if TYPE_CHECKING:
    from .job import FederatedRunner


class JobOutputs:
    """Reports and the final files of a run (mixed into the runner)."""

    cfg: ExperimentConfig
    dir: RunDir
    parts: JobParts
    protocol: crypto.Protocol
    plugins: list[TrainingPlugin]
    sample_dp: SampleLevelDP | None
    user_dp: UserLevelDP | None
    state: JobState
    dim: int
    stopped_early: str | None

    def privacy_summary(self) -> dict[str, Any]:
        """The privacy report: mechanisms, accountant, spend per client, threat model."""
        return privacy_summary(
            self.cfg, self.sample_dp, self.user_dp, rounds=self.state.round,
            threat_model=self.threat_report(),
        )  # fmt: skip

    def threat_report(self) -> dict[str, Any]:
        """What the run protects: protocol threat model plus the DP level."""
        tm = self.protocol.threat_model().as_dict()
        tm["dp"] = dp_threat(self.cfg, self.user_dp)
        tm["max_dropouts_per_round"] = self.protocol.max_dropouts(self.cfg.federation.clients)
        return tm

    def finish(self) -> dict[str, Any]:
        """Save the final adapter and base model, and write ``summary.json``."""
        models.load_adapter_vector(self.parts.model, self.state.global_vector.astype(np.float32))
        models.save_adapter(self.parts.model, self.dir.adapter)
        if not self.dir.base_model.exists():
            models.save_base_model(self.parts.model, self.parts.tokenizer, self.dir.base_model)
        rows = self.dir.read_metrics()
        last = rows[-1] if rows else {}
        summary: dict[str, Any] = {
            "name": self.cfg.name,
            "rounds": self.state.round,
            "accuracy": last.get("accuracy"),
            "loss": last.get("loss"),
            "protocol": self.cfg.aggregation.protocol,
            "strategy": self.cfg.federation.strategy,
            "adapter": self.cfg.adapter.method,
            "adapter_parameters": self.dim,
            "seconds": sum(r.get("seconds", 0.0) for r in rows),
            "bytes_up_per_round": float(np.mean([r["bytes_up"] for r in rows])) if rows else 0.0,
            "threat_model": self.protocol.threat_model().as_dict(),
        }
        if self.stopped_early:
            summary["stopped_early"] = self.stopped_early
        if self.cfg.model.task == "dpo":
            summary["dpo"] = dpo_summary(rows)
        summary["privacy"] = self.privacy_summary()
        write_json_atomic(self.dir.root / "privacy_report.json", summary["privacy"])
        for plugin in self.plugins:
            summary[plugin.name] = plugin.finish(run_dir=self.dir.root, model=self.parts.model)
        if self.cfg.federation.baseline == "local":
            from ..compare import local_baseline

            summary["comparison"] = local_baseline(cast("FederatedRunner", self))
            write_json_atomic(self.dir.root / "comparison.json", summary["comparison"])
        write_json_atomic(self.dir.summary, summary)
        return summary
