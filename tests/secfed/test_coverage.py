"""Family x adapter x DP coverage: one federated round per cell (the README table).

A cell either trains (the global adapter changes and, with DP, epsilon is accounted) or is
refused up front with a clear error. LoRA cells run in the default suite; the full matrix
runs with ``-m slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

import models
import privacy
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job

ADAPTERS = (
    "lora", "ia3", "prefix_tuning", "prompt_tuning", "houlsby", "pfeiffer", "parallel",
)  # fmt: skip
# peft cannot attach these to the family's classification model.
NOT_ATTACHABLE = {
    ("albert", "prefix_tuning"),
    ("deberta-v2", "prefix_tuning"),
    ("distilbert", "prefix_tuning"),
    ("bart", "prefix_tuning"),
    ("bart", "prompt_tuning"),
}
# Opacus computes wrong per-example gradients for these: refused under DP.
DP_REFUSED = {"ia3", "prefix_tuning", "prompt_tuning"}


def expected(family: str, adapter: str, dp: bool) -> str:
    if (family, adapter) in NOT_ATTACHABLE:
        return "not attachable"
    if dp and adapter in DP_REFUSED:
        return "refused under DP"
    return "trains"


CELLS = [
    pytest.param(
        f,
        a,
        dp,
        marks=() if a == "lora" else (pytest.mark.slow,),
        id=f"{f}-{a}-{'dp' if dp else 'nodp'}",
    )
    for f in models.FAMILIES
    for a in ADAPTERS
    for dp in (False, True)
]


@pytest.mark.parametrize(("family", "adapter", "dp"), CELLS)
def test_cell(tmp_path, family, adapter, dp):
    privacy_cfg = (
        {"sample": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}} if dp else {}
    )
    options = {"num_virtual_tokens": 4} if adapter in ("prefix_tuning", "prompt_tuning") else {}
    cfg = tiny_job(
        model={"family": family, "max_length": 12, "vocab_size": 400},
        adapter={"method": adapter, "options": options},
        data={"num_examples": 60},
        federation={"clients": 2, "rounds": 1, "batch_size": 8},
        privacy=privacy_cfg,
    )
    want = expected(family, adapter, dp)
    if want == "not attachable":
        with pytest.raises(models.AdapterConfigError):
            FederatedRunner(cfg, tmp_path / "run")
        return
    if want == "refused under DP":
        with pytest.raises(privacy.UnsupportedUnderDP):
            FederatedRunner(cfg, tmp_path / "run")
        return
    runner = FederatedRunner(cfg, tmp_path / "run")
    before = runner.state.global_vector.copy()
    runner.run()
    assert not np.allclose(before, runner.state.global_vector)
    row = runner.dir.read_metrics()[-1]
    assert 0.0 <= row["accuracy"] <= 1.0
    if dp:
        assert all(e > 0 for e in row["epsilon"].values())
