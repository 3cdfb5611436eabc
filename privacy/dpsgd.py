"""Sample-level DP-SGD for one client's local training (Opacus per-layer gradients).

One call trains the model's trainable parameters for ``epochs`` passes of Poisson-sampled
logical batches (expected size ``batch_size``, Opacus' ``UniformWithReplacementSampler``),
split into physical batches of at most ``max_physical_batch_size`` the way Opacus'
``BatchMemoryManager`` splits them. Each logical step clips every example's gradient to
``max_grad_norm``, adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` to the
sum, divides by the expected batch size, then adds the caller's data-independent terms
(``extra_grad``: FedProx, SCAFFOLD, watermark) and steps the optimizer; the client's
:class:`~privacy.accounting.ClientAccountant` accounts every step, so it keeps growing
over rounds.

Per-example gradients use Opacus' per-layer rules (exact for ``nn.Linear``,
``nn.Embedding``, norms, ...; functorch for other layers) on the gradients autograd gives
for the hooked layers' outputs (see :class:`_PerExampleGrads`); clipping and noise treat
all trainable parameters as one vector (see :class:`_ClippedSum`). Both do Opacus' hooks
mode and ``DPOptimizer`` arithmetic with less work and Python per step.

Randomness: batch sampling and noise use ``torch.Generator``s seeded from ``seed``; with
``seed=None`` (the default) the seeds come from :mod:`secrets`. A fixed seed makes the
noise reproducible by anyone who knows it: use it for experiments only. Opacus'
``secure_mode`` (noise robust to floating-point attacks, needs torchcsprng) is off for
speed; the Gaussian noise is ordinary ``torch.normal`` output.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from .accounting import ClientAccountant
from .adapter_support import check_dp_support
from .errors import PrivacyConfigError, UnsupportedUnderDP
from .guards import NamedParams, check_grad_samples, check_params_changed, fingerprint

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


_EMPTY = object()  # an empty Poisson batch (the model is not run on it)


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


GradSampler = Callable[[torch.nn.Module, list[torch.Tensor], torch.Tensor], dict[Any, torch.Tensor]]
_Record = tuple[GradSampler, torch.nn.Module, list[Any], torch.Tensor, int]


def _linear_rule(
    layer: Any, acts: list[torch.Tensor], grad: torch.Tensor
) -> dict[Any, torch.Tensor]:
    """Opacus' ``nn.Linear`` rule, ``sum_t grad_t a_t^T`` per example, as a faster bmm.

    ``bmm(x^T, y)`` is several times faster on CPU with the smaller dimension in ``x``, so
    LoRA ``B`` matrices (``out > in``) get their gradients computed transposed (a view).
    """
    a = acts[0].to(grad.dtype)
    g3, a3 = grad.reshape(grad.shape[0], -1, grad.shape[-1]), a.reshape(a.shape[0], -1, a.shape[-1])
    out: dict[Any, torch.Tensor] = {}
    if layer.weight.requires_grad:
        if g3.shape[-1] <= a3.shape[-1]:
            out[layer.weight] = torch.bmm(g3.transpose(1, 2), a3)
        else:
            out[layer.weight] = torch.bmm(a3.transpose(1, 2), g3).transpose(1, 2)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g3.sum(dim=1)
    return out


class _PerExampleGrads:
    """Per-example gradients (``p.grad_sample``, ``[B, *p.shape]``) from Opacus' layer rules.

    The modules Opacus' hooks mode hooks (own trainable parameters; one without a rule is
    handled by functorch as a whole) get a forward hook keeping input and output.
    :meth:`backward` asks autograd for the loss gradient with respect to those outputs
    only and applies the layer rule to each (input, output gradient): Opacus' per-example
    gradients without its backward hooks' extra autograd nodes and without the batch
    gradients of the parameters, which DP-SGD does not use (unless asked for).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        from opacus.grad_sample import GradSampleHooks
        from opacus.grad_sample.functorch import ft_compute_per_sample_gradient, prepare_layer

        GradSampleHooks.validate(module=model, strict=True)  # no trainable layer with buffers
        self.records: list[_Record] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.prepared: list[torch.nn.Module] = []
        todo = [model]
        try:
            while todo:
                module = todo.pop()
                own = any(p.requires_grad for p in module.parameters(recurse=False))
                rule: GradSampler | None = GradSampleHooks.GRAD_SAMPLERS.get(type(module))
                rule = _linear_rule if type(module) is torch.nn.Linear else rule
                if own:
                    if rule is None:  # functorch covers the module with its children
                        self.prepared.append(module)
                        prepare_layer(module, batch_first=True)
                    fn = rule or ft_compute_per_sample_gradient
                    self.handles.append(module.register_forward_hook(self._hook(fn)))
                if not own or rule is not None:
                    todo.extend(module.children())
        except BaseException:
            self.cleanup()
            raise

    def _hook(self, fn: GradSampler) -> Callable[..., None]:
        def forward(module: torch.nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not (module.training and torch.is_grad_enabled()):
                return
            if not isinstance(output, torch.Tensor):
                raise UnsupportedUnderDP(
                    f"{type(module).__name__} has trainable parameters but returns "
                    f"{type(output).__name__}, not one tensor: no per-example gradients"
                )
            if output.requires_grad:
                acts = [t.detach() if isinstance(t, torch.Tensor) else t for t in inputs]
                self.records.append((fn, module, acts, output, output._version))

        return forward

    def backward(
        self, loss: torch.Tensor, params: list[torch.nn.Parameter]
    ) -> tuple[torch.Tensor | None, ...]:
        """Per-example gradients of ``loss`` into ``grad_sample``; gradients of ``params``."""
        records, self.records = self.records, []
        outputs = [r[3] for r in records]
        for _, module, _, out, version in records:
            if out._version != version:
                raise UnsupportedUnderDP(
                    f"the output of {type(module).__name__} is modified in place after the "
                    f"layer ran: its per-example gradients cannot be taken from it"
                )
        if not outputs and not params:
            return ()
        grads = torch.autograd.grad(loss, [*outputs, *params], allow_unused=True)
        for (fn, module, acts, _, _), g in zip(records, grads, strict=False):
            if g is None:
                continue
            for p, gs in fn(module, acts, g).items():
                if p.requires_grad:
                    prev = getattr(p, "grad_sample", None)  # a layer used twice: add up
                    p.grad_sample = gs if prev is None else prev + gs
        return grads[len(outputs) :]

    def cleanup(self) -> None:
        self.records = []
        for handle in self.handles:
            handle.remove()
        for module in self.prepared:
            if hasattr(module, "ft_compute_sample_grad"):
                del module.ft_compute_sample_grad


class _ClippedSum:
    """Sum over a logical batch of per-example gradients clipped to L2 norm ``max_norm``.

    One ``[B, D]`` matrix for all parameters: one norm and one matrix-vector product per
    physical batch; Opacus' clip factor ``min(1, max_norm / (norm + 1e-6))``.
    """

    def __init__(self, named: NamedParams, max_norm: float) -> None:
        params = [p for _, p in named]
        if len({p.device for p in params}) > 1:
            raise UnsupportedUnderDP("DP-SGD needs all trainable parameters on one device")
        dtype = functools.reduce(torch.promote_types, [p.dtype for p in params])
        self.params, self.max_norm, self.dtype = params, max_norm, dtype
        self.sizes = [p.numel() for p in params]
        self.total = torch.zeros(sum(self.sizes), dtype=dtype, device=params[0].device)

    def add_batch(self, batch_size: int) -> None:
        rows = [
            p.new_zeros(batch_size, p.numel()) if p.grad_sample is None  # type: ignore[attr-defined]
            else p.grad_sample.reshape(batch_size, -1)  # type: ignore[attr-defined]
            for p in self.params
        ]  # fmt: skip
        flat = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
        flat = flat.to(self.dtype)
        norms = torch.linalg.vector_norm(flat, dim=1)
        factor = (self.max_norm / (norms + 1e-6)).clamp(max=1.0)
        self.total.addmv_(flat.T, factor)

    def release(self, *, noise_std: float, generator: torch.Generator, divisor: float) -> None:
        """Add noise to the sum, divide it, set it as the parameters' ``.grad``; restart."""
        total = self.total
        if noise_std > 0:
            total.add_(
                torch.normal(0.0, noise_std, total.shape, generator=generator,
                             dtype=total.dtype, device=total.device)
            )  # fmt: skip
        total.div_(divisor)
        for p, g in zip(self.params, total.split(self.sizes), strict=True):
            p.grad = g.view_as(p).to(p.dtype)
        self.total = torch.zeros_like(total)


def _physical_batches(
    logical: list[list[int]], max_physical: int
) -> tuple[list[list[int]], list[bool]]:
    """Split each logical batch as ``BatchMemoryManager`` does; flag each one's last part."""
    parts: list[list[int]] = []
    last: list[bool] = []
    for idx in logical:
        k = max(1, math.ceil(len(idx) / max_physical))
        parts += [c.tolist() for c in np.array_split(np.asarray(idx), k)] if k > 1 else [idx]
        last += [False] * (k - 1) + [True]
    return parts, last


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
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    _check_args(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        max_physical_batch_size=max_physical_batch_size,
    )  # fmt: skip
    _validate_model(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sched = dp_schedule(dataset_size=len(dataset), batch_size=batch_size, epochs=epochs)  # type: ignore[arg-type]
    q = sched.sample_rate
    accountant.check_budget(noise_multiplier=noise_multiplier, sample_rate=q, steps=sched.steps)
    if seed is not None:
        logger.debug("DP-SGD noise seeded from seed=%d: reproducible, experiments only", seed)
    clipped = _ClippedSum(named, max_grad_norm)
    sample_gen = torch.Generator().manual_seed(_seed(seed, "sampling"))
    noise_gen = torch.Generator(device=clipped.total.device).manual_seed(_seed(seed, "noise"))
    sampler = UniformWithReplacementSampler(
        num_samples=len(dataset), sample_rate=q, generator=sample_gen, steps=sched.steps,  # type: ignore[arg-type]
    )  # fmt: skip
    parts, last = _physical_batches(list(sampler), max_physical_batch_size)
    loader = DataLoader(
        dataset, batch_sampler=parts, collate_fn=_EmptyAwareCollate(collate_fn or default_collate)
    )
    try:
        hooks = _PerExampleGrads(model)
    except NotImplementedError as exc:
        raise UnsupportedUnderDP(f"Opacus cannot compute per-example gradients: {exc}") from exc
    was_training = model.training
    model.train()  # per-example gradients are captured in training mode; restored on exit
    steps, examples, loss_sum = 0, 0, 0.0
    try:
        base = _OPTIMIZERS[optimizer]([p for _, p in named], lr)
        _clear(named)
        grads_checked = False
        for batch, ends_step in zip(loader, last, strict=True):
            if batch is not _EMPTY:
                hooks.records.clear()  # e.g. forward passes of extra_grad: not this batch's
                losses = loss_fn(model, batch)
                if losses.dim() != 1 or not losses.requires_grad:
                    raise PrivacyConfigError(
                        f"loss_fn must return per-example losses of shape [B] with grad, got "
                        f"shape {tuple(losses.shape)}: see privacy.losses"
                    )
                n = losses.shape[0]
                if grads_checked:
                    hooks.backward(losses.sum(), [])
                else:  # batch gradients too, once, for the check against per-example ones
                    batch_grads = hooks.backward(losses.sum(), [p for _, p in named])
                    for (_, p), g in zip(named, batch_grads, strict=True):
                        p.grad = g
                    check_grad_samples(named, batch_size=n)
                    grads_checked = True
                loss_sum += float(losses.detach().sum())
                examples += n
                clipped.add_batch(n)
                _clear(named)
            if ends_step:
                clipped.release(
                    noise_std=noise_multiplier * max_grad_norm, generator=noise_gen,
                    divisor=sched.expected_batch_size,
                )  # fmt: skip
                accountant.step(noise_multiplier=noise_multiplier, sample_rate=q)
                if extra_grad is not None:
                    extra_grad(model)
                if steps == 0:
                    _checked_step(model, base, named, noise_multiplier)
                else:
                    base.step()
                steps += 1
                _clear(named)
    finally:
        hooks.cleanup()
        for _, p in named:
            p.grad = None
            if hasattr(p, "grad_sample"):
                del p.grad_sample
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


def _clear(named: NamedParams) -> None:
    for _, p in named:
        p.grad = None
        p.grad_sample = None  # type: ignore[attr-defined]


def _checked_step(
    model: torch.nn.Module, base: torch.optim.Optimizer, named: NamedParams, noise: float
) -> None:
    """The first optimizer step, with the Opacus-820 guard (the parameters must move)."""
    before = fingerprint(named)
    any_grad = any(p.grad is not None and bool(p.grad.any()) for _, p in named)
    base.step()
    names = [n for n, _ in named]
    check_params_changed(model, before, names=names, noise_multiplier=noise, any_grad=any_grad)
