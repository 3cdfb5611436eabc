"""Reading a key's bits back out of an anchor, and the verdicts for a family of keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .anchors import flatten
from .keys import Architecture, WatermarkKey, check_fits, message_signs, projection
from .stats import (
    DEFAULT_ALPHA,
    SECURITY_LEVEL,
    BitTest,
    TriggerTest,
    bit_test,
    effective_level,
    holm_adjusted,
)


def extracted_matches(
    key: WatermarkKey, anchor: Mapping[str, torch.Tensor], arch: Architecture
) -> int:
    """How many of the key's bits ``sign(P a)`` reproduces (a zero score counts as a miss).

    ``arch`` must be the architecture of ``anchor`` itself (every module, sorted): the
    projection covers all of it, so no module can be left out, repeated or reordered.
    """
    if Architecture.of(arch.kind, anchor) != arch:
        raise ValueError("arch must be Architecture.of(kind, anchor) of the anchor tested")
    check_fits(key, arch)
    vec = flatten(anchor, list(arch.modules)).detach().double().numpy()
    scores = projection(key, arch).astype(np.float64) @ vec
    return int(np.sum(np.sign(scores) == message_signs(key)))


def verify_bits(
    key: WatermarkKey, anchor: Mapping[str, torch.Tensor], arch: Architecture
) -> BitTest:
    """Bit accuracy and exact binomial p-value of one key against one anchor."""
    return bit_test(matches=extracted_matches(key, anchor, arch), bits=key.bits)


@dataclass(frozen=True)
class Verdict:
    """One key's result within a tested family.

    ``p_value`` is the smallest Holm-adjusted p-value of the key's tests; the key is
    "marked" when it is at most ``level = min(alpha, 2**-64)``.
    """

    owner: int
    bits: BitTest | None
    trigger: TriggerTest | None
    bit_p_adjusted: float | None
    trigger_p_adjusted: float | None
    trigger_rank_p_adjusted: float | None
    p_value: float
    marked: bool
    alpha: float
    level: float
    correction: str

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-able form (the CLI's ``--json`` record)."""
        out: dict[str, Any] = {
            "owner": self.owner,
            "p_value": self.p_value,
            "verdict": "marked" if self.marked else "not marked",
            "alpha": self.alpha,
            "security_level": SECURITY_LEVEL,
            "level": self.level,
            "correction": self.correction,
        }
        if self.bits is not None:
            out.update(
                bits=self.bits.bits,
                matches=self.bits.matches,
                bit_accuracy=self.bits.bit_accuracy,
                bit_p_value=self.bits.p_value,
                bit_p_adjusted=self.bit_p_adjusted,
            )
        if self.trigger is not None:
            out["trigger"] = {
                **asdict(self.trigger),
                "p_adjusted": self.trigger_p_adjusted,
                "rank_p_adjusted": self.trigger_rank_p_adjusted,
            }
        return out


def decide(
    owners: Sequence[int],
    bit_tests: Sequence[BitTest | None],
    trigger_tests: Sequence[TriggerTest | None],
    *,
    alpha: float = DEFAULT_ALPHA,
) -> list[Verdict]:
    """Verdicts for keys tested together: Holm over every test run (bits, trigger hits and
    the triggers' rank test where scores were read).

    A key is "marked" when one of its Holm-adjusted p-values is at most
    ``min(alpha, 2**-64)`` (:func:`~.stats.effective_level`).
    """
    level = effective_level(alpha)
    pvals: list[float] = []
    slots: list[tuple[int, str]] = []
    for i, (b, t) in enumerate(zip(bit_tests, trigger_tests, strict=True)):
        raw = {
            "bits": None if b is None else b.p_value,
            "trigger": None if t is None else t.p_value,
            "rank": None if t is None else t.rank_p_value,
        }
        for kind, p in raw.items():
            if p is not None:
                pvals.append(p)
                slots.append((i, kind))
    adjusted = dict(zip(slots, holm_adjusted(pvals), strict=True))
    correction = "holm" if len(pvals) > 1 else "none"
    verdicts = []
    for i, owner in enumerate(owners):
        bit_adj, trig_adj = adjusted.get((i, "bits")), adjusted.get((i, "trigger"))
        rank_adj = adjusted.get((i, "rank"))
        best = min((p for p in (bit_adj, trig_adj, rank_adj) if p is not None), default=1.0)
        verdicts.append(
            Verdict(
                owner=owner,
                bits=bit_tests[i],
                trigger=trigger_tests[i],
                bit_p_adjusted=bit_adj,
                trigger_p_adjusted=trig_adj,
                trigger_rank_p_adjusted=rank_adj,
                p_value=best,
                marked=best <= level,
                alpha=alpha,
                level=level,
                correction=correction,
            )
        )
    return verdicts
