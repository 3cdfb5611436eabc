"""Watermark keys: derivation, storage, commitments."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from crypto import watermark as wm

LAYOUT = [("m0", (8, 6)), ("m1", (4, 4))]


def _key(bits: int = 64, **kw: object) -> wm.WatermarkKey:
    return wm.generate_key(owner=1, bits=bits, anchor_kind="lora", layout=LAYOUT, **kw)  # type: ignore[arg-type]


def test_save_load_round_trip_with_owner_only_permissions(tmp_path):
    trig = wm.TriggerSpec(count=5, length=7, alphabet=(5, 9, 11), num_labels=2, prefix=(2,))
    key = _key(triggers=trig)
    path = tmp_path / "wm" / "owner_1.key"
    wm.save_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wm.load_key(path) == key
    with pytest.raises(FileExistsError):
        wm.save_key(key, path)


def test_derivations_are_deterministic_and_key_specific():
    a, b = _key(), _key()
    assert a.seed != b.seed and len(a.seed) == 32
    np.testing.assert_array_equal(wm.message_signs(a), wm.message_signs(a))
    assert not np.array_equal(wm.projection(a), wm.projection(b))
    p = wm.projection(a)
    assert p.shape == (64, a.dim) == (64, 64)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-6)
    assert set(np.unique(wm.message_signs(a))) <= {-1.0, 1.0}


def test_projection_is_zero_mean_and_message_balanced():
    key = wm.generate_key(owner=0, bits=256, anchor_kind="lora", layout=[("m", (64, 64))])
    p = wm.projection(key)
    # Rademacher entries: mean of 1M +-1 draws is within 5 sigma of 0.
    assert abs(float(np.sign(p).mean())) < 5 / np.sqrt(p.size)
    assert 80 < int((wm.message_signs(key) > 0).sum()) < 176


def test_trigger_ids_drawn_from_alphabet_after_prefix():
    alphabet = tuple(range(5, 40, 2))
    trig = wm.TriggerSpec(count=50, length=9, alphabet=alphabet, num_labels=3, prefix=(2,))
    key = _key(triggers=trig)
    ids = wm.trigger_token_ids(key)
    assert ids.shape == (50, 9)
    assert (ids[:, 0] == 2).all()
    assert set(np.unique(ids[:, 1:])) == set(alphabet)  # 400 draws over 18 tokens: all seen
    np.testing.assert_array_equal(ids, wm.trigger_token_ids(key))
    assert not np.array_equal(ids, wm.trigger_token_ids(_key(triggers=trig)))


def test_trigger_labels_uniform_and_key_specific():
    trig = wm.TriggerSpec(count=3000, length=4, alphabet=(7, 8), num_labels=3)
    labels = wm.trigger_labels(_key(triggers=trig))
    counts = np.bincount(labels, minlength=3)
    assert len(counts) == 3 and all(abs(c - 1000) < 5 * np.sqrt(3000 * 2 / 9) for c in counts)
    assert not np.array_equal(labels, wm.trigger_labels(_key(triggers=trig)))


def test_unmarked_predictor_hits_triggers_at_chance():
    # The null the trigger test relies on: a model that never saw the key matches each
    # random label with probability 1/num_labels whatever it predicts. Here a fixed,
    # input-dependent predictor (parity of the token sum) stands in for any such model.
    trig = wm.TriggerSpec(count=64, length=4, alphabet=tuple(range(5, 40)), num_labels=2)
    hits = []
    for _ in range(400):
        key = _key(triggers=trig)
        predicted = wm.trigger_token_ids(key).sum(axis=1) % 2
        hits.append(int((wm.trigger_labels(key) == predicted).sum()))
    assert abs(np.mean(hits) - 32) < 5 * 4 / np.sqrt(400)
    p = [wm.trigger_test(hits=h, triggers=64, num_labels=2).p_value for h in hits]
    assert sum(v < 0.01 for v in p) <= 12  # expected <= 4 at a valid 1% level


def test_bad_trigger_specs_rejected():
    with pytest.raises(wm.WatermarkKeyError, match="alphabet"):
        wm.trigger_token_ids(_key(triggers=wm.TriggerSpec(4, 5, (3,), 2)))
    with pytest.raises(wm.WatermarkKeyError, match="num_labels"):
        wm.trigger_labels(_key(triggers=wm.TriggerSpec(4, 5, (3, 4), 1)))
    with pytest.raises(wm.WatermarkKeyError, match="no trigger set"):
        wm.trigger_labels(_key())


def test_version_1_keys_without_triggers_still_load_with_their_commitment(tmp_path):
    key = wm.WatermarkKey(**{**_key().__dict__, "version": 1})
    path = tmp_path / "v1.key"
    wm.save_key(key, path)
    loaded = wm.load_key(path)
    assert loaded.version == 1 and wm.commitment(loaded) == wm.commitment(key)
    data = key.to_dict()
    data["triggers"] = {"count": 4, "length": 5, "alphabet": [3, 4], "num_labels": 2}
    with pytest.raises(wm.WatermarkKeyError, match="version-1 trigger sets"):
        wm.WatermarkKey.from_dict(data)
    with pytest.raises(wm.WatermarkKeyError, match="unsupported"):
        wm.WatermarkKey.from_dict({**data, "version": 3})


def test_commitment_binds_key_and_is_salted():
    key = _key()
    c = wm.commitment(key)
    assert len(c) == 64 and wm.check_commitment(key, c.upper())
    other = wm.WatermarkKey(**{**key.__dict__, "salt": bytes(32)})
    assert wm.commitment(other) != c
    assert not wm.check_commitment(_key(), c)


@pytest.mark.parametrize("bits", [8, 63, 257])
def test_bad_bit_counts_rejected(bits):
    with pytest.raises(wm.WatermarkKeyError, match="bits"):
        _key(bits=bits)


def test_malformed_key_file_rejected(tmp_path):
    path = tmp_path / "k.key"
    path.write_text('{"version": 2, "owner": 0}')
    with pytest.raises(wm.WatermarkKeyError, match="malformed"):
        wm.load_key(path)
