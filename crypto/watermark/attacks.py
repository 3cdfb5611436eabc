"""Removal attacks on adapter tensors (for the robustness suite and tests).

Each takes a mapping ``name -> tensor`` of adapter parameters and returns a new mapping;
the anchors are recomputed from the result. Randomness comes from a caller-seeded torch
generator: these are simulations of an adversary, not secrets.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .anchors import _LORA, canonical_name

State = dict[str, torch.Tensor]


def _is_anchor_param(name: str) -> bool:
    return "lora_" in name or "ia3_l" in name or "prompt_encoder" in name


def magnitude_prune(state: Mapping[str, torch.Tensor], *, ratio: float) -> State:
    """Zero the smallest-magnitude ``ratio`` of each adapter tensor's entries."""
    out: State = {}
    for name, t in state.items():
        if not _is_anchor_param(name) or ratio <= 0:
            out[name] = t.clone()
            continue
        k = int(ratio * t.numel())
        if k == 0:
            out[name] = t.clone()
            continue
        thresh = t.abs().reshape(-1).kthvalue(k).values
        out[name] = torch.where(t.abs() <= thresh, torch.zeros_like(t), t)
    return out


def quantize_int8(state: Mapping[str, torch.Tensor]) -> State:
    """Symmetric per-tensor int8 quantisation and de-quantisation."""
    out: State = {}
    for name, t in state.items():
        scale = t.abs().max() / 127.0
        out[name] = t.clone() if scale == 0 else torch.round(t / scale).clamp(-127, 127) * scale
    return out


def add_noise(
    state: Mapping[str, torch.Tensor], *, relative: float, generator: torch.Generator
) -> State:
    """Gaussian noise with std ``relative * rms`` of each adapter tensor."""
    out: State = {}
    for name, t in state.items():
        if not _is_anchor_param(name):
            out[name] = t.clone()
            continue
        rms = t.pow(2).mean().sqrt()
        out[name] = t + relative * rms * torch.randn(
            t.shape, generator=generator, dtype=t.dtype
        )  # not-secret
    return out


def _lora_pairs(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    pairs: dict[str, dict[str, str]] = {}
    for name in state:
        m = _LORA.match(canonical_name(name))
        if m:
            pairs.setdefault(m["mod"], {})[m["ab"]] = name
    return {k: (v["A"], v["B"]) for k, v in pairs.items() if set(v) == {"A", "B"}}


def refactorize(state: Mapping[str, torch.Tensor], *, generator: torch.Generator) -> State:
    """``B' = B M``, ``A' = M^-1 A`` with a random well-conditioned ``M`` (product unchanged)."""
    out = {k: v.clone() for k, v in state.items()}
    for a_name, b_name in _lora_pairs(state).values():
        a, b = state[a_name].double(), state[b_name].double()
        r = a.shape[0]
        q, _ = torch.linalg.qr(
            torch.randn(r, r, generator=generator, dtype=torch.float64)
        )  # not-secret
        m = q @ torch.diag(
            torch.exp(torch.randn(r, generator=generator, dtype=torch.float64))
        )  # not-secret
        out[b_name] = (b @ m).to(state[b_name].dtype)
        out[a_name] = (torch.linalg.solve(m, a)).to(state[a_name].dtype)
    return out


def svd_truncate(state: Mapping[str, torch.Tensor], *, rank: int) -> State:
    """Replace each LoRA product by its best rank-``rank`` factorisation (SVD)."""
    out = {k: v.clone() for k, v in state.items()}
    for a_name, b_name in _lora_pairs(state).values():
        a, b = state[a_name].double(), state[b_name].double()
        u, s, vh = torch.linalg.svd(b @ a, full_matrices=False)
        k = min(rank, a.shape[0])
        new_b = torch.zeros_like(b)
        new_a = torch.zeros_like(a)
        new_b[:, :k] = u[:, :k] * s[:k].sqrt()
        new_a[:k, :] = s[:k].sqrt()[:, None] * vh[:k, :]
        out[b_name] = new_b.to(state[b_name].dtype)
        out[a_name] = new_a.to(state[a_name].dtype)
    return out
