"""False-positive rate, measured: fresh random keys against a marked anchor."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats as st

from crypto import watermark as wm

ARCH = wm.Architecture.of("lora", {"m0": (8, 16), "m1": (8, 16)})
N_KEYS = 1500


def _marked_anchor() -> tuple[dict[str, torch.Tensor], wm.WatermarkKey]:
    key = wm.generate_key(owner=0)
    # Plant the owner's bits exactly: solve P a = s (P is 256 x 256, full rank).
    p = wm.projection(key, ARCH).astype(np.float64)
    vec = torch.from_numpy(np.linalg.solve(p, wm.message_signs(key).astype(np.float64)))
    anchor = {"m0": vec[:128].reshape(8, 16), "m1": vec[128:].reshape(8, 16)}
    return anchor, key


def test_fresh_keys_false_positive_rate_matches_exact_size():
    anchor, owner = _marked_anchor()
    assert wm.extracted_matches(owner, anchor, ARCH) == 256
    matches = np.array(
        [wm.extracted_matches(wm.generate_key(), anchor, ARCH) for _ in range(N_KEYS)]
    )
    pvals = st.binom.sf(matches - 1, 256, 0.5)
    assert (pvals <= wm.SECURITY_LEVEL).sum() == 0
    for alpha in (0.01, 0.05, 0.2):
        k_star = int(st.binom.isf(alpha, 256, 0.5)) + 1  # smallest k with P[X >= k] <= alpha
        size = float(st.binom.sf(k_star - 1, 256, 0.5))
        rate = float((pvals <= alpha).mean())
        sigma = np.sqrt(size * (1 - size) / N_KEYS)
        assert abs(rate - size) < 5 * sigma + 1e-9, (alpha, rate, size)
    assert abs(matches.mean() - 128) < 5 * 8 / np.sqrt(N_KEYS)
