"""secagg / secagg+: options, the k/t rule and the neighbour graph."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import (
    ParameterError,
    RoundSpec,
)
from crypto.core import wire
from crypto.secagg import messages as msg
from crypto.secagg.graph import neighbours_of, neighbours_of_one, sparse_params
from tests.crypto.secagg_helpers import SPARSE, inputs, secagg_proto, to_stage


# -- options and graph -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("secagg", {"neighbours": 4}, "unknown option"),
        ("secagg", {"clip": -1.0}, "clip"),
        ("secagg", {"scale_bits": 40}, "scale_bits"),
        ("secagg", {"max_dropout_fraction": 0.6}, "max_dropout_fraction"),
        ("secagg", {"max_corrupt_fraction": "a"}, "max_corrupt_fraction"),
        ("secagg+", {"neighbours": 5}, "even"),
    ],
)
def test_bad_options_raise(name, opts, match):
    with pytest.raises(ParameterError, match=match):
        proto = secagg_proto(name, **opts)
        proto.max_dropouts(50)


def test_insecure_threshold_override_is_refused():
    with pytest.raises(ParameterError, match="corrupt"):
        secagg_proto("secagg", threshold=2, max_corrupt_fraction=0.4).max_dropouts(10)
    with pytest.raises(ParameterError, match="secure"):
        secagg_proto("secagg+", neighbours=4, threshold=3).max_dropouts(100)


def test_complete_graph_threshold_rule():
    proto = secagg_proto("secagg")  # max_dropout_fraction 0.3
    assert [proto.max_dropouts(n) for n in (1, 2, 5, 10, 100)] == [0, 0, 1, 3, 30]
    assert proto.graph_params(10).threshold == 7


def test_sparse_degree_grows_logarithmically():
    ks = {n: sparse_params(n, dropout=0.1, corrupt=0.1).neighbours for n in (10**3, 10**5)}
    assert ks[10**3] < 10**3 / 4
    assert ks[10**5] < 1.5 * ks[10**3]
    small = sparse_params(10, dropout=0.3, corrupt=0.2)
    assert small.complete and small.threshold == 7
    # Safe against a malicious server (2t - corrupt holders > k + 1) at the defaults'
    # 30% dropouts and 20% corrupt clients: the graph stays complete up to 1000 clients.
    assert sparse_params(10**3, dropout=0.3, corrupt=0.2).complete
    assert not sparse_params(10**5, dropout=0.3, corrupt=0.2).complete


@settings(max_examples=15, deadline=None)
@given(n=st.integers(5, 60), half=st.integers(1, 6), seed=st.binary(min_size=32, max_size=32))
def test_graph_is_symmetric_regular_and_deterministic(n, half, seed):
    k = 2 * half
    cohort = list(range(100, 100 + n))
    graph = neighbours_of(cohort, k=k, seed=seed)
    assert graph == neighbours_of(cohort, k=k, seed=seed)
    for u, nbrs in graph.items():
        assert u not in nbrs
        assert len(nbrs) == min(k, n - 1)
        assert all(u in graph[v] for v in nbrs)
        assert neighbours_of_one(cohort, u, k=k, seed=seed) == nbrs


def test_graph_depends_on_the_published_randomness():
    cohort = list(range(40))
    a = neighbours_of(cohort, k=4, seed=b"a" * 32)
    b = neighbours_of(cohort, k=4, seed=b"b" * 32)
    assert a != b


def test_sparse_round_touches_only_neighbours():
    proto = secagg_proto("secagg+", **SPARSE)
    n = 12
    spec = RoundSpec("t", 1, tuple(range(n)), 5)
    vecs, weights = inputs(n, 5)
    _, _, messages = to_stage(proto, spec, vecs, weights, 1)
    for m in messages.values():
        assert len(msg.decode_relayed(wire.split(m)[2])) == 4


def test_threat_model_names_the_collusion_threshold():
    for name in ("secagg", "secagg+"):
        tm = secagg_proto(name).threat_model()
        assert "t or more" in tm.breaks_if
    assert math.isclose(secagg_proto("secagg", scale_bits=10).quantum, 2**-10)
