"""Sample-level DP-SGD for one client's local training (Opacus, hooks mode).

One call trains the model's trainable parameters for ``epochs`` passes of Poisson-sampled
logical batches (expected size ``batch_size``), split into physical batches of at most
``max_physical_batch_size`` by Opacus' ``BatchMemoryManager``. Each logical step clips
every example's gradient to ``max_grad_norm``, adds Gaussian noise of std
``noise_multiplier * max_grad_norm`` to the sum, divides by the expected batch size, then
adds the caller's data-independent terms (``extra_grad``: FedProx, SCAFFOLD, watermark)
and steps the optimizer. The client's :class:`~privacy.accounting.ClientAccountant` is
stepped by the optimizer hook, so it keeps growing over rounds.

Randomness: batch sampling and noise use ``torch.Generator``s seeded from ``seed``; with
``seed=None`` (the default) the seeds come from :mod:`secrets`. A fixed seed makes the
noise reproducible by anyone who knows it: use it for experiments only. Opacus'
``secure_mode`` (noise robust to floating-point attacks, needs torchcsprng) is off for
speed; the Gaussian noise is ordinary ``torch.normal`` output.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from .accounting import ClientAccountant
from .adapter_support import check_dp_support
from .errors import PrivacyConfigError, UnsupportedUnderDP
from .guards import check_grad_samples, check_params_changed, fingerprint

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
ExtraGrad = Callable[[torch.nn.Module], None]

_OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
}


@dataclass(frozen=True)
class DPSchedule:
    """Poisson sampling schedule of one local training call."""

    sample_rate: float
    steps_per_epoch: int
    steps: int
    expected_batch_size: float


@dataclass(frozen=True)
class TrainStats:
    """What private local training reports.

    ``mean_loss`` is computed on private data without noise: keep it on the client unless
    the threat model allows releasing it. ``epsilon`` is the client's cumulative spend.
    """

    steps: int
    mean_loss: float
    examples: int
    sample_rate: float
    noise_multiplier: float
    epsilon: float
    delta: float


def dp_schedule(*, dataset_size: int, batch_size: int, epochs: int) -> DPSchedule:
    """Sample rate ``batch_size / dataset_size`` (capped at 1) and ``epochs * N // B`` steps."""
    if dataset_size < 1:
        raise PrivacyConfigError(f"dataset_size must be >= 1, got {dataset_size}")
    if batch_size < 1 or epochs < 1:
        raise PrivacyConfigError(f"batch_size and epochs must be >= 1, got {batch_size}, {epochs}")
    rate = min(1.0, batch_size / dataset_size)
    per_epoch = max(1, dataset_size // batch_size)
    return DPSchedule(
        sample_rate=rate,
        steps_per_epoch=per_epoch,
        steps=per_epoch * epochs,
        expected_batch_size=rate * dataset_size,
    )


class _Empty:
    """Marker for an empty Poisson batch (the model is not run on it)."""


_EMPTY = _Empty()


class _EmptyAwareCollate:
    def __init__(self, fn: Callable[[list[Any]], Any]) -> None:
        self.fn = fn

    def __call__(self, items: list[Any]) -> Any:
        return _EMPTY if len(items) == 0 else self.fn(items)


def _seed(seed: int | None, purpose: str) -> int:
    if seed is None:
        return secrets.randbits(63)
    digest = hashlib.sha256(f"secfed-dpsgd:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _check_args(
    *, epochs: int, batch_size: int, lr: float, optimizer: str, noise_multiplier: float,
    max_grad_norm: float, max_physical_batch_size: int,
) -> None:  # fmt: skip
    if optimizer not in _OPTIMIZERS:
        raise PrivacyConfigError(
            f"unknown optimizer {optimizer!r}; choose one of {', '.join(sorted(_OPTIMIZERS))}"
        )
    if not (lr > 0) or not math.isfinite(lr):
        raise PrivacyConfigError(f"lr must be > 0, got {lr}")
    if not (noise_multiplier >= 0) or not math.isfinite(noise_multiplier):
        raise PrivacyConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not (max_grad_norm > 0) or not math.isfinite(max_grad_norm):
        raise PrivacyConfigError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    if max_physical_batch_size < 1 or epochs < 1 or batch_size < 1:
        raise PrivacyConfigError(
            f"epochs, batch_size, max_physical_batch_size must be >= 1, got "
            f"{epochs}, {batch_size}, {max_physical_batch_size}"
        )


def _validate_model(model: torch.nn.Module) -> None:
    from opacus.validators import ModuleValidator

    check_dp_support(model)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise UnsupportedUnderDP(
            f"model has layers DP-SGD cannot handle: {errors[0]}; replace them (e.g. BatchNorm "
            f"by GroupNorm/LayerNorm) or freeze and remove them"
        )


def train_private(
    model: torch.nn.Module,
    dataset: Dataset[Any],
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    loss_fn: LossFn,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "sgd",
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: ClientAccountant,
    max_physical_batch_size: int = 32,
    extra_grad: ExtraGrad | None = None,
    seed: int | None = None,
) -> TrainStats:
    """Train ``model``'s trainable parameters in place with DP-SGD; see the module docs.

    ``loss_fn(model, batch)`` must return per-example losses of shape ``[B]`` (see
    :mod:`privacy.losses`). Raises :class:`~privacy.errors.PrivacyBudgetExceeded` before
    training where the planned steps would pass the accountant's budget, and
    :class:`~privacy.errors.UnsupportedUnderDP` for adapters or layers DP-SGD would get wrong.
    """
    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    _check_args(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        max_physical_batch_size=max_physical_batch_size,
    )  # fmt: skip
    was_training = model.training
    model.train()  # Opacus needs training mode; restored on exit
    _validate_model(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sched = dp_schedule(dataset_size=len(dataset), batch_size=batch_size, epochs=epochs)  # type: ignore[arg-type]
    q = sched.sample_rate
    accountant.check_budget(noise_multiplier=noise_multiplier, sample_rate=q, steps=sched.steps)
    if seed is not None:
        logger.debug("DP-SGD noise seeded from seed=%d: reproducible, experiments only", seed)
    device = named[0][1].device
    sample_gen = torch.Generator().manual_seed(_seed(seed, "sampling"))
    noise_gen = torch.Generator(device=device).manual_seed(_seed(seed, "noise"))

    try:
        hooks = GradSampleHooks(model, batch_first=True, loss_reduction="sum", strict=True)
    except NotImplementedError as exc:
        raise UnsupportedUnderDP(f"Opacus cannot compute per-example gradients: {exc}") from exc
    steps, examples, loss_sum = 0, 0, 0.0
    try:
        base = _OPTIMIZERS[optimizer]([p for _, p in named], lr)
        dp_opt = DPOptimizer(
            base,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=sched.expected_batch_size,
            loss_reduction="mean",
            generator=noise_gen,
            secure_mode=False,
        )
        dp_opt.attach_step_hook(accountant.optimizer_hook(sample_rate=q))
        sampler = UniformWithReplacementSampler(
            num_samples=len(dataset),  # type: ignore[arg-type]
            sample_rate=q,
            generator=sample_gen,
            steps=sched.steps,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=_EmptyAwareCollate(collate_fn or default_collate),
        )
        dp_opt.zero_grad(set_to_none=True)
        grads_checked = step_checked = False
        with BatchMemoryManager(
            data_loader=loader, max_physical_batch_size=max_physical_batch_size, optimizer=dp_opt
        ) as physical:
            for batch in physical:
                if batch is _EMPTY:
                    for _, p in named:
                        p.grad_sample = p.new_zeros((0, *p.shape))  # type: ignore[attr-defined]
                else:
                    losses = loss_fn(model, batch)
                    if losses.dim() != 1 or not losses.requires_grad:
                        raise PrivacyConfigError(
                            f"loss_fn must return per-example losses of shape [B] with grad, got "
                            f"shape {tuple(losses.shape)}: see privacy.losses"
                        )
                    with warnings.catch_warnings():
                        # Opacus' hooks on a first layer whose input needs no grad: harmless
                        warnings.filterwarnings("ignore", message="Full backward hook is firing")
                        losses.sum().backward()
                    loss_sum += float(losses.detach().sum())
                    examples += losses.shape[0]
                    if not grads_checked:
                        check_grad_samples(named, batch_size=losses.shape[0])
                        grads_checked = True
                if dp_opt.pre_step():
                    if extra_grad is not None:
                        extra_grad(model)
                    if not step_checked:
                        before = fingerprint(named)
                        any_grad = any(p.grad is not None and bool(p.grad.any()) for _, p in named)
                    base.step()
                    steps += 1
                    if not step_checked:
                        check_params_changed(
                            model,
                            before,
                            names=[n for n, _ in named],
                            noise_multiplier=noise_multiplier,
                            any_grad=any_grad,
                        )
                        step_checked = True
                dp_opt.zero_grad(set_to_none=True)
    finally:
        hooks.cleanup()
        for _, p in named:
            if hasattr(p, "summed_grad"):
                del p.summed_grad
            p.grad = None
        model.train(was_training)
    return TrainStats(
        steps=steps,
        mean_loss=loss_sum / max(examples, 1),
        examples=examples,
        sample_rate=q,
        noise_multiplier=noise_multiplier,
        epsilon=accountant.epsilon(),
        delta=accountant.delta,
    )
