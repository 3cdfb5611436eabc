"""Small, fast job configs for runner tests."""

from __future__ import annotations

from typing import Any

import pytest

from secfed.config import ExperimentConfig, parse_config

#: Every protocol other than plain, with the options that keep a test fast (a 512-bit
#: Paillier key, explicitly insecure, and one worker), for "matches plain" tests.
SECURE_PROTOCOL_CASES = [
    ("secagg", {}),
    ("secagg+", {}),
    ("ckks", {}),
    ("paillier", {"insecure_key_bits": 512, "workers": 1}),
]


def tiny_job(**sections: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "model": {"family": "bert", "max_length": 16, "vocab_size": 600},
        "adapter": {"method": "lora", "options": {"r": 4, "lora_alpha": 8}},
        "data": {"num_examples": 160},
        "federation": {"clients": 3, "rounds": 3, "local_epochs": 1, "batch_size": 16},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return parse_config(base)


@pytest.fixture
def tiny_config() -> ExperimentConfig:
    return tiny_job()
