"""``models.adapter_disabled``: inside the block the adapted model computes its base exactly
(DPO's reference policy), with no weight copied; outside, the adapter is back."""

from __future__ import annotations

import copy

import pytest
import torch

import models

METHODS = ["lora", "ia3", "prompt_tuning", "houlsby", "pfeiffer", "parallel"]


def _options(method: str) -> dict:
    if method == "prompt_tuning":
        return {"num_virtual_tokens": 3}
    return {"reduction_factor": 8} if method in models.BOTTLENECK_METHODS else {}


@pytest.mark.parametrize("method", METHODS)
def test_disabled_adapter_is_the_base(method):
    base = models.build_tiny_model("gpt2", task="causal_lm", vocab_size=120, seed=1, pad_token_id=0)
    base.eval()
    reference = copy.deepcopy(base)
    model = models.attach_adapter(
        base, models.AdapterSpec(method, _options(method)), family="gpt2", task="causal_lm", seed=2
    )
    vec = models.adapter_vector(model)
    g = torch.Generator().manual_seed(0)
    models.load_adapter_vector(model, vec + torch.randn(len(vec), generator=g).numpy() * 0.5)
    model.eval()
    ids = torch.randint(5, 120, (3, 7), generator=g)
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        for _ in range(2):  # twice: no state (e.g. a parallel adapter's input) left behind
            with models.adapter_disabled(model):
                off = model(input_ids=ids).logits
            on = model(input_ids=ids).logits
            torch.testing.assert_close(off[:, -ids.shape[1] :], expected, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(on[:, -ids.shape[1] :], expected, atol=1e-3)


def test_a_model_without_adapter_is_refused():
    base = models.build_tiny_model("gpt2", task="causal_lm", vocab_size=120, seed=1, pad_token_id=0)
    refused = pytest.raises(models.AdapterConfigError, match="no peft or bottleneck adapter")
    with refused, models.adapter_disabled(base):
        pass
