"""Hinge-loss embedding on toy LoRA tensors; anchors survive re-factorisation and merging."""

from __future__ import annotations

import pytest
import torch

from crypto import watermark as wm
from crypto.watermark import attacks

from .watermark_toy import CONFIG, MODULES, anchor, architecture, bit_matches, embed, lora_params


@pytest.fixture(scope="module")
def marked() -> tuple[dict[str, torch.nn.Parameter], wm.WatermarkKey]:
    params = lora_params()
    key = wm.generate_key(owner=0, architecture=architecture(params))
    assert bit_matches(key, params) < 200  # B = 0: nothing embedded yet
    embed(params, [key])
    return params, key


def test_anchor_is_scaled_lora_product():
    params = lora_params()
    with torch.no_grad():
        params["base_model.model.enc.q.lora_B.default.weight"].normal_()
    a = anchor(params)
    assert list(a) == ["enc.q", "enc.v"]
    expected = (
        2.0
        * params["base_model.model.enc.q.lora_B.default.weight"]
        @ params["base_model.model.enc.q.lora_A.default.weight"]
    )
    torch.testing.assert_close(a["enc.q"], expected)


def test_hinge_embedding_sets_every_bit(marked):
    params, key = marked
    a = anchor(params)
    result = wm.verify_bits(key, a, wm.Architecture.of("lora", a))
    assert result.matches == 256 and result.p_value < 1e-70


def test_refactorisation_keeps_product_and_bits_but_changes_factors(marked):
    params, key = marked
    state = {k: v.detach() for k, v in params.items()}
    moved = attacks.refactorize(state, generator=torch.Generator().manual_seed(1))
    name_b = "base_model.model.enc.q.lora_B.default.weight"
    assert not torch.allclose(moved[name_b], state[name_b], atol=1e-3)
    torch.testing.assert_close(anchor(moved)["enc.q"], anchor(state)["enc.q"], atol=1e-5, rtol=1e-4)
    assert bit_matches(key, moved) == 256


def test_merged_weights_carry_the_watermark(marked):
    params, key = marked
    g = torch.Generator().manual_seed(2)
    base = {f"{m}.weight": torch.randn(*shape, generator=g) for m, shape in MODULES.items()}
    base["classifier.weight"] = torch.randn(2, 48, generator=g)
    base["enc.norm.weight"] = torch.ones(48)
    a = anchor(params)
    merged = {
        k: v + a[k.removesuffix(".weight")] if k.removesuffix(".weight") in a else v + 0.5
        for k, v in base.items()
    }
    got = wm.merged_anchor(merged, base)
    assert sorted(got) == ["enc.q", "enc.v"]  # the head and 1-D weights are not anchors
    assert wm.verify_bits(key, got, wm.Architecture.of("lora", got)).matches == 256
    with pytest.raises(wm.AnchorError, match="equal the base"):
        wm.merged_anchor(base, base)


def test_full_rank_svd_and_small_noise_keep_bits(marked):
    params, key = marked
    state = {k: v.detach() for k, v in params.items()}
    assert bit_matches(key, attacks.svd_truncate(state, rank=8)) == 256
    noisy = attacks.add_noise(state, relative=0.05, generator=torch.Generator().manual_seed(3))
    assert bit_matches(key, noisy) >= 200


def test_other_owner_keys_are_not_detected(marked):
    params, _ = marked
    for _ in range(20):
        assert bit_matches(wm.generate_key(owner=1), params) < 200


def test_two_owners_coexist():
    params = lora_params(5)
    keys = [wm.generate_key(owner=i) for i in range(2)]
    embed(params, keys)
    assert [bit_matches(k, params) for k in keys] == [256, 256]


def test_capacity_limit():
    params = lora_params()
    cap = wm.anchor_capacity(params, CONFIG)
    assert cap == 2 * 8 * (32 + 48 - 8)
    wm.check_capacity(total_bits=cap // 2, capacity=cap)
    with pytest.raises(wm.WatermarkCapacityError, match="at most 576 bits"):
        wm.check_capacity(total_bits=cap // 2 + 1, capacity=cap)


def test_cap_norm_limits_and_never_scales_up():
    grads = {"a": torch.tensor([3.0, 4.0])}
    torch.testing.assert_close(wm.cap_norm(grads, limit=1.0)["a"], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(wm.cap_norm(grads, limit=10.0)["a"], grads["a"])


def test_ia3_and_prompt_anchors_and_refused_types():
    ia3 = {"base_model.model.enc.k.ia3_l.default": torch.full((1, 5), 1.5)}
    a = wm.adapter_anchor(ia3, {"peft_type": "IA3"})
    torch.testing.assert_close(a["enc.k"], torch.full((5,), 0.5))
    emb = {
        "prompt_encoder.default.embedding.weight": torch.ones(3, 4),
        "classifier.weight": torch.ones(2, 4),
    }
    assert list(wm.adapter_anchor(emb, {"peft_type": "PROMPT_TUNING"})) == ["prompt_encoder"]
    with pytest.raises(wm.AnchorError, match="DoRA"):
        wm.adapter_anchor(lora_params(), {**CONFIG, "use_dora": True})
    with pytest.raises(wm.AnchorError, match="lacks"):
        wm.adapter_anchor({"x.lora_A.weight": torch.ones(2, 2)}, CONFIG)
