"""DPO: the loss against a hand computation, the reference pass, DP-SGD per-pair gradients,
the built-in preference set and preference files."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.nn import functional

import models
from privacy.dpsgd import _PerExampleGrads
from secfed.assembly import build_parts, client_dataset
from secfed.dpo import (
    dpo_summary,
    encode_dpo,
    evaluate_dpo,
    generate_preference_task,
    load_preference_records,
    make_dpo_loss,
    reference_logps,
)
from secfed.errors import DataError
from secfed.sft import _answer
from tests.privacy.test_dpsgd import assert_update_matches, explicit_clipped_mean, run_full_batch

from .conftest import tiny_job


def dpo_job(**sections):
    base = {
        "model": {"family": "gpt2", "task": "dpo", "max_length": 20, "vocab_size": 300},
        "data": {"source": "dpo_builtin", "num_examples": 60, "eval_generate": 2},
        "federation": {"clients": 2, "rounds": 1, "batch_size": 8},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return tiny_job(**base)


def no_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def perturb_adapter(model: torch.nn.Module, seed: int = 0) -> None:
    """Random adapter weights (fresh adapters compute exactly the base)."""
    g = torch.Generator().manual_seed(seed)
    vec = models.adapter_vector(model)
    noise = torch.randn(len(vec), generator=g).numpy() * 0.3
    models.load_adapter_vector(model, vec + noise)


def base_of(model: torch.nn.Module) -> torch.nn.Module:
    """An independent copy of the base: the adapter's output zeroed (LoRA B, bottleneck up)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.requires_grad and ("lora_B" in name or ".up." in name):
                p.zero_()
    return ref


def hand_logp(model, ids: list[int], start: int) -> float:
    """Sum of log p(token t | tokens < t) for t >= start, one unpadded sequence at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))


def token_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    head += tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return head + tail, len(head)


@pytest.fixture(scope="module", params=["lora", "houlsby"])
def parts(request):
    options = {"r": 4, "lora_alpha": 8} if request.param == "lora" else {"reduction_factor": 8}
    p = build_parts(dpo_job(adapter={"method": request.param, "options": options}))
    no_dropout(p.model)
    perturb_adapter(p.model)
    return p


def test_dpo_loss_equals_a_hand_computation(parts):
    beta = 0.3
    model, tok = parts.model, parts.tokenizer
    model.eval()
    records = parts.data.pairs[:5]
    batch = encode_dpo(tok, records, max_length=20).tensors
    got = make_dpo_loss(beta)(model, batch)
    ref = base_of(model)
    for i, (prompt, chosen, rejected) in enumerate(records):
        c_ids, c_start = token_ids(tok, prompt, chosen)
        r_ids, r_start = token_ids(tok, prompt, rejected)
        pc, pr = hand_logp(model, c_ids, c_start), hand_logp(model, r_ids, r_start)
        rc, rr = hand_logp(ref, c_ids, c_start), hand_logp(ref, r_ids, r_start)
        z = beta * ((pc - rc) - (pr - rr))
        expected = -torch.nn.functional.logsigmoid(torch.tensor(z, dtype=torch.float64))
        assert abs(float(got[i].detach()) - float(expected)) < 1e-4, (i, got[i], expected)
    assert float(got.detach().std()) > 0  # a non-trivial adapter: the pairs' losses differ


def test_reference_pass_is_the_base_and_leaves_no_graph_or_hook_records(parts):
    model = parts.model
    model.train()
    batch = client_dataset(parts, parts.shards[0]).tensors
    batch = [t[:4] for t in batch]
    hooks = _PerExampleGrads(model)
    try:
        with torch.enable_grad():
            ref_c, ref_r = reference_logps(model, batch)
        assert not hooks.records  # nothing for DP-SGD to take per-example gradients from
    finally:
        hooks.cleanup()
    assert not ref_c.requires_grad and not ref_r.requires_grad
    assert model.training  # mode restored
    base = base_of(model).eval()
    with torch.no_grad():
        expected = make_logps(base, batch[:3])
    torch.testing.assert_close(ref_c, expected, atol=1e-5, rtol=1e-5)
    # The adapter is back on after the block: the policy differs from the base.
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(make_logps(model, batch[:3]), expected, atol=1e-3)


def make_logps(model, part):
    ids, mask, labels = part
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
    target = labels[:, 1:]
    logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return (logp * (target != -100)).sum(1).float()


def test_dpo_under_dp_sgd_clips_per_pair(parts):
    """One full-batch DP-SGD step (noise 0) equals the explicit per-pair clipped mean."""
    model = parts.model.train()  # dropout is off: train mode computes what eval mode does
    data = client_dataset(parts, parts.shards[0])
    data = torch.utils.data.TensorDataset(*(t[:7] for t in data.tensors))
    loss = make_dpo_loss(0.5)
    ref = copy.deepcopy(model)
    clip = 0.05  # small: every pair's gradient is clipped, so a wrong unit shows
    expected = explicit_clipped_mean(ref, data, loss, clip=clip)
    trained = copy.deepcopy(model)
    run_full_batch(trained, data, loss, clip=clip, physical=3)
    assert_update_matches(ref, trained, expected, atol=1e-6)
    # Clipping per ROW (chosen and rejected as separate examples) would give another update.
    assert max(float(e.abs().max()) for e in expected) > 1e-4


def test_built_in_preferences_are_deterministic_and_right():
    a = generate_preference_task(num_examples=300, seed=4)
    assert a == generate_preference_task(num_examples=300, seed=4)
    assert a != generate_preference_task(num_examples=300, seed=5)
    for prompt, chosen, rejected in a:
        op, rest = prompt.split(": ")
        items = rest.rstrip(" =").split()
        assert chosen == " " + " ".join(_answer(op, items))
        assert rejected != chosen and len(rejected.split()) >= 1


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_preference_files_with_custom_keys(tmp_path, suffix):
    rows = [{"q": f"say {i} =", "good": f" {i}", "bad": f" {i + 1}"} for i in range(5)]
    path = tmp_path / f"prefs{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    got = load_preference_records(path, prompt_key="q", chosen_key="good", rejected_key="bad")
    assert got == [(r["q"], r["good"], r["bad"]) for r in rows]
    with pytest.raises(DataError, match=r"data\.chosen_key"):
        load_preference_records(path, prompt_key="q")


def test_preference_file_rejects_ties(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "x", "chosen": " a", "rejected": " a"}))
    with pytest.raises(DataError, match="differ"):
        load_preference_records(path)


def test_preference_accuracy_counts_chosen_above_rejected(parts):
    model = parts.model
    data = parts.test_set
    out = evaluate_dpo(model, data, beta=0.2)
    model.eval()
    with torch.no_grad():
        c = make_logps(model, data.tensors[:3])
        r = make_logps(model, data.tensors[3:])
        bc, br = (
            make_logps(base_of(model), data.tensors[:3]),
            make_logps(base_of(model), data.tensors[3:]),
        )
    assert out["preference_accuracy"] == pytest.approx(float((c > r).float().mean()))
    margin = 0.2 * ((c - bc) - (r - br))
    assert out["reward_margin"] == pytest.approx(float(margin.mean()), abs=1e-4)
    assert out["loss"] == pytest.approx(float(-functional.logsigmoid(margin).mean()), abs=1e-4)


def test_dpo_summary_reads_start_and_end():
    rows = [
        {"round": 1, "phase": "sft", "preference_accuracy": 0.5},
        {"round": 2, "before_dpo": {"preference_accuracy": 0.6}, "preference_accuracy": 0.7},
        {"round": 3, "accuracy": 0.7, "loss": 0.1},  # a skipped round carries no metrics
    ]
    assert dpo_summary(rows) == {
        "before": {"preference_accuracy": 0.6},
        "after": {"preference_accuracy": 0.7},
    }


def test_dpo_json_job_reads_the_configured_keys(tmp_path):
    rows = [
        {"q": f"copy: {a} {b} =", "good": f" {a} {b}", "bad": " not now"}
        for a in "abcd"
        for b in "efgh"
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = {
        "source": "dpo_json", "path": str(path), "prompt_key": "q", "chosen_key": "good",
        "rejected_key": "bad", "num_examples": 16,
    }  # fmt: skip
    parts = build_parts(dpo_job(data=data))
    assert parts.data.pairs == [(r["q"], r["good"], r["bad"]) for r in rows]
    assert len(parts.encoded.tensors) == 6 and len(parts.encoded) == len(rows)
    assert parts.sft_test_set is not None and len(parts.sft_test_set) == len(parts.test_set)
