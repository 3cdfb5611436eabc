"""Per-example losses, shape ``[B]``, for DP-SGD.

DP-SGD bounds each example's influence by clipping that example's gradient, so the loss
must be a sum (or mean) of independent per-example terms. For language models each
sequence's loss is the mean over ITS non-ignored tokens; the caller then averages over
sequences. Hugging Face's built-in causal-LM loss averages over all tokens of the batch,
which weights an example by its share of the batch's tokens and couples examples: never
use it under DP.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from .errors import PrivacyConfigError


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example: logits ``[B, C]``, labels ``[B]`` -> ``[B]``."""
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise PrivacyConfigError(
            f"classification_loss needs logits [B, C] and labels [B], got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return functional.cross_entropy(logits, labels, reduction="none")


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, shift: bool = True
) -> torch.Tensor:
    """Next-token cross-entropy per sequence: mean over that sequence's counted tokens.

    ``logits`` is ``[B, T, V]`` and ``labels`` ``[B, T]``. With ``shift`` (the Hugging Face
    convention, labels = input ids) position ``t`` predicts label ``t + 1``. Tokens equal to
    ``ignore_index`` do not count; a sequence with no counted token has loss 0.
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise PrivacyConfigError(
            f"causal_lm_loss needs logits [B, T, V] and labels [B, T], got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if shift:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    token_loss = functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    ).view(labels.shape)
    counted = (labels != ignore_index).to(token_loss.dtype)
    return (token_loss * counted).sum(dim=1) / counted.sum(dim=1).clamp(min=1.0)
