"""Per-example losses: one value per example, independent of the rest of the batch."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from privacy import PrivacyConfigError, causal_lm_loss, classification_loss


def test_causal_lm_loss_is_mean_over_each_sequences_own_tokens():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, 2:] = -100  # 1 counted target after the shift
    labels[2, :] = -100  # nothing counted
    got = causal_lm_loss(logits, labels)
    assert got.shape == (3,)
    for b in range(3):
        lg, lb = logits[b, :-1], labels[b, 1:]
        keep = lb != -100
        want = F.cross_entropy(lg[keep], lb[keep]) if keep.any() else torch.tensor(0.0)
        torch.testing.assert_close(got[b], want)
    # the batch-wide token mean (Hugging Face's reduction) weighs sequences differently
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    assert not torch.allclose(got[:2].mean(), hf)


def test_causal_lm_loss_of_an_example_does_not_depend_on_the_batch():
    torch.manual_seed(1)
    logits = torch.randn(4, 5, 7)
    labels = torch.randint(0, 7, (4, 5))
    labels[1, 3:] = -100
    batch = causal_lm_loss(logits, labels)
    alone = torch.stack([causal_lm_loss(logits[i : i + 1], labels[i : i + 1])[0] for i in range(4)])
    torch.testing.assert_close(batch, alone)


def test_causal_lm_loss_without_shift_and_custom_ignore():
    logits = torch.zeros(1, 3, 4)
    labels = torch.tensor([[1, -1, 2]])
    got = causal_lm_loss(logits, labels, ignore_index=-1, shift=False)
    torch.testing.assert_close(got, torch.tensor([torch.log(torch.tensor(4.0)).item()]))


def test_classification_loss_per_example_and_shape_checks():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    got = classification_loss(logits, torch.tensor([0, 0]))
    assert got.shape == (2,) and got[0] < got[1]
    with pytest.raises(PrivacyConfigError):
        classification_loss(logits, torch.tensor([[0], [1]]))
    with pytest.raises(PrivacyConfigError):
        causal_lm_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
