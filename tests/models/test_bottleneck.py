"""Bottleneck adapters: placement, start-as-base, trainable state, saving, Opacus gradients."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedModel

from models import (
    BOTTLENECK_METHODS,
    LAYER_SITES,
    AdapterConfigError,
    AdapterSpec,
    ModelLoadError,
    adapter_layout,
    adapter_vector,
    attach_adapter,
    bottleneck_config_of,
    build_tiny_model,
    load_adapter,
    load_adapter_vector,
    save_adapter,
    save_base_model,
)

VOCAB = 300
EOS = 2


def base(family: str, task: str = "classification", seed: int = 3) -> PreTrainedModel:
    return build_tiny_model(
        family, task=task, vocab_size=VOCAB, seed=seed, pad_token_id=1, eos_token_id=EOS
    )


def batch(n: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, VOCAB, (n, length), generator=torch.Generator().manual_seed(4))
    ids[:, -1] = EOS  # bart classifies from the last eos token
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**(inputs or batch())).logits


def attach(model: PreTrainedModel, method: str, family: str, task: str = "classification",
           **options: object) -> Any:  # fmt: skip
    spec = AdapterSpec(method, {"reduction_factor": 8, **options})
    return attach_adapter(model, spec, family=family, task=task, seed=0)


def perturb(model: torch.nn.Module, seed: int = 5) -> None:
    vec = adapter_vector(model)
    load_adapter_vector(model, np.random.default_rng(seed).normal(0, 0.2, vec.shape))


@pytest.mark.parametrize("method", BOTTLENECK_METHODS)
def test_fresh_adapter_computes_the_base_model_and_training_changes_it(method: str) -> None:
    before = logits(base("bert"))
    model = attach(base("bert"), method, "bert")
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)
    perturb(model)
    assert not torch.allclose(logits(model), before)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("houlsby", {"attention.output.dense", "output.dense"}),
        ("pfeiffer", {"output.dense"}),
        ("parallel", {"output.dense"}),
    ],
)
def test_placement_and_trainable_state(method: str, expected: set[str]) -> None:
    model = attach(base("bert"), method, "bert")
    names = [n for n, _ in adapter_layout(model)]
    sites = {n.split("encoder.layer.")[1].split(".", 1)[1].rsplit(".bottleneck.", 1)[0]
             for n in names if ".bottleneck." in n}  # fmt: skip
    assert sites == expected
    assert sum(".bottleneck." in n for n in names) == 2 * 4 * len(expected)
    assert {n for n in names if ".bottleneck." not in n} == {"classifier.weight", "classifier.bias"}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(".bottleneck." not in n and not n.startswith("classifier") for n in frozen)
    down = model.get_submodule("bert.encoder.layer.0.output.dense.bottleneck.down")
    assert isinstance(down, torch.nn.Linear) and down.out_features == 64 // 8
    assert bottleneck_config_of(model) is not None


def test_options_reach_the_modules() -> None:
    model = attach(base("llama"), "parallel", "llama", non_linearity="tanh", reduction_factor=16)
    adapter = model.get_submodule("model.layers.1.mlp.down_proj.bottleneck")
    assert isinstance(adapter.act, torch.nn.Tanh)
    assert adapter.down.out_features == 4
    swish = attach(base("gpt2"), "houlsby", "gpt2", non_linearity="swish")
    assert isinstance(swish.get_submodule("transformer.h.0.attn.c_proj.bottleneck.act"),
                      torch.nn.SiLU)  # fmt: skip


def test_parallel_adapter_reads_the_ffn_input_and_scales() -> None:
    """The MLP with a parallel adapter computes base_mlp(x) + scaling * B(x)."""
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = base("llama", "causal_lm").model.layers[0].mlp(x)
    for scaling in (1.0, 2.5):
        model = attach(base("llama", "causal_lm"), "parallel", "llama", "causal_lm",
                       scaling=scaling)  # fmt: skip
        perturb(model)
        mlp = model.get_submodule("model.layers.0.mlp")
        with torch.no_grad():
            out = mlp(x)
            extra = scaling * mlp.down_proj.bottleneck(x)
        assert extra.abs().max() > 1e-3
        torch.testing.assert_close(out, reference + extra, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", BOTTLENECK_METHODS)
def test_deep_copy_is_independent(method: str) -> None:
    """A copy (as a runner makes per client) runs its own adapters, not the original's."""
    model = attach(base("gpt2", "causal_lm"), method, "gpt2", "causal_lm")
    clone = copy.deepcopy(model)
    perturb(clone)
    assert not torch.allclose(logits(clone), logits(model))
    torch.testing.assert_close(logits(model), logits(base("gpt2", "causal_lm")))
    load_adapter_vector(model, adapter_vector(clone))
    torch.testing.assert_close(logits(model), logits(clone), rtol=0, atol=0)


@pytest.mark.parametrize("method", BOTTLENECK_METHODS)
def test_save_and_load_rebuild_the_adapter(tmp_path: Path, method: str) -> None:
    model = attach(base("roberta"), method, "roberta", non_linearity="gelu")
    perturb(model)
    save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["secfed_bottleneck"]["method"] == method
    assert meta["secfed_bottleneck"]["family"] == "roberta"
    assert meta["secfed_bottleneck"]["non_linearity"] == "gelu"
    again = load_adapter(base("roberta"), tmp_path, trainable=True)
    torch.testing.assert_close(logits(again), logits(model), rtol=0, atol=0)
    np.testing.assert_array_equal(adapter_vector(again), adapter_vector(model))
    frozen = load_adapter(base("roberta"), tmp_path)
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises((KeyError, ValueError)):  # peft cannot read this layout
        PeftModel.from_pretrained(base("roberta"), str(tmp_path))
    with pytest.raises(ModelLoadError, match="built for 'roberta' models, got a 'bert'"):
        load_adapter(base("bert"), tmp_path)


def test_save_base_model_drops_the_adapters(tmp_path: Path) -> None:
    model = attach(base("gpt2", "causal_lm"), "houlsby", "gpt2", "causal_lm")
    perturb(model)
    save_base_model(model, None, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    torch.testing.assert_close(logits(reloaded), logits(base("gpt2", "causal_lm")))
    assert bottleneck_config_of(model) is not None  # the original is untouched
    assert any(".bottleneck." in n for n, _ in model.named_parameters())


def test_errors_name_the_problem() -> None:
    with pytest.raises(AdapterConfigError, match="reduction_factor=0"):
        AdapterSpec("pfeiffer", {"reduction_factor": 0})
    with pytest.raises(AdapterConfigError, match=r"non_linearity='softsign'.*relu, gelu"):
        AdapterSpec("houlsby", {"non_linearity": "softsign"})
    with pytest.raises(AdapterConfigError, match=r"'scaling'.*'pfeiffer'"):
        AdapterSpec("pfeiffer", {"scaling": 2.0})
    with pytest.raises(AdapterConfigError, match=r"'t5'.*supported families: .*bert"):
        attach(base("bert"), "houlsby", "t5")
    with pytest.raises(AdapterConfigError, match="FFN output pattern"):
        attach(base("bert"), "pfeiffer", "gpt2")
    assert set(LAYER_SITES) >= {"gpt2", "bert", "roberta", "distilbert", "llama", "albert",
                                "bart", "deberta-v2", "qwen2"}  # fmt: skip


def _no_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("method", BOTTLENECK_METHODS)
def test_opacus_per_sample_gradients_match_an_explicit_loop(method: str) -> None:
    """GradSampleModule (hooks) on bert + adapter equals per-example backward passes."""
    model = attach(base("bert"), method, "bert")
    perturb(model)  # up starts at zero, which would make down's gradients trivially zero
    _no_dropout(model)
    model.train()
    inputs = batch(4, 8)
    inputs["attention_mask"][1, 5:] = 0  # unequal lengths
    inputs["attention_mask"][3, 3:] = 0
    labels = torch.tensor([0, 1, 1, 0])
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    expected: dict[str, list[torch.Tensor]] = {n: [] for n, _ in params}
    for i in range(4):
        model.zero_grad()
        one = {k: v[i : i + 1] for k, v in inputs.items()}
        torch.nn.functional.cross_entropy(model(**one).logits, labels[i : i + 1]).backward()
        for n, p in params:
            assert p.grad is not None
            expected[n].append(p.grad.detach().clone())
    model.zero_grad()

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", force_functorch=False)
    out = gsm(**inputs).logits
    torch.nn.functional.cross_entropy(out, labels, reduction="sum").backward()
    for n, p in params:
        sample = getattr(p, "grad_sample", None)
        assert sample is not None, n
        assert sample.shape == (4, *p.shape)
        torch.testing.assert_close(sample, torch.stack(expected[n]), rtol=1e-4, atol=1e-6)
    down = dict(params)["bert.encoder.layer.0.output.dense.bottleneck.down.weight"]
    assert getattr(down, "grad_sample").abs().sum() > 0  # noqa: B009
    gsm.remove_hooks()
