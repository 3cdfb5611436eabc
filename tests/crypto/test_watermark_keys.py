"""Watermark keys (secfed-wm/4, and /3 keys still verifying): storage, derivation from
seed + model, key hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import stat

import numpy as np
import pytest

from crypto import watermark as wm

ARCH = wm.Architecture.of("lora", {"m1": (4, 4), "m0": (8, 6)})
DOMAIN = wm.TriggerDomain(vocab_size=40, special_ids=(0, 1, 2), prefix=(1,), num_labels=3)


def test_save_load_round_trip_with_owner_only_permissions(tmp_path):
    key = wm.generate_key(owner=1, triggers=True, architecture=ARCH)
    path = tmp_path / "wm" / "owner_1.key"
    wm.save_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wm.load_key(path) == key
    assert set(key.to_dict()) == {
        "scheme",
        "seed",
        "owner",
        "triggers",
        "anchor_kind",
        "architecture",
    }
    with pytest.raises(FileExistsError):
        wm.save_key(key, path)


def test_architecture_is_sorted_and_fingerprinted_canonically():
    assert [m for m, _ in ARCH.modules] == ["m0", "m1"] and ARCH.dim == 64
    same = wm.Architecture.of("lora", [("m0", (8, 6)), ("m1", (4, 4))])
    assert same.fingerprint == ARCH.fingerprint
    assert wm.Architecture.of("ia3", {"m1": (4, 4), "m0": (8, 6)}).fingerprint != ARCH.fingerprint
    assert wm.Architecture.of("lora", {"m1": (4, 4), "m0": (6, 8)}).fingerprint != ARCH.fingerprint


def test_derivations_are_deterministic_and_key_specific():
    a, b = wm.generate_key(), wm.generate_key()
    assert a.seed != b.seed and len(a.seed) == 32
    np.testing.assert_array_equal(wm.message_signs(a), wm.message_signs(a))
    assert not np.array_equal(wm.projection(a, ARCH), wm.projection(b, ARCH))
    p = wm.projection(a, ARCH)
    assert p.shape == (256, 64)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-6)
    # Independent expansion: SHAKE-256 under the documented label, bit 1 -> +1.
    raw = hashlib.shake_256(b"secfed-watermark/v4/message\x00" + a.seed).digest(32)
    expected = np.unpackbits(np.frombuffer(raw, np.uint8)).astype(np.float32) * 2 - 1
    np.testing.assert_array_equal(wm.message_signs(a), expected)


def test_projection_is_zero_mean_and_message_balanced():
    key = wm.generate_key()
    p = wm.projection(key, wm.Architecture.of("lora", {"m": (64, 64)}))
    assert abs(float(np.sign(p).mean())) < 5 / np.sqrt(p.size)
    assert 80 < int((wm.message_signs(key) > 0).sum()) < 176


def test_trigger_ids_drawn_from_non_special_tokens_after_prefix():
    key = wm.generate_key(triggers=True)
    ids = wm.trigger_token_ids(key, DOMAIN)
    assert ids.shape == (wm.SCHEME.triggers, wm.SCHEME.trigger_length)
    assert (ids[:, 0] == 1).all()
    assert set(np.unique(ids[:, 1:])) == set(range(3, 40))  # 1280 draws over 37 tokens
    np.testing.assert_array_equal(ids, wm.trigger_token_ids(key, DOMAIN))
    assert not np.array_equal(ids, wm.trigger_token_ids(wm.generate_key(), DOMAIN))


def test_larger_benchmark_trigger_sets_extend_the_scheme_set():
    # bench_watermark_triggers explores more triggers with the same key: the scheme's set
    # must be their prefix, so that its rows speak about the triggers a verifier uses.
    key = wm.generate_key(triggers=True)
    more = dataclasses.replace(wm.SCHEME, triggers=2 * wm.SCHEME.triggers)
    n = wm.SCHEME.triggers
    ids, labels = wm.trigger_token_ids(key, DOMAIN), wm.trigger_labels(key, DOMAIN)
    np.testing.assert_array_equal(wm.trigger_token_ids(key, DOMAIN, scheme=more)[:n], ids)
    np.testing.assert_array_equal(wm.trigger_labels(key, DOMAIN, scheme=more)[:n], labels)
    short = dataclasses.replace(wm.SCHEME, trigger_length=3)
    assert wm.trigger_token_ids(key, DOMAIN, scheme=short).shape == (n, 3)


def test_trigger_labels_uniform_and_key_specific():
    labels = np.concatenate([wm.trigger_labels(wm.generate_key(), DOMAIN) for _ in range(12)])
    counts = np.bincount(labels, minlength=3)
    n = len(labels)
    assert len(counts) == 3 and all(abs(c - n / 3) < 5 * np.sqrt(n * 2 / 9) for c in counts)


def test_bad_trigger_domains_rejected():
    with pytest.raises(wm.WatermarkKeyError, match="2 classes"):
        wm.TriggerDomain(vocab_size=40, special_ids=(), prefix=(), num_labels=1)
    with pytest.raises(wm.WatermarkKeyError, match="non-special"):
        wm.TriggerDomain(vocab_size=3, special_ids=(0, 1), prefix=(), num_labels=2)


def test_key_hash_binds_the_seed_and_scheme():
    key = wm.generate_key()
    h = wm.key_hash(key)
    expected = hashlib.sha256(
        b"secfed-watermark-commitment/v3\x00secfed-wm/4\x00" + key.seed
    ).hexdigest()
    assert h == expected and wm.check_key_hash(key, h.upper())
    assert not wm.check_key_hash(wm.generate_key(), h)
    # Labels that are not secret do not change the hash.
    assert wm.key_hash(wm.WatermarkKey(seed=key.seed, owner=5)) == h
    assert wm.key_hash(wm.WatermarkKey(seed=key.seed, scheme="secfed-wm/3")) != h


def test_scheme_3_keys_derive_exactly_as_before():
    """A key keeps its scheme for life: /3 derivations are pinned to what /3 released
    (digest of message, projection, trigger ids and labels, computed before /4 existed)."""
    key = wm.WatermarkKey(seed=bytes(range(32)), triggers=True, scheme="secfed-wm/3")
    domain = wm.TriggerDomain(vocab_size=400, special_ids=(0, 1, 2, 3), prefix=(2,), num_labels=3)
    arch = wm.Architecture.of("lora", {"m.a": (4, 8), "m.b": (8, 4)})
    h = hashlib.sha256()
    for x in (
        wm.message_signs(key),
        wm.projection(key, arch),
        wm.trigger_token_ids(key, domain),
        wm.trigger_labels(key, domain),
    ):
        h.update(np.ascontiguousarray(x).tobytes())
    assert h.hexdigest() == "c6c015ef780cda00a13386b0bbdd85175592f49ff503e0bb7e5d62793c3d9e1c"
    assert wm.key_hash(key) == ("73cde15f666710224dd21993aebae5378347c8eeb35c1b859c6917db6c160b59")
    assert wm.trigger_token_ids(key, domain).shape == (256, 16)
    new = wm.WatermarkKey(seed=key.seed, triggers=True)
    assert new.scheme == wm.SCHEME.name == "secfed-wm/4"
    assert wm.trigger_token_ids(new, domain).shape == (256, 6)
    # the same seed under another scheme expands to unrelated material
    assert not np.array_equal(wm.message_signs(new), wm.message_signs(key))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"scheme": "secfed-wm/3", "seed": "00" * 31}, "seed has 31 bytes"),
        ({"scheme": "secfed-wm/2", "seed": "00" * 32}, "unsupported"),
        ({"scheme": "secfed-wm/5", "seed": "00" * 32}, "unsupported"),
        ({"scheme": "secfed-wm/3"}, "malformed"),
        ({"scheme": "secfed-wm/3", "seed": "zz"}, "malformed"),
        ({"scheme": "secfed-wm/3", "seed": "00" * 32, "anchor_kind": "dora"}, "unknown"),
    ],
)
def test_malformed_key_files_rejected(tmp_path, data, match):
    path = tmp_path / "k.key"
    path.write_text(__import__("json").dumps(data))
    with pytest.raises(wm.WatermarkKeyError, match=match):
        wm.load_key(path)
