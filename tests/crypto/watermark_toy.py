"""A toy LoRA adapter for watermark tests: two 32x48 modules at rank 8 (capacity 1152)."""

from __future__ import annotations

import torch

from crypto import watermark as wm

CONFIG = {"peft_type": "LORA", "r": 8, "lora_alpha": 16}
MODULES = {"enc.q": (32, 48), "enc.v": (32, 48)}
RANK = 8


def lora_params(seed: int = 0) -> dict[str, torch.nn.Parameter]:
    """Freshly initialised LoRA factors (B = 0, as peft starts)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for mod, (m, n) in MODULES.items():
        out[f"base_model.model.{mod}.lora_A.default.weight"] = torch.nn.Parameter(
            torch.randn(RANK, n, generator=g) * 0.3
        )
        out[f"base_model.model.{mod}.lora_B.default.weight"] = torch.nn.Parameter(
            torch.zeros(m, RANK)
        )
    return out


def trained_params(seed: int = 0) -> dict[str, torch.nn.Parameter]:
    """Factors with B random too: an adapter "trained" without any watermark."""
    params = lora_params(seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in params.items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return params


def anchor(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The (detached) anchor of a toy adapter."""
    with torch.no_grad():
        return {k: v.detach() for k, v in wm.adapter_anchor(state, CONFIG).items()}


def architecture(state: dict[str, torch.Tensor]) -> wm.Architecture:
    """The toy adapter's canonical architecture."""
    return wm.Architecture.of("lora", anchor(state))


def embed(
    params: dict[str, torch.nn.Parameter], keys: list[wm.WatermarkKey], steps: int = 300
) -> None:
    """Hinge-loss embedding of ``keys`` by plain SGD on the factors."""
    arch = architecture(params)
    embs = [wm.SignEmbedder(k, arch, strength=1.0, margin=0.05) for k in keys]
    opt = torch.optim.SGD(params.values(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        for e in embs:
            wm.add_grads(params, e.gradients(params, CONFIG))
        opt.step()


def bit_matches(key: wm.WatermarkKey, state: dict[str, torch.Tensor]) -> int:
    """Matches of ``key`` on a toy adapter (verification as the CLI does it)."""
    a = anchor(state)
    return wm.extracted_matches(key, a, wm.Architecture.of("lora", a))
