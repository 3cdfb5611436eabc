"""Loading the job's examples: the built-in task or Hugging Face ``datasets`` from local files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import builtin_task
from .config import DataSection, FederationSection
from .errors import DataError
from .partition import dirichlet_partition, iid_partition, train_test_split


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels (classification)."""

    texts: list[str]
    labels: list[int]
    records: list[tuple[str, str]] | None = None  # (prompt, response) for causal-LM SFT
    label_names: list[str] | None = None  # string labels: label i is label_names[i]

    @property
    def num_labels(self) -> int:
        return int(max(self.labels)) + 1 if self.labels else 0


@dataclass(frozen=True)
class ClientShard:
    """One client's train and test example indices into the job's dataset."""

    client_id: int
    train: np.ndarray
    test: np.ndarray


def _load_hf(cfg: DataSection) -> TextDataset:
    import datasets

    path = Path(cfg.path or "")
    if not path.exists():
        raise DataError(f"data.path {str(path)!r} does not exist: point it at a local file or dir")
    try:
        if cfg.source == "disk":
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = datasets.concatenate_datasets(list(ds.values()))
        else:
            ds = datasets.load_dataset(cfg.source, data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types; keep the cause
        raise DataError(f"cannot read {cfg.source} data from {path}: {err}") from err
    for col in (cfg.text_column, cfg.label_column):
        if col not in ds.column_names:
            raise DataError(
                f"column {col!r} not in {path} (columns: {', '.join(ds.column_names)}): "
                "set data.text_column / data.label_column"
            )
    texts = [str(t) for t in ds[cfg.text_column]]
    raw = list(ds[cfg.label_column])
    names = None
    if all(isinstance(v, int | np.integer) for v in raw):
        labels = [int(v) for v in raw]
        if min(labels) < 0:
            raise DataError(f"labels in {path} must be non-negative integers")
    else:
        names = sorted({str(v) for v in raw})
        lookup = {name: i for i, name in enumerate(names)}
        labels = [lookup[str(v)] for v in raw]
    return TextDataset(texts, labels, label_names=names)


def load_dataset(cfg: DataSection, *, seed: int) -> TextDataset:
    """The job's examples, deterministic for the same config and seed."""
    if cfg.source in ("sft_builtin", "sft_json"):
        from .sft import generate_sft_task, load_sft_records

        if cfg.source == "sft_builtin":
            records = generate_sft_task(num_examples=cfg.num_examples, seed=seed)
        else:
            records = load_sft_records(
                cfg.path or "", prompt_key=cfg.prompt_key, response_key=cfg.response_key
            )
        return TextDataset([p + r for p, r in records], [0] * len(records), records)
    if cfg.source == "builtin":
        texts, labels = builtin_task.generate(
            num_examples=cfg.num_examples, seed=seed, label_noise=cfg.label_noise
        )
        return TextDataset(texts, labels)
    data = _load_hf(cfg)
    if len(data.texts) < 2:
        raise DataError(f"{cfg.path} holds {len(data.texts)} examples; need at least 2")
    return data


def partition(
    data: TextDataset, cfg: DataSection, fed: FederationSection, *, seed: int
) -> list[ClientShard]:
    """Split ``data`` across ``fed.clients`` clients, each with train and test parts."""
    rng = np.random.default_rng([seed, 1])
    if cfg.partition == "iid":
        parts = iid_partition(len(data.labels), clients=fed.clients, rng=rng)
    else:
        parts = dirichlet_partition(
            data.labels,
            clients=fed.clients,
            alpha=cfg.alpha,
            rng=rng,
            min_size=cfg.min_examples_per_client,
        )
    shards = []
    for cid, idx in enumerate(parts):
        train, test = train_test_split(idx, test_fraction=cfg.test_fraction, rng=rng)
        shards.append(ClientShard(cid, train, test))
    return shards
