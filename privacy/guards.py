"""Run-time checks that private training really trains, with correct per-example gradients.

- :func:`check_grad_samples` (first non-empty physical batch): every trainable parameter
  has a per-example gradient of shape ``[B, *shape]`` whose sum over the batch equals
  autograd's gradient of the summed loss. A layer Opacus handles wrongly, or a parameter
  used outside the hooked layers (e.g. a tied weight in a functional call), fails here.
- :func:`check_params_changed` (first optimizer step): the model's trainable parameters
  moved. Guards against Opacus issue 820, where the model was moved or re-materialised
  after wrapping, so the optimizer updated orphan tensors while epsilon accumulated.
"""

from __future__ import annotations

import torch

from .errors import PrivacyError, UnsupportedUnderDP

NamedParams = list[tuple[str, torch.nn.Parameter]]

_RTOL = 1e-4


def check_grad_samples(named: NamedParams, *, batch_size: int) -> None:
    """Raise :class:`UnsupportedUnderDP` unless per-example gradients are consistent."""
    for name, p in named:
        gs = getattr(p, "grad_sample", None)
        if gs is None:
            raise UnsupportedUnderDP(
                f"trainable parameter {name} got no per-example gradient: it is unused in the "
                f"forward pass or used outside a layer Opacus hooks; freeze it (requires_grad="
                f"False) or use a supported adapter such as LoRA"
            )
        if isinstance(gs, list):
            gs = torch.cat(gs, dim=0)
        if tuple(gs.shape) != (batch_size, *p.shape):
            raise UnsupportedUnderDP(
                f"per-example gradient of {name} has shape {tuple(gs.shape)}, expected "
                f"{(batch_size, *p.shape)}: the layer is not batch-first or mixes examples"
            )
        total = gs.detach().double().sum(dim=0)
        grad = torch.zeros_like(total) if p.grad is None else p.grad.detach().double()
        err = float((total - grad).norm())
        scale = float(gs.detach().double().abs().sum(dim=0).norm())
        if err > _RTOL * scale + 1e-12:
            raise UnsupportedUnderDP(
                f"per-example gradients of {name} do not add up to its gradient (error "
                f"{err:.3g} vs scale {scale:.3g}): Opacus does not handle this layer correctly"
            )


def fingerprint(named: NamedParams) -> list[tuple[float, float]]:
    """Cheap per-parameter signature (sum and sum of squares, float64)."""
    out = []
    with torch.no_grad():
        for _, p in named:
            d = p.detach().double()
            out.append((float(d.sum()), float((d * d).sum())))
    return out


def check_params_changed(
    model: torch.nn.Module,
    before: list[tuple[float, float]],
    *,
    names: list[str],
    noise_multiplier: float,
    any_grad: bool,
) -> None:
    """Raise :class:`PrivacyError` where the first private step left the model unchanged.

    ``before`` is :func:`fingerprint` of the trainable parameters ``names`` taken just
    before the step. With noise every parameter must move; without noise at least one must
    move unless every gradient was zero (``any_grad`` False).
    """
    current = dict(model.named_parameters())
    missing = [n for n in names if n not in current]
    if missing:
        raise PrivacyError(
            f"parameters {missing[:3]} are no longer in the model: it was rebuilt or moved after "
            f"private training started (Opacus issue 820); build the model before training"
        )
    after = fingerprint([(n, current[n]) for n in names])
    unchanged = [n for n, b, a in zip(names, before, after, strict=True) if a == b]
    if noise_multiplier > 0 and unchanged:
        what = "none of the trainable parameters" if len(unchanged) == len(names) else "some"
        raise PrivacyError(
            f"{what} changed after the first private step ({unchanged[:3]}): the optimizer is "
            f"updating tensors that are not the model's (Opacus issue 820, e.g. the model was "
            f"moved to another device after wrapping) or the learning rate is too small"
        )
    if noise_multiplier == 0 and any_grad and len(unchanged) == len(names):
        raise PrivacyError(
            "no trainable parameter changed after the first private step although gradients "
            "were non-zero: the optimizer does not update the model's tensors (Opacus issue 820)"
        )
