"""Local training of one client's adapter (the non-private path) and evaluation.

The private path lives in :mod:`privacy.dpsgd`; both take the same per-example ``loss_fn``
and the same ``extra_grad`` hook for data-independent gradient terms (FedProx, SCAFFOLD,
watermark), which the private path adds after clipping and noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

LossFn = Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]
ExtraGrad = Callable[[torch.nn.Module], None]


@dataclass(frozen=True)
class LocalStats:
    """What local training reports back."""

    steps: int
    mean_loss: float


def classification_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per-example cross-entropy of a sequence classifier (shape [B])."""
    input_ids, attention_mask, labels = batch
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Trainable parameters in ``named_parameters`` order (the adapter vector's order)."""
    return [p for _, p in model.named_parameters() if p.requires_grad]


def flat_trainable(model: torch.nn.Module) -> np.ndarray:
    """Trainable parameters as one float64 vector."""
    params = trainable_parameters(model)
    return torch.cat([p.detach().reshape(-1) for p in params]).double().cpu().numpy()


def vector_grad_hook(hooks: list[Callable[[np.ndarray], np.ndarray]]) -> ExtraGrad | None:
    """Turn vector-valued gradient terms into an in-place ``extra_grad(model)`` hook."""
    if not hooks:
        return None

    def extra_grad(model: torch.nn.Module) -> None:
        params = trainable_parameters(model)
        local = flat_trainable(model)
        total = np.sum([h(local) for h in hooks], axis=0)
        offset = 0
        for p in params:
            n = p.numel()
            term = torch.as_tensor(total[offset : offset + n], dtype=p.dtype).view_as(p)
            p.grad = term.clone() if p.grad is None else p.grad + term
            offset += n

    return extra_grad


def combine_hooks(hooks: list[ExtraGrad | None]) -> ExtraGrad | None:
    """One ``extra_grad`` calling each non-None hook in turn."""
    active = [h for h in hooks if h is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def combined(model: torch.nn.Module) -> None:
        for hook in active:
            hook(model)

    return combined


def make_optimizer(
    params: list[torch.nn.Parameter], *, kind: str, lr: float
) -> torch.optim.Optimizer:
    """The local optimiser: plain SGD or AdamW (no weight decay on adapters)."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    raise ValueError(f"unknown optimizer {kind!r}; choose sgd or adamw")


def train_local(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    loss_fn: LossFn,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    extra_grad: ExtraGrad | None,
    seed: int,
) -> LocalStats:
    """Mini-batch training of the trainable parameters; deterministic for the same seed."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen)
    opt = make_optimizer(trainable_parameters(model), kind=optimizer, lr=lr)
    model.train()
    steps, total = 0, 0.0
    for _ in range(epochs):
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch).mean()
            loss.backward()
            if extra_grad is not None:
                extra_grad(model)
            opt.step()
            steps += 1
            total += float(loss.detach())
    return LocalStats(steps=steps, mean_loss=total / max(steps, 1))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, dataset: Dataset, *, batch_size: int = 256
) -> dict[str, float]:
    """Mean per-example loss and accuracy (argmax of logits) on ``dataset``."""
    model.eval()
    losses, correct, count = 0.0, 0, 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        input_ids, attention_mask, labels = batch
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        losses += float(per_example.sum())
        correct += int((logits.argmax(-1) == labels).sum())
        count += len(labels)
    return {"loss": losses / max(count, 1), "accuracy": correct / max(count, 1)}
