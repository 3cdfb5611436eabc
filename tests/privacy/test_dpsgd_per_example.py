"""DP-SGD's per-example gradients beyond the plain layer-by-layer case: a layer used twice,
a layer without an Opacus rule (functorch), wide and narrow linear layers on 4-d inputs,
physical batches, and the refusals where per-example gradients cannot be taken."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from privacy import ClientAccountant, UnsupportedUnderDP, classification_loss, train_private

from .test_dpsgd import assert_update_matches, explicit_clipped_mean, run_full_batch


def xy_loss(model, batch):
    x, y = batch
    return classification_loss(model(x), y)


def xy_data(n: int, shape: tuple[int, ...], seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)
    )


class SharedLayer(torch.nn.Module):
    """The same Linear applied twice: its per-example gradients must add up."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 6)
        self.out = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))).mean(1))


class Scale(torch.nn.Module):
    """A layer with no registered Opacus rule (functorch computes its gradients)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x):
        return x * self.weight


class WideNarrow(torch.nn.Module):
    """Linear layers with out < in and out > in on [B, T, S, k] inputs (both bmm orders)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = torch.nn.Linear(12, 3, bias=False)
        self.up = torch.nn.Linear(3, 12)
        self.scale = Scale(12)
        self.head = torch.nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.scale(torch.tanh(self.up(self.down(x)))).mean((1, 2)))


@pytest.mark.parametrize(
    ("model_cls", "shape", "physical"),
    [(SharedLayer, (4, 6), 3), (WideNarrow, (2, 3, 12), 4), (WideNarrow, (2, 3, 12), 16)],
)
def test_clipped_update_matches_explicit_loop(model_cls, shape, physical):
    torch.manual_seed(0)
    model = model_cls()
    data = xy_data(9, shape)
    ref = copy.deepcopy(model)
    expected = explicit_clipped_mean(ref, data, xy_loss, clip=0.1)
    run_full_batch(model, data, xy_loss, clip=0.1, physical=physical)
    assert_update_matches(ref, model, expected)


def test_hooks_removed_after_training():
    model = WideNarrow()
    train_private(
        model, xy_data(8, (2, 3, 12)), loss_fn=xy_loss, epochs=1, batch_size=4, lr=0.1,
        noise_multiplier=1.0, max_grad_norm=1.0, accountant=ClientAccountant(delta=1e-5),
    )  # fmt: skip
    assert all(not m._forward_hooks for m in model.modules())
    assert not hasattr(model.scale, "ft_compute_sample_grad")
    assert all(p.grad is None and not hasattr(p, "grad_sample") for p in model.parameters())


class InPlaceAfter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 3)

    def forward(self, x):
        out = self.lin(x.mean(1))
        out.mul_(2.0)  # changes the tensor the per-example gradients would be taken from
        return out


def test_output_modified_in_place_is_refused():
    with pytest.raises(UnsupportedUnderDP, match="in place"):
        train_private(
            InPlaceAfter(), xy_data(8, (4, 6)), loss_fn=xy_loss, epochs=1, batch_size=4,
            lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0,
            accountant=ClientAccountant(delta=1e-5),
        )  # fmt: skip


def test_accountant_sees_every_step_with_split_batches():
    acc = ClientAccountant(delta=1e-5)
    stats = train_private(
        WideNarrow(), xy_data(40, (2, 3, 12)), loss_fn=xy_loss, epochs=2, batch_size=20,
        lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0, accountant=acc,
        max_physical_batch_size=3, seed=1,
    )  # fmt: skip
    assert stats.steps == acc.steps == 4
    assert acc.history == [(1.0, 0.5, 4)]
