"""Adapters whose per-example gradients Opacus gets wrong are refused under DP."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from privacy import (
    ClientAccountant,
    UnsupportedUnderDP,
    check_dp_support,
    classification_loss,
    dp_unsupported_reason,
    train_private,
)


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=2,  # type: ignore[call-arg]
    )  # fmt: skip
    return BertForSequenceClassification(cfg)


def peft_model(kind: str):
    import peft

    configs = {
        "lora": lambda: peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"]),
        "dora": lambda: peft.LoraConfig(
            task_type="SEQ_CLS", r=2, target_modules=["query"], use_dora=True
        ),
        "ia3": lambda: peft.IA3Config(
            task_type="SEQ_CLS", target_modules=["query", "value"], feedforward_modules=[]
        ),
        "prompt": lambda: peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3),
        "prefix": lambda: peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3),
        "loha": lambda: peft.LoHaConfig(task_type="SEQ_CLS", r=2, target_modules=["query"]),
    }
    return peft.get_peft_model(tiny_bert(), configs[kind]())


@pytest.mark.parametrize(
    ("kind", "name"),
    [("dora", "DORA"), ("ia3", "IA3"), ("prompt", "PROMPT_TUNING"), ("prefix", "PREFIX_TUNING"),
     ("loha", "LOHA")],
)  # fmt: skip
def test_refused_adapters_name_the_adapter_and_suggest_lora(kind, name):
    model = peft_model(kind)
    with pytest.raises(UnsupportedUnderDP, match=name) as err:
        check_dp_support(model)
    assert "LoRA" in str(err.value)
    data = TensorDataset(torch.randint(1, 60, (8, 6)), torch.randint(0, 2, (8,)))
    with pytest.raises(UnsupportedUnderDP, match=name):
        train_private(
            model, data, loss_fn=lambda m, b: classification_loss(m(input_ids=b[0]).logits, b[1]),
            epochs=1, batch_size=4, lr=0.1, noise_multiplier=1.0, max_grad_norm=1.0,
            accountant=ClientAccountant(delta=1e-5),
        )  # fmt: skip


def test_lora_and_plain_modules_pass():
    assert dp_unsupported_reason(peft_model("lora")) is None
    assert dp_unsupported_reason(torch.nn.Linear(3, 3)) is None


def test_injected_adapter_without_config_detected_by_parameter_name():
    class Injected(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
            self.lin.ia3_l = torch.nn.Parameter(torch.ones(3))

    with pytest.raises(UnsupportedUnderDP, match="IA3"):
        check_dp_support(Injected())


def test_frozen_model_refused():
    m = torch.nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(UnsupportedUnderDP, match="no trainable"):
        check_dp_support(m)


def test_bottleneck_adapters_are_supported_under_dp():
    import models

    tok = models.train_tokenizer(["a b c d e f"] * 20, vocab_size=120, family="bert")
    base = models.build_tiny_model(
        "bert", task="classification", vocab_size=len(tok), seed=0, pad_token_id=0
    )
    model = models.attach_adapter(
        base, models.AdapterSpec("pfeiffer", {}), family="bert", task="classification", seed=0
    )
    assert dp_unsupported_reason(model) is None
