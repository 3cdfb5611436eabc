"""Canaries for the one-run audit: crafted client updates and random-label examples."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import TensorDataset


def secret_rng() -> np.random.Generator:
    """The auditor's generator: canary choices must be unpredictable to the trained job."""
    return np.random.default_rng(secrets.randbits(128))


def coin_flips(m: int, rng: np.random.Generator) -> NDArray[np.bool_]:
    """Which of ``m`` canaries are included: independent fair coins."""
    return rng.random(m) < 0.5


@dataclass
class UpdateCanaries:
    """Canary clients for user-level DP: canary ``j`` (if included) submits ``norm * u_j``
    every round it is sampled, ``u_j`` a random unit vector in the first ``dim`` coordinates
    (the adapter), zero elsewhere (SCAFFOLD's control block). Score: ``<theta_T - theta_0, u_j>``.
    """

    directions: NDArray[np.float64]  # (m, dim) unit rows
    included: NDArray[np.bool_]
    norm: float

    @classmethod
    def draw(cls, m: int, dim: int, *, norm: float, rng: np.random.Generator) -> UpdateCanaries:
        d = rng.standard_normal((m, dim))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return cls(d, coin_flips(m, rng), norm)

    def payload(self, j: int, width: int) -> NDArray[np.float64]:
        out = np.zeros(width)
        out[: self.directions.shape[1]] = self.norm * self.directions[j]
        return out

    def scores(self, start: NDArray[np.float64], end: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(self.directions @ (end - start)[: self.directions.shape[1]])


def _distinct_tokens(m: int, low: int, high: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """``m`` tokens from ``[low, high)``, each used as rarely as possible (all distinct when
    ``m <= high - low``): a random permutation, repeated."""
    pool = high - low
    rounds = [rng.permutation(pool) for _ in range(-(-m // pool))]
    return np.asarray(np.concatenate(rounds)[:m] + low, dtype=np.int64)


@dataclass
class ExampleCanaries:
    """Random-label canary examples for sample-level DP: uniformly random token sequences
    (no special tokens) with uniformly random labels, the first token (the one a BERT
    classifier pools) spread evenly over the vocabulary so that canaries share as little as
    possible and memorising one says little about another. Score (:meth:`scores`): the gain
    in log-probability of the canary's label from the initial to the final model, minus the
    mean gain of all canaries with the same label; it depends on the models and the public
    canaries only, never on the inclusion coins."""

    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    included: NDArray[np.bool_]

    @classmethod
    def draw(
        cls,
        m: int,
        *,
        vocab: int,
        specials: int,
        length: int,
        labels: int,
        rng: np.random.Generator,
    ) -> ExampleCanaries:
        ids = torch.as_tensor(rng.integers(specials, vocab, size=(m, length)), dtype=torch.long)
        ids[:, 0] = torch.as_tensor(_distinct_tokens(m, specials, vocab, rng))
        mask = torch.ones((m, length), dtype=torch.long)
        y = torch.as_tensor(rng.integers(0, labels, size=m), dtype=torch.long)
        return cls((ids, mask, y), coin_flips(m, rng))

    def dataset(self) -> TensorDataset:
        return TensorDataset(*self.tensors)

    @torch.no_grad()
    def label_log_prob(self, model: torch.nn.Module) -> NDArray[np.float64]:
        model.eval()
        ids, mask, y = self.tensors
        out = []
        for i in range(0, len(y), 256):
            logits = model(input_ids=ids[i : i + 256], attention_mask=mask[i : i + 256]).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            out.append(logp.gather(1, y[i : i + 256, None])[:, 0])
        return torch.cat(out).double().numpy()

    def scores(self, gain: NDArray[np.float64]) -> NDArray[np.float64]:
        """Membership scores from each canary's log-probability ``gain``, centred per label.

        Training moves every random-token sequence's prediction the same way (towards
        whichever class the task pushes such inputs to), which shifts all canaries of one
        label up and of the other down whether included or not; the top scores would then
        be one label's canaries, half of them excluded. Subtracting the label's mean gain
        (a function of the model and the public canaries, not of the inclusion coins, so
        the bound stays valid) leaves what is specific to each canary: memorisation.
        """
        y = self.tensors[2].numpy()
        out = np.asarray(gain, dtype=np.float64).copy()
        for label in np.unique(y):
            out[y == label] -= out[y == label].mean()
        return out
