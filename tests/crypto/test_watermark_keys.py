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
    trig = wm.TriggerSpec(
        count=5, length=7, vocab_low=5, vocab_high=50, label=1, num_labels=2, prefix=(2,)
    )
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


def test_trigger_ids_in_range_with_prefix():
    trig = wm.TriggerSpec(
        count=50, length=9, vocab_low=5, vocab_high=40, label=0, num_labels=3, prefix=(2,)
    )
    ids = wm.trigger_token_ids(_key(triggers=trig))
    assert ids.shape == (50, 9)
    assert (ids[:, 0] == 2).all()
    assert ids[:, 1:].min() >= 5 and ids[:, 1:].max() < 40
    assert len(np.unique(ids[:, 1:])) > 30
    controls = wm.trigger_token_ids(_key(triggers=trig), control=True)
    assert controls.shape == ids.shape and not np.array_equal(controls, ids)


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
    path.write_text('{"version": 1, "owner": 0}')
    with pytest.raises(wm.WatermarkKeyError, match="malformed"):
        wm.load_key(path)
