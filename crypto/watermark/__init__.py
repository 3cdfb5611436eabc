"""Adapter watermarks: white-box sign signatures on the effective weight change, black-box
trigger sets, and their statistical verification. Never imports secfed, models or privacy.
"""

from __future__ import annotations

from .anchors import (
    adapter_anchor,
    anchor_capacity,
    anchor_kind,
    canonical_name,
    check_capacity,
    flatten,
    layout_of,
    merged_anchor,
)
from .embed import SignEmbedder, add_grads, cap_norm, grad_norm
from .errors import AnchorError, WatermarkCapacityError, WatermarkError, WatermarkKeyError
from .keys import (
    TriggerSpec,
    WatermarkKey,
    check_commitment,
    commitment,
    generate_key,
    load_key,
    message_signs,
    projection,
    save_key,
    trigger_labels,
    trigger_token_ids,
)
from .stats import (
    DEFAULT_ALPHA,
    BitTest,
    TriggerTest,
    binomial_p_value,
    bit_test,
    clopper_pearson,
    holm,
    trigger_test,
)
from .verify import Verdict, decide, extracted_matches, verify_bits

__all__ = [
    "DEFAULT_ALPHA",
    "AnchorError",
    "BitTest",
    "SignEmbedder",
    "TriggerSpec",
    "TriggerTest",
    "Verdict",
    "WatermarkCapacityError",
    "WatermarkError",
    "WatermarkKey",
    "WatermarkKeyError",
    "adapter_anchor",
    "add_grads",
    "anchor_capacity",
    "anchor_kind",
    "binomial_p_value",
    "bit_test",
    "canonical_name",
    "cap_norm",
    "check_capacity",
    "check_commitment",
    "clopper_pearson",
    "commitment",
    "decide",
    "extracted_matches",
    "flatten",
    "generate_key",
    "grad_norm",
    "holm",
    "layout_of",
    "load_key",
    "merged_anchor",
    "message_signs",
    "projection",
    "save_key",
    "trigger_labels",
    "trigger_test",
    "trigger_token_ids",
    "verify_bits",
]
