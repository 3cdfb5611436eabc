"""What a job may use over Flower (checked by the launcher, the server and every agent).

Imports no torch, so the launcher refuses an unsupported job at once.
"""

from __future__ import annotations

from ..config import ExperimentConfig
from ..errors import ConfigError


def check_deployable(cfg: ExperimentConfig) -> None:
    """Refuse job features the Flower adapter does not carry yet."""
    if cfg.federation.strategy == "scaffold":
        raise ConfigError(
            "federation.strategy = 'scaffold' keeps per-client control variates on the server; "
            "the Flower adapter does not ship them yet: use fedavg, fedprox, fedavgm or an "
            "adaptive strategy, or run in-process with `secfed run`"
        )
    if cfg.watermark.enabled:
        raise ConfigError(
            "watermark.enabled = true needs the owners' keys on every client; the Flower "
            "adapter does not distribute them yet: disable it or run in-process"
        )
