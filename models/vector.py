"""Adapter state <-> one flat float32 vector, in a fixed order.

The adapter state is exactly the parameters with ``requires_grad=True`` (adapter weights
plus any ``modules_to_save`` copy such as the classifier head), taken in
``named_parameters()`` order, which is fixed by the model's structure. Two models built
the same way therefore share a layout, so their vectors can be added element-wise.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .errors import AdapterStateError


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise AdapterStateError(
            "model has no trainable parameters; attach an adapter with attach_adapter first"
        )
    return params


def adapter_layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of each trainable parameter, in vector order."""
    return [(name, tuple(p.shape)) for name, p in _trainable(model)]


def adapter_size(model: nn.Module) -> int:
    """Number of entries of the adapter vector."""
    return sum(p.numel() for _, p in _trainable(model))


def adapter_vector(model: nn.Module) -> NDArray[np.float32]:
    """The trainable state as a new flat float32 array (a copy, safe to modify)."""
    with torch.no_grad():
        parts = [
            p.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
            for _, p in _trainable(model)
        ]
        return torch.cat(parts).numpy().copy()


def load_adapter_vector(model: nn.Module, vector: NDArray[np.floating]) -> None:
    """Write ``vector`` into the trainable parameters; the inverse of :func:`adapter_vector`."""
    array = np.asarray(vector)
    params = _trainable(model)
    expected = sum(p.numel() for _, p in params)
    if array.ndim != 1 or array.size != expected:
        raise AdapterStateError(
            f"adapter vector has shape {array.shape} but the model's adapter has {expected} "
            f"entries in {len(params)} tensors; pass a flat vector made by adapter_vector on a "
            "model with the same adapter spec, family and task"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise AdapterStateError(f"adapter vector must be floating point, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise AdapterStateError("adapter vector contains NaN or infinite values")
    source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for _, p in params:
            n = p.numel()
            p.copy_(source[offset : offset + n].view(p.shape).to(device=p.device, dtype=p.dtype))
            offset += n
