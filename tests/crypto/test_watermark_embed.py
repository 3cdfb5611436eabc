"""Hinge-loss embedding on toy LoRA tensors; anchors survive re-factorisation and merging."""

from __future__ import annotations

import pytest
import torch

from crypto import watermark as wm
from crypto.watermark import attacks

CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}
MODULES = {"enc.q": (12, 16), "enc.v": (12, 16)}


def _params(seed: int = 0) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for mod, (m, n) in MODULES.items():
        out[f"base_model.model.{mod}.lora_A.default.weight"] = torch.nn.Parameter(
            torch.randn(4, n, generator=g) * 0.3
        )
        out[f"base_model.model.{mod}.lora_B.default.weight"] = torch.nn.Parameter(torch.zeros(m, 4))
    return out


def _embed(params: dict[str, torch.nn.Parameter], key: wm.WatermarkKey, steps: int = 300) -> None:
    emb = wm.SignEmbedder(key, strength=1.0, margin=0.05)
    opt = torch.optim.SGD(params.values(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        wm.add_grads(params, emb.gradients(params, CONFIG))
        opt.step()


@pytest.fixture(scope="module")
def marked() -> tuple[dict[str, torch.nn.Parameter], wm.WatermarkKey]:
    params = _params()
    with torch.no_grad():
        layout = wm.layout_of(wm.adapter_anchor(params, CONFIG))
    key = wm.generate_key(owner=0, bits=64, anchor_kind="lora", layout=layout)
    assert wm.verify_bits(key, _anchor(params)).matches < 64  # B = 0: nothing embedded yet
    _embed(params, key)
    return params, key


def _anchor(state):
    with torch.no_grad():
        return wm.adapter_anchor(state, CONFIG)


def test_anchor_is_scaled_lora_product():
    params = _params()
    with torch.no_grad():
        params["base_model.model.enc.q.lora_B.default.weight"].normal_()
    a = _anchor(params)
    assert list(a) == ["enc.q", "enc.v"]
    expected = (
        2.0
        * params["base_model.model.enc.q.lora_B.default.weight"]
        @ params["base_model.model.enc.q.lora_A.default.weight"]
    )
    torch.testing.assert_close(a["enc.q"], expected)


def test_hinge_embedding_sets_every_bit(marked):
    params, key = marked
    result = wm.verify_bits(key, _anchor(params))
    assert result.matches == 64 and result.p_value < 1e-18


def test_refactorisation_keeps_product_and_bits_but_changes_factors(marked):
    params, key = marked
    state = {k: v.detach() for k, v in params.items()}
    moved = attacks.refactorize(state, generator=torch.Generator().manual_seed(1))
    name_b = "base_model.model.enc.q.lora_B.default.weight"
    assert not torch.allclose(moved[name_b], state[name_b], atol=1e-3)
    torch.testing.assert_close(
        _anchor(moved)["enc.q"], _anchor(state)["enc.q"], atol=1e-5, rtol=1e-4
    )
    assert wm.verify_bits(key, _anchor(moved)).matches == 64


def test_merged_weights_carry_the_watermark(marked):
    params, key = marked
    g = torch.Generator().manual_seed(2)
    base = {f"{m}.weight": torch.randn(*shape, generator=g) for m, shape in MODULES.items()}
    base["classifier.weight"] = torch.randn(2, 16, generator=g)
    anchor = _anchor(params)
    merged = {
        k: v + anchor[k.removesuffix(".weight")] if k != "classifier.weight" else v
        for k, v in base.items()
    }
    result = wm.verify_bits(key, wm.merged_anchor(merged, base, list(key.layout)))
    assert result.matches == 64
    assert wm.verify_bits(key, wm.merged_anchor(base, base, list(key.layout))).matches < 52


def test_full_rank_svd_and_small_noise_keep_bits(marked):
    params, key = marked
    state = {k: v.detach() for k, v in params.items()}
    assert wm.verify_bits(key, _anchor(attacks.svd_truncate(state, rank=4))).matches == 64
    noisy = attacks.add_noise(state, relative=0.05, generator=torch.Generator().manual_seed(3))
    assert wm.verify_bits(key, _anchor(noisy)).p_value < 1e-6


def test_other_owner_keys_are_not_detected(marked):
    params, key = marked
    anchor = _anchor(params)
    for _ in range(20):
        other = wm.generate_key(owner=1, bits=64, anchor_kind="lora", layout=list(key.layout))
        assert wm.verify_bits(other, anchor).p_value > 1e-6


def test_two_owners_coexist():
    params = _params(5)
    with torch.no_grad():
        layout = wm.layout_of(wm.adapter_anchor(params, CONFIG))
    keys = [wm.generate_key(owner=i, bits=64, anchor_kind="lora", layout=layout) for i in range(2)]
    embs = [wm.SignEmbedder(k, strength=1.0, margin=0.05) for k in keys]
    opt = torch.optim.SGD(params.values(), lr=0.5)
    for _ in range(300):
        opt.zero_grad(set_to_none=True)
        for e in embs:
            wm.add_grads(params, e.gradients(params, CONFIG))
        opt.step()
    assert [wm.verify_bits(k, _anchor(params)).matches for k in keys] == [64, 64]


def test_capacity_limit():
    params = _params()
    cap = wm.anchor_capacity(params, CONFIG)
    assert cap == 2 * 4 * (12 + 16 - 4)
    wm.check_capacity(total_bits=cap // 2, capacity=cap)
    with pytest.raises(wm.WatermarkCapacityError, match="at most 96 bits"):
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
        wm.adapter_anchor(_params(), {**CONFIG, "use_dora": True})
    with pytest.raises(wm.AnchorError, match="lacks"):
        wm.adapter_anchor({"x.lora_A.weight": torch.ones(2, 2)}, CONFIG)
