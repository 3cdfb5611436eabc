"""Splitting examples across clients: IID and Dirichlet(alpha) non-IID by label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import DataError


def iid_partition(num_examples: int, *, clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle indices and deal them into ``clients`` near-equal shards."""
    if clients > num_examples:
        raise DataError(f"{clients} clients but only {num_examples} examples: lower clients")
    order = rng.permutation(num_examples)
    return [np.sort(shard) for shard in np.array_split(order, clients)]


def dirichlet_partition(
    labels: Sequence[int],
    *,
    clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Per label, split its examples across clients in Dirichlet(alpha) proportions.

    Small ``alpha`` gives clients dominated by few labels. Resamples until every client holds
    at least ``min_size`` examples, and raises :class:`DataError` if that is impossible.
    """
    if alpha <= 0:
        raise DataError(f"dirichlet alpha must be positive, got {alpha}")
    y = np.asarray(labels)
    if clients * min_size > len(y):
        raise DataError(
            f"{clients} clients x {min_size} examples each exceeds the {len(y)} examples: "
            "lower clients or data.min_examples_per_client"
        )
    classes = np.unique(y)
    for _ in range(max_tries):
        shards: list[list[int]] = [[] for _ in range(clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for k, part in enumerate(np.split(idx, cuts)):
                shards[k].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise DataError(
        f"could not give each of {clients} clients {min_size} examples with alpha={alpha} "
        f"after {max_tries} draws: raise data.alpha or lower federation.clients"
    )


def held_out(size: int, test_fraction: float) -> int:
    """How many of a client's ``size`` examples :func:`train_test_split` holds out."""
    return round(size * test_fraction)


def check_plan(sizes: Sequence[int], *, test_fraction: float, total: int) -> None:
    """Refuse a split that leaves a client with no training (or, if any are held out, no
    held-out) examples, naming the client, its numbers and the fix."""
    bad = []
    for cid, size in enumerate(sizes):
        n_test = held_out(size, test_fraction)
        if size - n_test < 1 or (test_fraction > 0 and n_test < 1):
            bad.append((cid, size, n_test))
    if not bad:
        return
    cid, size, n_test = bad[0]
    need = next(
        n for n in range(1, 10_000)
        if n - held_out(n, test_fraction) >= 1 and (not test_fraction or held_out(n, test_fraction))
    )  # fmt: skip
    what = "training examples" if size - n_test < 1 else "held-out examples"
    fix = f"use at most {total // need} clients, add examples"
    if test_fraction:
        fix += ", raise data.test_fraction or give a separate data.eval_path"
    raise DataError(
        f"{len(bad)} of {len(sizes)} clients would have no {what}: client {cid} gets {size} "
        f"examples ({size - n_test} to train, {n_test} held out at test_fraction "
        f"{test_fraction:g}); {total} examples need at least {need} per client: {fix}"
    )


def train_test_split(
    indices: np.ndarray, *, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into train and held-out test parts (test may be empty)."""
    order = rng.permutation(indices)
    n_test = held_out(len(order), test_fraction)
    if len(order) - n_test < 1:
        raise DataError(f"a client with {len(order)} examples has none left to train on")
    return np.sort(order[n_test:]), np.sort(order[:n_test])
