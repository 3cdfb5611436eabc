"""Ambiguity (ownership forgery) attacks, written before the defence; all must be refused.

The claimant holds the released adapter (and the base model), not the owner's seed. Each
forgery from the issue is tried on an adapter marked by a genuine key and on one that was
never marked: a key file that chooses its layout (repeats, reorder, subset), its trigger
alphabet or length; a greedy signature search; a bounded seed search; a fresh self-made
commitment. The security margin is checked against an exact binomial sum computed here
with integers (not scipy, not the code under test).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from crypto import watermark as wm

from .watermark_toy import anchor as toy_anchor
from .watermark_toy import architecture, bit_matches, embed, lora_params, trained_params


@pytest.fixture(scope="module")
def adapters() -> dict[str, dict[str, torch.Tensor]]:
    owner = wm.generate_key(owner=0)
    params = lora_params(7)
    embed(params, [owner])
    marked = {k: v.detach().clone() for k, v in params.items()}
    never = {k: v.detach().clone() for k, v in trained_params(8).items()}
    assert bit_matches(owner, marked) == wm.SCHEME.bits  # the genuine key is there
    return {"marked": marked, "never-marked": never}


def _exact_tail(k: int, n: int) -> Fraction:
    return Fraction(sum(math.comb(n, i) for i in range(k, n + 1)), 2**n)


def test_security_margin_is_at_least_2_to_the_64_tries():
    n = wm.SCHEME.bits
    t = wm.min_matches(trials=n, chance=0.5)
    # A random seed's message is uniform and independent of the adapter: it passes with
    # probability exactly P[Bin(n, 1/2) >= t] on ANY adapter.
    assert _exact_tail(t, n) <= Fraction(1, 2**64) < _exact_tail(t - 1, n)
    assert (t, n) == (200, 256)
    assert 1 / float(_exact_tail(t, n)) >= 2**64  # expected tries of a seed search
    # Triggers with binary labels: the same numbers.
    assert wm.min_matches(trials=wm.SCHEME.triggers, chance=0.5) == 200


@pytest.mark.parametrize("alpha", [wm.MAX_ALPHA, 1e-6])
def test_verdict_needs_the_security_level_whatever_alpha(alpha):
    def one(matches):
        return wm.decide([0], [wm.bit_test(matches=matches, bits=256)], [None], alpha=alpha)[0]

    assert not one(199).marked and one(200).marked
    assert one(199).p_value == pytest.approx(float(_exact_tail(199, 256)), rel=1e-9)


def test_alpha_above_one_percent_refused():
    with pytest.raises(ValueError, match="alpha"):
        wm.decide([0], [wm.bit_test(matches=256, bits=256)], [None], alpha=0.5)


@pytest.mark.parametrize(
    "extra",
    [
        {"layout": [["enc.q", [32, 48]], ["enc.q", [32, 48]], ["enc.v", [32, 48]]]},  # repeats
        {"layout": [["enc.v", [32, 48]], ["enc.q", [32, 48]]]},  # reordered
        {"bits": 64},
        {"triggers": {"count": 64, "length": 2, "alphabet": [7, 5], "num_labels": 2}},
        {"alphabet": [5, 7]},
        {"trigger_length": 2},
        {"labels": [0, 1]},
    ],
)
def test_key_file_cannot_choose_what_verification_uses(extra):
    data = {**wm.generate_key().to_dict(), **extra}
    if isinstance(extra.get("triggers"), dict):
        with pytest.raises(wm.WatermarkKeyError):
            wm.WatermarkKey.from_dict(data)
        return
    with pytest.raises(wm.WatermarkKeyError, match="not part of a watermark key"):
        wm.WatermarkKey.from_dict(data)


def test_old_scheme_keys_with_their_own_layout_are_refused(tmp_path):
    old = {
        "version": 2,
        "owner": 0,
        "seed": "00" * 32,
        "salt": "00" * 32,
        "bits": 64,
        "anchor_kind": "lora",
        "layout": [["enc.q", [32, 48]]],
        "triggers": None,
    }
    path = tmp_path / "old.key"
    path.write_text(json.dumps(old))
    with pytest.raises(wm.WatermarkKeyError, match="forgeable"):
        wm.load_key(path)


def test_verification_reads_every_module_once_in_sorted_order(adapters):
    key = wm.generate_key()
    state = adapters["marked"]
    full = architecture(state)
    # A "layout" that leaves out, repeats or reorders modules cannot be passed in.
    anchor = dict(reversed(list(toy_anchor(state).items())))
    assert wm.Architecture.of("lora", anchor) == full  # insertion order does not matter
    subset = wm.Architecture.of("lora", {"enc.q": anchor["enc.q"]})
    with pytest.raises(ValueError, match="arch must be"):
        wm.extracted_matches(key, anchor, subset)
    with pytest.raises(wm.WatermarkKeyError, match="sorted"):
        wm.Architecture(kind="lora", modules=(("enc.v", (32, 48)), ("enc.q", (32, 48))))
    with pytest.raises(wm.WatermarkKeyError, match="once"):
        wm.Architecture(kind="lora", modules=(("enc.q", (32, 48)), ("enc.q", (32, 48))))
    # Independent check of the derivation: bits = sign(P a) over the sorted concatenation.
    vec = torch.cat([anchor[m].reshape(-1) for m in sorted(anchor)]).double().numpy()
    scores = wm.projection(key, full).astype(np.float64) @ vec
    assert wm.extracted_matches(key, anchor, full) == int(
        (np.sign(scores) == wm.message_signs(key)).sum()
    )


def test_key_for_another_architecture_or_kind_is_refused(adapters):
    state = adapters["marked"]
    arch = architecture(state)
    other = wm.Architecture.of("lora", {"enc.q": (32, 48)})
    bound = wm.generate_key(architecture=other)
    with pytest.raises(wm.WatermarkKeyError, match="does not derive to this adapter"):
        bit_matches(bound, state)
    ia3 = wm.WatermarkKey(seed=bytes(32), anchor_kind="ia3")
    with pytest.raises(wm.WatermarkKeyError, match="for ia3 adapters, this one is lora"):
        wm.extracted_matches(ia3, toy_anchor(state), arch)


@pytest.mark.parametrize(
    ("which", "search"),
    [
        ("marked", 150),
        ("never-marked", 150),
        pytest.param("marked", 3000, marks=pytest.mark.slow),
        pytest.param("never-marked", 3000, marks=pytest.mark.slow),
    ],
)
def test_bounded_seed_search_never_reaches_the_level(adapters, which, search):
    """The best of ``search`` seeds (a greedy search keeps the best so far) stays far below.

    Seeds are the only thing a claimant controls; their matches follow Binomial(256, 1/2)
    on the marked and the never-marked adapter alike.
    """
    state = adapters[which]
    rng = np.random.default_rng(5)  # not-secret: the forger's own seeds
    matches = np.array(
        [bit_matches(wm.WatermarkKey(seed=rng.bytes(32)), state) for _ in range(search)]
    )
    best = int(matches.max())
    assert best < wm.min_matches(trials=256, chance=0.5)
    verdict = wm.decide([9], [wm.bit_test(matches=best, bits=256)], [None], alpha=wm.MAX_ALPHA)
    assert not verdict[0].marked
    # Binomial(256, 1/2): mean 128, sd 8 (the max of 3000 draws is about mean + 3.4 sd).
    assert abs(matches.mean() - 128) < 4 * 8 / math.sqrt(search)
    assert abs(matches.std() - 8) < 4 * 8 / math.sqrt(2 * search)
    assert best <= 128 + 6 * 8


TRIGGER_DOMAIN = wm.TriggerDomain(
    vocab_size=600, special_ids=(0, 1, 2, 3), prefix=(2,), num_labels=2
)


def _claimant_trigger_sets(seed: int, count: int):
    """(ids, labels) of ``count`` seeds a claimant tries (not-secret rng ``seed``)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        key = wm.WatermarkKey(seed=rng.bytes(32), triggers=True)
        yield wm.trigger_token_ids(key, TRIGGER_DOMAIN), wm.trigger_labels(key, TRIGGER_DOMAIN)


@pytest.mark.parametrize("predictor", ["constant", "token-parity"])
def test_chosen_triggers_cannot_be_chosen_and_seed_search_fails(predictor):
    """Any fixed model (here two label rules) hits a random seed's triggers at chance."""
    hits = []
    for ids, labels in _claimant_trigger_sets(6, 400):
        assert ids.shape == (wm.SCHEME.triggers, wm.SCHEME.trigger_length)
        assert (ids[:, 0] == 2).all() and np.isin(ids[:, 1:], TRIGGER_DOMAIN.alphabet).all()
        guess = np.zeros(len(ids), int) if predictor == "constant" else ids[:, 1:].sum(1) % 2
        hits.append(int((guess == labels).sum()))
    assert max(hits) < wm.min_matches(trials=wm.SCHEME.triggers, chance=0.5)
    assert abs(np.mean(hits) - 128) < 4 * 8 / math.sqrt(len(hits))
    # The alphabet is every non-special token: a claimant cannot narrow it.
    assert list(TRIGGER_DOMAIN.alphabet) == [i for i in range(600) if i not in (0, 1, 2, 3)]


@pytest.mark.parametrize("predictor", ["constant-lean", "token-sum"])
def test_seed_search_against_the_rank_test_fails(predictor):
    """The rank test reads scores, so a claimant may pick a model whose scores are skewed,
    heavy-tailed or tied; over seeds its p-values stay valid (P[p <= a] <= a)."""
    ps = []
    for ids, labels in _claimant_trigger_sets(8, 150):
        if predictor == "constant-lean":  # every trigger alike: all scores tie
            scores = np.tile([3.0, -1.0], (len(ids), 1))
        else:  # a score from the tokens, tied in places
            lean = (ids[:, 1:] % 7).sum(1).astype(float)
            scores = np.stack([-lean, lean], 1)
        ps.append(wm.keyed_rank_test(scores, labels).p_value)
    p = np.array(ps)
    assert p.min() > 1e-4  # the best of 150 seeds, nowhere near 2^-64
    for a in (0.05, 0.2, 0.5):
        assert (p <= a).mean() <= a + 3 * math.sqrt(a * (1 - a) / len(p)), a


def test_derivation_depends_on_the_model_not_the_key_file():
    key = wm.WatermarkKey(seed=bytes(range(32)), triggers=True)
    d1 = wm.TriggerDomain(vocab_size=600, special_ids=(0,), prefix=(1,), num_labels=2)
    d2 = wm.TriggerDomain(vocab_size=601, special_ids=(0,), prefix=(1,), num_labels=2)
    assert not np.array_equal(wm.trigger_token_ids(key, d1), wm.trigger_token_ids(key, d2))
    a1 = wm.Architecture.of("lora", {"a": (4, 4)})
    a2 = wm.Architecture.of("lora", {"a": (4, 4), "b": (4, 4)})
    assert not np.array_equal(wm.projection(key, a1), wm.projection(key, a2)[:, :16])


def test_fresh_self_made_commitment_does_not_make_a_key_marked(adapters):
    """The forger commits to its own fresh key: the record is well-formed but binds only
    that key, which is not marked; it cannot be passed off as a record of the genuine key."""
    state = adapters["marked"]
    arch = architecture(state)
    forged = wm.generate_key(owner=0)
    record = wm.make_record(forged, job_id="forged", arch=arch)
    assert wm.check_record(record, forged, arch=arch) is not None  # consistent with itself
    assert bit_matches(forged, state) < 200
    genuine_like = wm.WatermarkKey(seed=bytes(32))
    with pytest.raises(wm.CommitmentError, match="another key"):
        wm.check_record(record, genuine_like, arch=arch)
    # Back-dating the record changes its digest (a genuine earlier token no longer fits).
    earlier = {**record, "created": "2020-01-01T00:00:00Z"}
    with pytest.raises(wm.CommitmentError, match="digest"):
        wm.check_record(earlier, forged, arch=arch)
    assert wm.record_digest(earlier) != record["digest"]
