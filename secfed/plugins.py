"""Extension seam of local training: data-independent gradient terms and extra examples.

Watermarking (and any similar add-on) plugs into the runner through :class:`TrainingPlugin`
instead of editing the round loop. Gradient hooks run after DP-SGD's clipping and noise, so
they must not read client data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from .training import ExtraGrad

if TYPE_CHECKING:
    from .assembly import JobParts
    from .config import ExperimentConfig


@runtime_checkable
class TrainingPlugin(Protocol):
    """What the runner asks a plugin at each step of a job."""

    name: str

    def setup(self, *, run_dir: Path, model: torch.nn.Module, resumed: bool) -> None:
        """Create (or, when resumed, reload) the plugin's state, e.g. keys in the run dir."""

    def client_grad_hook(self, client_id: int, model: torch.nn.Module) -> ExtraGrad | None:
        """A data-independent gradient term for this client's local training, or None."""

    def finish(self, *, run_dir: Path, model: torch.nn.Module) -> dict[str, Any]:
        """Called with the final global model; returns a section for ``summary.json``."""


def build_plugins(cfg: ExperimentConfig, parts: JobParts) -> list[TrainingPlugin]:
    """The training plugins the config enables."""
    plugins: list[TrainingPlugin] = []
    if cfg.watermark.enabled:
        from .watermark.plugin import WatermarkPlugin

        plugins.append(WatermarkPlugin(cfg, parts))
    return plugins
