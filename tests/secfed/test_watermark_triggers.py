"""Black-box triggers: the domain read from the tokenizer, rehearsal embeds them (plain and
under DP-SGD)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from crypto import watermark as wm
from privacy import ClientAccountant, train_private
from secfed import training
from secfed.assembly import JobParts, build_parts, client_dataset
from secfed.watermark.plugin import JOB_OWNER, WatermarkPlugin
from secfed.watermark.triggers import TriggerRehearsal
from secfed.watermark.verify import (
    model_anchor,
    trigger_domain,
    trigger_test,
    verify_keys,
)

from .conftest import tiny_job

TRIGGERS = 256
SEED = 0
WATERMARK = {"enabled": True, "owners": 1, "job_key": True, "triggers": TRIGGERS}
WATERMARK["trigger_weight"] = 1.0


@pytest.fixture(scope="module")
def parts() -> JobParts:
    return build_parts(tiny_job(watermark=WATERMARK))


def test_domain_is_the_vocabulary_without_special_tokens(parts: JobParts) -> None:
    tok = parts.tokenizer
    domain = trigger_domain(tok, 2)
    alphabet = set(domain.alphabet.tolist())
    assert not set(tok.all_special_ids) & alphabet
    assert alphabet == set(range(len(tok))) - set(tok.all_special_ids)
    assert domain.prefix == (tok.cls_token_id,)


def _plugin(parts: JobParts, tmp_path: Path, *, private: bool) -> WatermarkPlugin:
    cfg = tiny_job(watermark=WATERMARK)
    if private:
        cfg = tiny_job(
            watermark={**WATERMARK, "max_grad_fraction": 1.0},
            privacy={"sample": {"enabled": True, "noise_multiplier": 0.5, "max_grad_norm": 1.0}},
        )
    plugin = WatermarkPlugin(cfg, parts)
    plugin.setup(run_dir=tmp_path, model=parts.model, resumed=False)
    return plugin


def _train(parts: JobParts, hook: training.ExtraGrad | None, *, private: bool) -> None:
    data = client_dataset(parts, parts.shards[0])
    common = {"loss_fn": training.classification_loss, "epochs": 30, "batch_size": 16}
    if private:
        parts.model.train()
        train_private(
            parts.model,
            data,
            lr=3e-2,
            optimizer="adamw",
            noise_multiplier=0.5,
            max_grad_norm=1.0,
            accountant=ClientAccountant(delta=1e-5),
            extra_grad=hook,
            seed=0,
            **common,  # type: ignore[arg-type]
        )
    else:
        training.train_local(
            parts.model,
            data,
            lr=3e-2,
            optimizer="adamw",
            extra_grad=hook,
            seed=0,
            **common,  # type: ignore[arg-type]
        )


@torch.no_grad()
def _trigger_loss(model: torch.nn.Module, key: wm.WatermarkKey, domain: wm.TriggerDomain) -> float:
    ids = torch.from_numpy(wm.trigger_token_ids(key, domain))
    labels = torch.from_numpy(wm.trigger_labels(key, domain))
    model.eval()
    loss = training.classification_loss(model, (ids, torch.ones_like(ids), labels)).mean()
    model.train()
    return float(loss)


@pytest.fixture
def restore(parts: JobParts):
    state = {k: v.clone() for k, v in parts.model.state_dict().items()}
    yield
    parts.model.load_state_dict(state)


def test_rehearsal_embeds_job_triggers(parts: JobParts, tmp_path: Path, restore: None) -> None:
    plugin = _plugin(parts, tmp_path, private=False)
    # a fixed key (and dropout seed), so that the run is the same every time
    key, domain = (
        dataclasses.replace(plugin.keys[JOB_OWNER], seed=bytes([SEED + 1]) * 32),
        plugin.domain,
    )
    assert domain is not None
    # Every term the hook adds must come from the fixed key: the job key made by setup()
    # is fresh randomness, and its signature gradient alone changed the trajectory enough
    # to fail this test now and then (it looked order-dependent).
    arch = plugin.embedders[JOB_OWNER].arch
    plugin.keys[JOB_OWNER] = key
    plugin.embedders[JOB_OWNER] = wm.SignEmbedder(key, arch, strength=10.0, margin=0.05)
    plugin.rehearsals[JOB_OWNER] = TriggerRehearsal(key, domain, batch=16, weight=1.0)
    torch.manual_seed(SEED)
    before = trigger_test(parts.model, key, domain).hits
    _train(parts, plugin.client_grad_hook(5, parts.model), private=False)  # non-owner: job key
    kw = {"anchor": model_anchor(parts.model), "kind": "lora", "model": parts.model}
    (verdict,) = verify_keys([key], domain=domain, **kw)
    assert verdict.trigger is not None and before < 0.7 * TRIGGERS
    assert verdict.trigger.p_value < 1e-4 and verdict.trigger.hits > before + 25, verdict
    assert verdict.trigger.rank_p_value is not None and verdict.trigger.rank_p_value < 1e-4
    # a key whose triggers were never trained is not marked by the same model
    fresh = wm.WatermarkKey(seed=bytes(range(32)), triggers=True)
    (other,) = verify_keys([fresh], domain=domain, **kw)
    assert not other.marked and other.trigger is not None and other.trigger.p_value > 1e-3
    assert other.trigger.rank_p_value is not None and other.trigger.rank_p_value > 1e-3
    # Seeds a claimant tries against this marked model: the rank test's p-values stay valid.
    rng = np.random.default_rng(SEED)  # not-secret: the claimant's seeds
    ps = [
        trigger_test(parts.model, wm.WatermarkKey(seed=rng.bytes(32), triggers=True), domain)
        for _ in range(40)
    ]
    rank_ps = np.array([t.rank_p_value for t in ps])
    assert rank_ps.min() > 1e-5 and (rank_ps <= 0.1).sum() <= 10, rank_ps


def test_rehearsal_under_dp_sgd_lowers_trigger_loss(parts: JobParts, tmp_path: Path) -> None:
    # The trigger term is added after clipping and noise, capped at the clipping norm: it
    # must still pull the triggers' loss below what the same (seeded) private run gives
    # alone. On this tiny random base, whose outputs barely depend on the input, the pull
    # is modest (9-43% lower over six fixed keys, 14% for this one); the plain test above
    # shows full embedding.
    state = {k: v.clone() for k, v in parts.model.state_dict().items()}
    plugin = _plugin(parts, tmp_path, private=True)
    # a fixed key, so that the comparison is the same every run
    key = dataclasses.replace(plugin.keys[JOB_OWNER], seed=bytes([SEED]) * 32)
    plugin.keys[JOB_OWNER] = key
    domain = plugin.domain
    assert domain is not None
    arch = plugin.embedders[JOB_OWNER].arch
    plugin.embedders[JOB_OWNER] = wm.SignEmbedder(key, arch, strength=10.0, margin=0.05)
    plugin.rehearsals[JOB_OWNER] = TriggerRehearsal(key, domain, batch=16, weight=1.0)
    losses = []
    for hook in (None, plugin.client_grad_hook(5, parts.model)):
        parts.model.load_state_dict(state)
        torch.manual_seed(SEED)  # dropout; sampling and noise are seeded by train_private
        _train(parts, hook, private=True)
        losses.append(_trigger_loss(parts.model, key, domain))
    parts.model.load_state_dict(state)
    assert losses[1] < 0.93 * losses[0], losses
