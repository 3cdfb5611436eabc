"""False-positive rate, measured: fresh random keys against a marked anchor."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats as st

from crypto import watermark as wm

LAYOUT = [("m0", (32, 32)), ("m1", (32, 32))]
N_KEYS = 3000


def _marked_anchor() -> tuple[dict[str, torch.Tensor], wm.WatermarkKey]:
    key = wm.generate_key(owner=0, bits=64, anchor_kind="lora", layout=LAYOUT)
    # Plant the owner's bits exactly: a = P^T s (rows of P are near-orthogonal).
    vec = torch.from_numpy(wm.projection(key).T @ wm.message_signs(key))
    anchor = {"m0": vec[:1024].reshape(32, 32), "m1": vec[1024:].reshape(32, 32)}
    return anchor, key


def test_fresh_keys_false_positive_rate_matches_exact_size():
    anchor, owner = _marked_anchor()
    assert wm.verify_bits(owner, anchor).matches == 64
    matches = np.array(
        [
            wm.extracted_matches(
                wm.generate_key(owner=1, bits=64, anchor_kind="lora", layout=LAYOUT), anchor
            )
            for _ in range(N_KEYS)
        ]
    )
    pvals = st.binom.sf(matches - 1, 64, 0.5)
    # Default alpha: no false positive expected (3000 * 1e-6 = 0.003).
    assert (pvals < wm.DEFAULT_ALPHA).sum() == 0
    for alpha in (0.01, 0.05, 0.2):
        k_star = int(st.binom.isf(alpha, 64, 0.5)) + 1  # smallest k with P[X >= k] <= alpha
        size = float(st.binom.sf(k_star - 1, 64, 0.5))
        rate = float((pvals <= alpha).mean())
        sigma = np.sqrt(size * (1 - size) / N_KEYS)
        assert abs(rate - size) < 5 * sigma + 1e-9, (alpha, rate, size)
    # Matches of unrelated keys look like Binomial(64, 1/2).
    assert abs(matches.mean() - 32) < 0.5
