"""White-box embedding: a sign (hinge) loss on a secret projection of the anchor.

For key ``k`` with projection ``P`` (``[bits, dim]``, unit rows) and message signs ``s``,
the loss is ``mean_i max(0, margin - s_i (P a)_i)`` over the flattened anchor ``a``; its
gradient pushes ``sign(P a)`` to the message and stops once every bit clears the margin.

Under DP-SGD the term is added to the already clipped and noised gradient. It is computed
from the key and the current weights only, never from a training example, so the
parameters released after the step are a post-processing of the DP mechanism's output
(the noisy gradient and the previous, already released, weights) and the privacy
guarantee is unchanged. Its norm is capped at ``max_grad_fraction`` times the clipping
norm (the largest norm the clipped task gradient can have), or times the actual task
gradient norm without DP, so the watermark can never swamp the task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .anchors import adapter_anchor, flatten
from .keys import Architecture, WatermarkKey, check_fits, message_signs, projection


class SignEmbedder:
    """One key's projection and message, held as tensors for repeated gradient steps."""

    def __init__(self, key: WatermarkKey, arch: Architecture, *, strength: float, margin: float):
        if strength <= 0 or margin < 0:
            raise ValueError(f"strength={strength} must be > 0 and margin={margin} >= 0")
        check_fits(key, arch)
        self.key = key
        self.arch = arch
        self.strength = strength
        self.margin = margin
        self.projection = torch.from_numpy(projection(key, arch))
        self.signs = torch.from_numpy(message_signs(key))

    def loss(self, vector: torch.Tensor) -> torch.Tensor:
        """Hinge loss of a flattened anchor (differentiable)."""
        scores = self.projection @ vector
        return torch.clamp(self.margin - self.signs * scores, min=0.0).mean()

    def gradients(
        self, params: Mapping[str, torch.nn.Parameter], config: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """``strength * d loss / d param`` for the anchor's parameters (others absent)."""
        names = list(params)
        with torch.enable_grad():
            vec = flatten(adapter_anchor(params, config), list(self.arch.modules))
            loss = self.loss(vec)
            if not loss.requires_grad:
                return {}
            grads = torch.autograd.grad(
                loss, [params[n] for n in names], allow_unused=True, materialize_grads=False
            )
        return {n: self.strength * g for n, g in zip(names, grads, strict=True) if g is not None}


def cap_norm(grads: dict[str, torch.Tensor], *, limit: float) -> dict[str, torch.Tensor]:
    """Scale ``grads`` down so their joint L2 norm is at most ``limit`` (never up)."""
    norm = sum(float((g.double() ** 2).sum()) for g in grads.values()) ** 0.5
    if norm <= limit or norm == 0.0:
        return grads
    factor = limit / norm
    return {n: g * factor for n, g in grads.items()}


def grad_norm(params: Mapping[str, torch.nn.Parameter]) -> float:
    """Joint L2 norm of the ``.grad`` currently held by ``params``."""
    total = 0.0
    for p in params.values():
        if p.grad is not None:
            total += float((p.grad.double() ** 2).sum())
    return total**0.5


def add_grads(params: Mapping[str, torch.nn.Parameter], grads: Mapping[str, torch.Tensor]) -> None:
    """``p.grad += g`` in place (creating ``.grad`` where absent)."""
    for name, g in grads.items():
        p = params[name]
        g = g.to(dtype=p.dtype, device=p.device)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)
