"""Reading a key's bits back out of an anchor, and the verdicts for a family of keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .anchors import flatten
from .keys import WatermarkKey, message_signs, projection
from .stats import DEFAULT_ALPHA, BitTest, TriggerTest, bit_test, holm


def extracted_matches(key: WatermarkKey, anchor: Mapping[str, torch.Tensor]) -> int:
    """How many of the key's bits ``sign(P a)`` reproduces (a zero score counts as a miss)."""
    vec = flatten(anchor, list(key.layout)).detach().double().numpy()
    scores = projection(key).astype(np.float64) @ vec
    return int(np.sum(np.sign(scores) == message_signs(key)))


def verify_bits(key: WatermarkKey, anchor: Mapping[str, torch.Tensor]) -> BitTest:
    """Bit accuracy and exact binomial p-value of one key against one anchor."""
    return bit_test(matches=extracted_matches(key, anchor), bits=key.bits)


@dataclass(frozen=True)
class Verdict:
    """One key's result within a tested family."""

    owner: int
    bits: BitTest | None
    trigger: TriggerTest | None
    p_value: float
    marked: bool
    alpha: float
    correction: str

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-able form (the CLI's ``--json`` record)."""
        out: dict[str, Any] = {
            "owner": self.owner,
            "p_value": self.p_value,
            "verdict": "marked" if self.marked else "not marked",
            "alpha": self.alpha,
            "correction": self.correction,
        }
        if self.bits is not None:
            out.update(
                bits=self.bits.bits,
                matches=self.bits.matches,
                bit_accuracy=self.bits.bit_accuracy,
                bit_p_value=self.bits.p_value,
            )
        if self.trigger is not None:
            out["trigger"] = asdict(self.trigger)
        return out


def decide(
    owners: Sequence[int],
    bit_tests: Sequence[BitTest | None],
    trigger_tests: Sequence[TriggerTest | None],
    *,
    alpha: float = DEFAULT_ALPHA,
) -> list[Verdict]:
    """Verdicts for keys tested together: Holm over every test run (bits and triggers).

    A key is "marked" when any of its tests is rejected after correction.
    """
    pvals: list[float] = []
    index: list[int] = []
    for i, (b, t) in enumerate(zip(bit_tests, trigger_tests, strict=True)):
        for test in (b, t):
            if test is not None:
                pvals.append(test.p_value)
                index.append(i)
    rejected = holm(pvals, alpha=alpha)
    correction = "holm" if len(pvals) > 1 else "none"
    verdicts = []
    for i, owner in enumerate(owners):
        mine = [p for p, j in zip(pvals, index, strict=True) if j == i]
        hit = any(r for r, j in zip(rejected, index, strict=True) if j == i)
        verdicts.append(
            Verdict(
                owner,
                bit_tests[i],
                trigger_tests[i],
                min(mine, default=1.0),
                hit,
                alpha,
                correction,
            )
        )
    return verdicts
