"""DP-SGD: per-example clipped gradients against an explicit loop, noise scale, accounting,
budget refusal and the run-time guards."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from privacy import (
    ClientAccountant,
    PrivacyBudgetExceeded,
    PrivacyConfigError,
    PrivacyError,
    UnsupportedUnderDP,
    classification_loss,
    dp_schedule,
    epsilon_for,
    train_private,
)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(30, 8)
        self.ln = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.ln(self.emb(x).mean(1))))


def tiny_loss(model, batch):
    x, y = batch
    return classification_loss(model(x), y)


def tiny_data(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randint(0, 30, (n, 5), generator=g), torch.randint(0, 3, (n,), generator=g)
    )


def explicit_clipped_mean(model, dataset, loss_fn, *, clip: float, collate=None):
    """Sum over examples of each example's clipped gradient, divided by N (one full batch)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(dataset)):
        item = dataset[i]
        batch = collate([item]) if collate else tuple(t.unsqueeze(0) for t in item)
        raw = torch.autograd.grad(loss_fn(model, batch).sum(), params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(raw, params, strict=True)]
        norm = torch.sqrt(torch.stack([(g.double() ** 2).sum() for g in grads]).sum())
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    return [t / len(dataset) for t in total]


def run_full_batch(model, dataset, loss_fn, *, clip, extra_grad=None, collate=None, physical=4):
    """One private step over the whole dataset (sample rate 1), noise 0, SGD lr 1."""
    acc = ClientAccountant(delta=1e-5)
    stats = train_private(
        model, dataset, collate_fn=collate, loss_fn=loss_fn, epochs=1, batch_size=len(dataset),
        lr=1.0, noise_multiplier=0.0, max_grad_norm=clip, accountant=acc,
        max_physical_batch_size=physical, extra_grad=extra_grad, seed=0,
    )  # fmt: skip
    assert stats.steps == 1 and stats.examples == len(dataset)
    return stats


def assert_update_matches(before, after, expected, atol=1e-6):
    params_b = [p for p in before.parameters() if p.requires_grad]
    params_a = [p for p in after.parameters() if p.requires_grad]
    for pb, pa, e in zip(params_b, params_a, expected, strict=True):
        torch.testing.assert_close(pb.detach() - pa.detach(), e.to(pb.dtype), atol=atol, rtol=1e-4)


def test_per_example_clipping_matches_explicit_loop():
    torch.manual_seed(0)
    model = Tiny()
    data = tiny_data(10)
    ref = copy.deepcopy(model)
    clip = 0.3  # some examples clipped, some not
    expected = explicit_clipped_mean(ref, data, tiny_loss, clip=clip)
    run_full_batch(model, data, tiny_loss, clip=clip, physical=4)
    assert_update_matches(ref, model, expected)


def test_extra_grad_is_added_after_clipping():
    torch.manual_seed(1)
    model = Tiny()
    data = tiny_data(6)
    ref = copy.deepcopy(model)
    clip = 0.05

    def extra(m):  # a large data-independent term: must not be clipped away
        for p in m.parameters():
            p.grad = p.grad + 2.0

    expected = [e + 2.0 for e in explicit_clipped_mean(ref, data, tiny_loss, clip=clip)]
    run_full_batch(model, data, tiny_loss, clip=clip, extra_grad=extra)
    assert_update_matches(ref, model, expected)


def test_noise_std_is_sigma_clip_over_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(50, 50))
    data = TensorDataset(torch.randn(20, 50))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    def zero_loss(m, batch):
        return (m(batch[0]) * 0.0).sum(dim=1)

    acc = ClientAccountant(delta=1e-5)
    train_private(
        model, data, loss_fn=zero_loss, epochs=1, batch_size=20, lr=1.0,
        noise_multiplier=2.0, max_grad_norm=1.5, accountant=acc, seed=3,
    )  # fmt: skip
    update = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert float(update.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(update.std()) == pytest.approx(2.0 * 1.5 / 20, rel=0.06)


def test_accountant_grows_across_calls_and_matches_schedule():
    model = Tiny()
    data = tiny_data(60)
    acc = ClientAccountant(delta=1e-5)
    kw: dict[str, Any] = dict(
        loss_fn=tiny_loss, epochs=1, batch_size=6, lr=0.05, noise_multiplier=1.1,
        max_grad_norm=1.0, accountant=acc,
    )  # fmt: skip
    s1 = train_private(model, data, **kw)
    s2 = train_private(model, data, **kw)
    sched = dp_schedule(dataset_size=60, batch_size=6, epochs=1)
    assert s1.steps == s2.steps == sched.steps == 10
    assert acc.history == [(1.1, 0.1, 20)]
    assert s2.epsilon > s1.epsilon
    assert s2.epsilon == pytest.approx(
        epsilon_for(noise_multiplier=1.1, sample_rate=0.1, steps=20, delta=1e-5)
    )
    assert not hasattr(next(model.parameters()), "grad_sample")  # hooks cleaned up
    assert all(p.grad is None for p in model.parameters())


def test_empty_poisson_batches_still_step_and_account():
    model = Tiny()
    data = tiny_data(40)
    acc = ClientAccountant(delta=1e-5)
    stats = train_private(
        model, data, loss_fn=tiny_loss, epochs=1, batch_size=1, lr=0.05,
        noise_multiplier=1.0, max_grad_norm=1.0, accountant=acc, seed=5,
    )  # fmt: skip
    assert stats.steps == 40 and acc.steps == 40
    assert stats.examples < 40 * 3  # many batches were empty (P = 0.975^40 each)


def test_seed_reproduces_and_none_does_not():
    data = tiny_data(30)
    outs = []
    for seed in (7, 7, None):
        torch.manual_seed(0)
        model = Tiny()
        train_private(
            model, data, loss_fn=tiny_loss, epochs=1, batch_size=10, lr=0.1,
            noise_multiplier=1.0, max_grad_norm=1.0, accountant=ClientAccountant(delta=1e-5),
            seed=seed,
        )  # fmt: skip
        outs.append(model.fc.weight.detach().clone())
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_budget_refused_before_training():
    model = Tiny()
    before = copy.deepcopy(model.state_dict())
    acc = ClientAccountant(delta=1e-5, budget_epsilon=0.5)
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        train_private(
            model, tiny_data(20), loss_fn=tiny_loss, epochs=5, batch_size=10, lr=0.1,
            noise_multiplier=0.5, max_grad_norm=1.0, accountant=acc,
        )  # fmt: skip
    assert acc.steps == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_loss_must_be_per_example():
    with pytest.raises(PrivacyConfigError, match=r"shape \[B\]"):
        train_private(
            Tiny(), tiny_data(10), loss_fn=lambda m, b: tiny_loss(m, b).mean(), epochs=1,
            batch_size=5, lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0,
            accountant=ClientAccountant(delta=1e-5),
        )  # fmt: skip


def test_guard_detects_parameters_replaced_after_wrapping():
    """Opacus issue 820: the optimizer updates tensors that are no longer the model's."""

    def rematerialise(m):
        m.fc.weight = torch.nn.Parameter(m.fc.weight.detach().clone())
        m.fc.bias = torch.nn.Parameter(m.fc.bias.detach().clone())

    with pytest.raises(PrivacyError, match="820"):
        train_private(
            Tiny(), tiny_data(10), loss_fn=tiny_loss, epochs=1, batch_size=10, lr=0.1,
            noise_multiplier=1.0, max_grad_norm=1.0, accountant=ClientAccountant(delta=1e-5),
            extra_grad=rematerialise,
        )  # fmt: skip


class TiedFunctional(Tiny):
    """The embedding weight is also used in a functional call Opacus does not hook."""

    def forward(self, x):
        h = self.ln(self.emb(x).mean(1))
        return h @ self.emb.weight[:3].T


def test_guard_detects_wrong_per_example_gradients():
    with pytest.raises(UnsupportedUnderDP, match="do not add up"):
        train_private(
            TiedFunctional(), tiny_data(10), loss_fn=tiny_loss, epochs=1, batch_size=10,
            lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0,
            accountant=ClientAccountant(delta=1e-5),
        )  # fmt: skip


def test_batchnorm_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(UnsupportedUnderDP, match="BatchNorm"):
        train_private(
            model, TensorDataset(torch.randn(8, 4)), loss_fn=lambda m, b: m(b[0]).sum(1),
            epochs=1, batch_size=4, lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0,
            accountant=ClientAccountant(delta=1e-5),
        )  # fmt: skip


# ---- transformers + peft LoRA, built inline from tiny configs -----------------------------


def tiny_bert_lora():
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=2,  # type: ignore[call-arg]
    )  # fmt: skip
    lora = LoraConfig(
        task_type="SEQ_CLS", r=4, target_modules=["query", "value"], lora_dropout=0.0,
        init_lora_weights=False,  # random B as well, so every LoRA matrix gets a gradient
    )  # fmt: skip
    return get_peft_model(BertForSequenceClassification(cfg), lora)


def bert_loss(model, batch):
    ids, mask, labels = batch
    return classification_loss(model(input_ids=ids, attention_mask=mask).logits, labels)


def test_bert_lora_per_example_gradients_match_explicit_loop():
    model = tiny_bert_lora()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (6, 8), generator=g)
    mask = torch.ones(6, 8, dtype=torch.long)
    mask[::2, 5:] = 0
    data = TensorDataset(ids, mask, torch.randint(0, 2, (6,), generator=g))
    ref = copy.deepcopy(model)
    expected = explicit_clipped_mean(ref, data, bert_loss, clip=0.5)
    run_full_batch(model, data, bert_loss, clip=0.5, physical=4)
    assert_update_matches(ref, model, expected, atol=2e-6)


def test_gpt2_lora_causal_lm_per_example_gradients_match_explicit_loop():
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from privacy import causal_lm_loss

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=60, n_positions=16, n_embd=16, n_layer=1, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=4, target_modules=["c_attn"], lora_dropout=0.0,
        fan_in_fan_out=True, init_lora_weights=False,
    )  # fmt: skip
    model = get_peft_model(GPT2LMHeadModel(cfg), lora)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 60, (5, 10), generator=g)
    mask = torch.ones(5, 10, dtype=torch.long)
    mask[1, 4:] = 0
    mask[3, 7:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    data = TensorDataset(ids, mask, labels)

    def lm_loss(m, batch):
        i, a, lab = batch
        return causal_lm_loss(m(input_ids=i, attention_mask=a).logits, lab)

    ref = copy.deepcopy(model)
    expected = explicit_clipped_mean(ref, data, lm_loss, clip=0.2)
    run_full_batch(model, data, lm_loss, clip=0.2, physical=2)
    assert_update_matches(ref, model, expected, atol=2e-6)
