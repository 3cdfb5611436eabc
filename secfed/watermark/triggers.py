"""Black-box trigger embedding: a data-independent gradient term on the owner's trigger set.

The owner's triggers (random token sequences with random labels, both from its key) are
its own, non-private data. Each local step adds the gradient of the classification loss on
the next ``batch`` triggers, in a fixed cyclic order (each round starting where the
plugin says), so every trigger is rehearsed every few steps whatever the client's dataset
size. Under DP-SGD the term is added after
clipping and noise (like the white-box term), so the private examples' guarantee is
unchanged and the triggers are not diluted by the noise meant to hide private examples.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from crypto import watermark as wm

from ..training import classification_loss


class TriggerRehearsal:
    """Cyclic mini-batches of one key's triggers and their loss gradient."""

    def __init__(
        self, key: wm.WatermarkKey, domain: wm.TriggerDomain, *, batch: int, weight: float
    ):
        if batch < 1 or weight <= 0:
            raise ValueError(f"trigger batch {batch} and weight {weight} must be positive")
        self.ids = torch.from_numpy(wm.trigger_token_ids(key, domain))
        self.labels = torch.from_numpy(wm.trigger_labels(key, domain))
        self.batch = min(batch, len(self.ids))
        self.weight = weight

    @property
    def count(self) -> int:
        """Number of triggers."""
        return len(self.ids)

    def gradients(
        self, model: torch.nn.Module, params: Mapping[str, torch.nn.Parameter], *, start: int
    ) -> tuple[dict[str, torch.Tensor], int]:
        """``weight x`` the mean-loss gradient on triggers ``start, start+1, ...`` (cyclic),
        and where the next batch starts."""
        idx = (torch.arange(self.batch) + start) % len(self.ids)
        ids, labels = self.ids[idx], self.labels[idx]
        losses = classification_loss(model, (ids, torch.ones_like(ids), labels))
        names = list(params)
        grads = torch.autograd.grad(
            self.weight * losses.mean(), [params[n] for n in names], allow_unused=True
        )
        found = {n: g for n, g in zip(names, grads, strict=True) if g is not None}
        return found, int(idx[-1]) + 1
