"""Experiment file (TOML) schema, validated with clear errors.

Every section is a pydantic model that forbids unknown keys; :func:`load_config` turns
validation failures into one :class:`~secfed.errors.ConfigError` whose lines name the key,
the bad value and the fix.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

#: Data sources read from a labelled local file (they accept ``eval_path``).
FILE_SOURCES = ("csv", "tsv", "json", "parquet", "disk")
STRATEGIES = ("fedavg", "fedprox", "scaffold", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: At most this many public words (``model.public_words``): each then appears about ten
#: times in the 2,000 public sentences the tokenizer reads, so each becomes one token.
PUBLIC_WORDS_LIMIT = 2000
#: Vocabulary room ``model.public_words`` needs beyond the words themselves.
PUBLIC_WORDS_SPARE = 500


class ModelSection(_Section):
    """Which base model to fine-tune."""

    family: str = "bert"
    path: str | None = None
    task: Literal["classification", "causal_lm", "dpo"] = "classification"
    max_length: int = Field(32, ge=4, le=4096)
    vocab_size: int = Field(2000, ge=100, le=1_000_000)
    #: Public pre-training steps of the built-in model (0: random init; ignored with ``path``).
    pretrain_steps: int = Field(0, ge=0, le=100_000)
    #: Train the built-in model's tokenizer on the clients' pooled texts (file data only).
    #: A disclosure of client text outside every accountant: off by default, refused under DP.
    tokenizer_from_client_data: bool = False
    #: Words no task uses, added to the public corpus of the built-in tokenizer and
    #: pre-training (0: the task's words only), so that, as in a real model, most of the
    #: vocabulary is not the task's (``builtin_task.public_words``).
    public_words: int = Field(0, ge=0, le=PUBLIC_WORDS_LIMIT)

    @model_validator(mode="after")
    def _public_words_need_the_builtin_tokenizer(self) -> ModelSection:
        if not self.public_words:
            return self
        if self.path is not None:
            raise ValueError(
                f"model.public_words = {self.public_words} extends the built-in tokenizer, but "
                f"model.path = {self.path!r} brings its own: remove public_words"
            )
        if self.vocab_size < self.public_words + PUBLIC_WORDS_SPARE:
            raise ValueError(
                f"model.public_words = {self.public_words} needs model.vocab_size >= "
                f"{self.public_words + PUBLIC_WORDS_SPARE} (the task's tokens and word pieces "
                f"besides), not {self.vocab_size}: raise vocab_size or lower public_words"
            )
        if self.tokenizer_from_client_data:
            raise ValueError(
                f"model.public_words = {self.public_words} extends the public corpus, but "
                "model.tokenizer_from_client_data = true trains the tokenizer on client texts: "
                "drop one of the two"
            )
        return self

    @property
    def base_task(self) -> str:
        """The head the model needs: ``classification``, else ``causal_lm`` (SFT and DPO)."""
        return "classification" if self.task == "classification" else "causal_lm"


class AdapterSection(_Section):
    """Adapter method and its options (passed to the peft config or bottleneck adapter)."""

    method: str = "lora"
    options: dict[str, Any] = Field(default_factory=dict)


class DataSection(_Section):
    """Where the data comes from and how it is split across clients.

    ``num_examples`` is the size of the built-in tasks (default 2400); for a file it draws a
    seeded subsample of that many rows (default: every row). ``eval_path`` names a separate
    held-out file (same format and columns); without it each client holds out
    ``test_fraction`` of its share.
    """

    source: Literal[
        "builtin", "csv", "tsv", "json", "parquet", "disk", "sft_builtin", "sft_json",
        "dpo_builtin", "dpo_json",
    ] = "builtin"  # fmt: skip
    path: str | None = None
    #: Field separator of csv/tsv files (default: tab for tsv and *.tsv / *.tab, else comma).
    delimiter: str | None = None
    eval_path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    num_examples: int | None = Field(None, ge=10)
    label_noise: float = Field(0.05, ge=0.0, lt=0.5)
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(0.5, gt=0.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    min_examples_per_client: int = Field(8, ge=1)
    prompt_key: str = "prompt"
    response_key: str = "response"
    chosen_key: str = "chosen"  # dpo_json: preferred response (.json/.jsonl/.parquet)
    rejected_key: str = "rejected"
    eval_generate: int = Field(32, ge=0)
    max_new_tokens: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _path_for_files(self) -> DataSection:
        if self.source not in ("builtin", "sft_builtin", "dpo_builtin") and not self.path:
            raise ValueError(f"data.source = {self.source!r} needs data.path (a file or directory)")
        if self.delimiter is not None and (
            self.source not in ("csv", "tsv") or len(self.delimiter) != 1
        ):
            raise ValueError(
                f"data.delimiter = {self.delimiter!r}: a delimiter is one character (e.g. "
                "'\\t' or ';') and applies to data.source = 'csv' or 'tsv' only"
            )
        if self.eval_path is not None and self.source not in FILE_SOURCES:
            raise ValueError(
                f"data.eval_path is for labelled files (data.source one of "
                f"{', '.join(FILE_SOURCES)}), not {self.source!r}: remove it"
            )
        return self


class FederationSection(_Section):
    """Clients, rounds, local training and the server strategy."""

    clients: int = Field(4, ge=1, le=100_000)
    rounds: int = Field(5, ge=1)
    sample_rate: float = Field(1.0, gt=0.0, le=1.0)
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-3, gt=0.0)
    #: "cosine": round r of R trains at lr x (1 + cos(pi (r - 1) / R)) / 2 (lr in round 1,
    #: nearly 0 in the last); "constant": lr every round.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    optimizer: Literal["sgd", "adamw"] = "adamw"
    strategy: str = "fedavg"
    strategy_options: dict[str, float] = Field(default_factory=dict)
    #: "local": after the job, train each client alone on its own data for comparison.
    baseline: Literal["none", "local"] = "none"

    def lr_at(self, round_: int) -> float:
        """The local learning rate of ``round_`` (1-based) under ``lr_schedule``."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * (1.0 + math.cos(math.pi * (round_ - 1) / self.rounds)) / 2.0

    @model_validator(mode="after")
    def _known_strategy(self) -> FederationSection:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"federation.strategy = {self.strategy!r} is unknown; choose one of "
                f"{', '.join(STRATEGIES)}"
            )
        return self


class DPOSection(_Section):
    """Preference alignment (``model.task = "dpo"``), optionally after an SFT phase.

    The first ``sft_rounds`` rounds fine-tune on each pair's (prompt, chosen) as SFT; the
    remaining rounds run DPO with temperature ``beta``. Both phases train the same adapter
    on the same records and spend from the same DP-SGD ledger.
    """

    beta: float = Field(0.1, gt=0.0)
    sft_rounds: int = Field(0, ge=0)


class AggregationSection(_Section):
    """Aggregation protocol by registry name, with its options."""

    protocol: str = "plain"
    options: dict[str, Any] = Field(default_factory=dict)
    key_dir: str | None = None


class SampleDPSection(_Section):
    """Sample-level DP-SGD (per client, via Opacus)."""

    enabled: bool = False
    epsilon: float | None = Field(None, gt=0.0)
    noise_multiplier: float | None = Field(None, gt=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    accountant: Literal["rdp", "prv"] = "rdp"
    max_physical_batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> SampleDPSection:
        if self.enabled and (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                "privacy.sample needs exactly one of epsilon (target for the whole job) or "
                "noise_multiplier"
            )
        return self


class UserDPSection(_Section):
    """User-level DP (DP-FedAvg): clip each update, noise the sum."""

    enabled: bool = False
    clip_norm: float = Field(1.0, gt=0.0)
    noise_multiplier: float = Field(1.0, ge=0.0)
    noise: Literal["central", "distributed"] = "central"
    adaptive_quantile: float | None = Field(None, gt=0.0, lt=1.0)
    adaptive_lr: float = Field(0.2, gt=0.0)
    adaptive_count_noise: float | None = Field(None, ge=0.0)
    #: Most epsilon against the released models (the observer sampling amplifies for) the
    #: job may spend; the job ends before a round that would pass it.
    budget: float | None = Field(None, gt=0.0)


class PrivacySection(_Section):
    """Privacy settings: delta, budget, and the two DP levels.

    ``budget`` is the per-client sample-level epsilon enforced over the whole job (default:
    ``sample.epsilon``); ``user.budget`` is user-level DP's (against the released models).
    ``deterministic_noise`` derives DP noise from the job seed so runs repeat bit for bit;
    anyone who knows the seed can then predict (and remove) the noise, so it is for tests
    and debugging only.
    """

    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    budget: float | None = Field(None, gt=0.0)
    deterministic_noise: bool = False
    sample: SampleDPSection = Field(default_factory=SampleDPSection)
    user: UserDPSection = Field(default_factory=UserDPSection)

    @model_validator(mode="after")
    def _budget_has_a_level(self) -> PrivacySection:
        if self.budget is not None and not self.sample.enabled:
            raise ValueError(
                f"privacy.budget = {self.budget:g} limits sample-level DP-SGD, which is off: "
                "enable privacy.sample, or for user-level DP set privacy.user.budget instead"
            )
        return self


class WatermarkSection(_Section):
    """Adapter watermarking (white-box signatures and black-box triggers)."""

    enabled: bool = False
    owners: int = Field(1, ge=1)
    bits: int = 256  # fixed by the watermark scheme (secfed-wm/4); other values refused
    strength: float = Field(10.0, gt=0.0)
    margin: float = Field(0.05, ge=0.0)
    max_grad_fraction: float = Field(0.5, gt=0.0, le=1.0)
    job_key: bool = False
    triggers: int = Field(0, ge=0)
    triggers_for: Literal["job", "all"] = "job"
    trigger_length: int = 6  # fixed by the watermark scheme; other values refused
    trigger_batch: int = Field(16, ge=1)
    trigger_weight: float = Field(0.3, gt=0.0)


class OutputSection(_Section):
    """Where results go."""

    dir: str = "runs/default"
    checkpoint_every: int = Field(1, ge=1)


class ExperimentConfig(_Section):
    """A whole experiment file."""

    name: str = "secfed-job"
    seed: int = 0
    model: ModelSection = Field(default_factory=ModelSection)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    data: DataSection = Field(default_factory=DataSection)
    federation: FederationSection = Field(default_factory=FederationSection)
    aggregation: AggregationSection = Field(default_factory=AggregationSection)
    dpo: DPOSection = Field(default_factory=DPOSection)
    privacy: PrivacySection = Field(default_factory=PrivacySection)
    watermark: WatermarkSection = Field(default_factory=WatermarkSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _task_matches_data(self) -> ExperimentConfig:
        prefix = self.data.source.split("_")[0]
        task = {"sft": "causal_lm", "dpo": "dpo"}.get(prefix, "classification")
        if task != self.model.task:
            raise ValueError(
                f"data.source = {self.data.source!r} does not fit model.task = "
                f"{self.model.task!r}: use sft_builtin / sft_json with causal_lm, dpo_builtin / "
                "dpo_json with dpo, the others with classification"
            )
        if task != "classification" and self.data.partition != "iid":
            raise ValueError("instruction data has no labels: use data.partition = 'iid'")
        if self.dpo.sft_rounds and self.model.task != "dpo":
            raise ValueError("dpo.sft_rounds needs model.task = 'dpo'; remove it or set the task")
        if self.dpo.sft_rounds >= self.federation.rounds:
            raise ValueError(
                f"dpo.sft_rounds = {self.dpo.sft_rounds} leaves no DPO round of "
                f"federation.rounds = {self.federation.rounds}; raise rounds or lower sft_rounds"
            )
        return self

    def to_toml(self) -> str:
        """The resolved config as TOML (None values omitted)."""
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))

    def with_overrides(self, **sections: dict[str, Any]) -> ExperimentConfig:
        """Copy with some sections' keys replaced, validated again."""
        data = self.model_dump(mode="python")
        for section, values in sections.items():
            if isinstance(data.get(section), dict):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
        return parse_config(data, source="overrides")


def _explain(err: ValidationError, source: str) -> ConfigError:
    lines = [f"invalid experiment file {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        kind = e["type"]
        if kind == "extra_forbidden":
            lines.append(f"  - unknown key {key!r}: remove it or check its spelling")
        elif kind == "missing":
            lines.append(f"  - missing key {key!r}")
        else:
            bad = e.get("input")
            shown = repr(bad) if not isinstance(bad, dict) else "{...}"
            lines.append(f"  - {key} = {shown}: {e['msg']}")
    if len(lines) == 2:  # one problem: one line
        return ConfigError(f"{lines[0]} {lines[1].removeprefix('  - ')}")
    return ConfigError("\n".join(lines))


def parse_config(data: dict[str, Any], *, source: str = "<dict>") -> ExperimentConfig:
    """Validate a parsed TOML mapping."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise _explain(err, source) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"experiment file {str(p)!r} does not exist: pass the path to a .toml file"
        )
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p} is not valid TOML: {err}") from None
    return parse_config(data, source=str(p))
