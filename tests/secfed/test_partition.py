"""IID and Dirichlet partitioners."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secfed.errors import DataError
from secfed.partition import dirichlet_partition, iid_partition, train_test_split


@given(n=st.integers(10, 500), k=st.integers(1, 10), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=50, deadline=None)
def test_iid_is_a_partition_of_near_equal_shards(n, k, seed):
    shards = iid_partition(n, clients=k, rng=np.random.default_rng(seed))
    allidx = np.concatenate(shards)
    assert sorted(allidx.tolist()) == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_is_a_partition_with_min_size():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2000)
    shards = dirichlet_partition(labels, clients=10, alpha=0.5, rng=rng, min_size=20)
    allidx = np.concatenate(shards)
    assert sorted(allidx.tolist()) == list(range(2000))
    assert min(len(s) for s in shards) >= 20


def _label_skew(labels, shards):
    """Mean total-variation distance between client label mix and global label mix."""
    glob = np.bincount(labels, minlength=4) / len(labels)
    tvs = []
    for s in shards:
        mix = np.bincount(labels[s], minlength=4) / len(s)
        tvs.append(0.5 * np.abs(mix - glob).sum())
    return float(np.mean(tvs))


def test_small_alpha_skews_labels_more_than_large_alpha_and_iid():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 4000)
    skew_small = _label_skew(
        labels, dirichlet_partition(labels, clients=8, alpha=0.1, rng=rng, min_size=5)
    )
    skew_large = _label_skew(
        labels, dirichlet_partition(labels, clients=8, alpha=100.0, rng=rng, min_size=5)
    )
    skew_iid = _label_skew(labels, iid_partition(4000, clients=8, rng=rng))
    assert skew_small > 0.3
    assert skew_large < 0.1 and skew_iid < 0.1


def test_impossible_partitions_raise_clear_errors():
    with pytest.raises(DataError, match="lower clients"):
        iid_partition(5, clients=10, rng=np.random.default_rng(0))
    with pytest.raises(DataError, match="exceeds"):
        dirichlet_partition(
            [0, 1] * 5, clients=4, alpha=1.0, rng=np.random.default_rng(0), min_size=5
        )


def test_train_test_split_is_disjoint_and_covering():
    idx = np.arange(100, 200)
    train, test = train_test_split(idx, test_fraction=0.25, rng=np.random.default_rng(0))
    assert len(test) == 25 and not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(100, 200))
