"""Loading the job's examples: the built-in task or Hugging Face ``datasets`` from local files."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import builtin_task
from .config import DataSection, FederationSection
from .errors import DataError
from .partition import check_plan, dirichlet_partition, iid_partition, train_test_split

log = logging.getLogger(__name__)

#: Size of the built-in tasks when ``data.num_examples`` is not set.
BUILTIN_EXAMPLES = 2400


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels (classification)."""

    texts: list[str]
    labels: list[int]
    records: list[tuple[str, str]] | None = None  # (prompt, response) for causal-LM SFT
    pairs: list[tuple[str, str, str]] | None = None  # (prompt, chosen, rejected) for DPO
    #: Examples from this index on come from ``data.eval_path`` (held out, never partitioned).
    eval_start: int | None = None
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


def _delimiter(cfg: DataSection, path: Path) -> str:
    if cfg.delimiter is not None:
        return cfg.delimiter
    return "\t" if cfg.source == "tsv" or path.suffix.lower() in (".tsv", ".tab") else ","


def _read_file(cfg: DataSection, path: Path, key: str) -> Any:
    """One local file (or ``save_to_disk`` directory) as a ``datasets.Dataset``."""
    import datasets

    if not path.exists():
        raise DataError(f"{key} {str(path)!r} does not exist: point it at a local file or dir")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{key} {str(path)!r} is an empty file: fill it or point {key} elsewhere")
    bars_on = datasets.is_progress_bar_enabled()
    if bars_on:
        datasets.disable_progress_bars()
    try:
        if cfg.source == "disk":
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = datasets.concatenate_datasets(list(ds.values()))
        elif cfg.source in ("csv", "tsv"):
            ds = datasets.load_dataset(
                "csv", data_files=str(path), delimiter=_delimiter(cfg, path)
            )["train"]
        else:
            ds = datasets.load_dataset(cfg.source, data_files=str(path))["train"]
    except Exception as err:  # datasets raises many types; name the innermost cause
        cause: BaseException = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if "corresponds to no data" in str(cause):  # datasets' words for a header-only file
            raise DataError(
                f"{key} {str(path)!r} holds no rows: fill it or point {key} elsewhere"
            ) from None
        hint = (
            " (for tab- or semicolon-separated files set data.delimiter)"
            if cfg.source == "csv"
            else ""
        )
        raise DataError(
            f"cannot read {key} {str(path)!r} as {cfg.source}: {type(cause).__name__}: "
            f"{cause}{hint}"
        ) from err
    finally:
        if bars_on:
            datasets.enable_progress_bars()
    if len(ds) == 0:
        raise DataError(f"{key} {str(path)!r} holds no rows: fill it or point {key} elsewhere")
    for col in (cfg.text_column, cfg.label_column):
        if col not in ds.column_names:
            raise DataError(
                f"column {col!r} not in {path} (columns: {', '.join(ds.column_names)}): "
                "set data.text_column / data.label_column"
            )
        empty = [i for i, v in enumerate(ds[col]) if v is None]
        if empty:
            raise DataError(
                f"{len(empty)} rows of {path} have no {col!r} value (first: row {empty[0] + 1} "
                "after the header): fill or drop them"
            )
    return ds


def _label_ids(raw: list[Any], where: str) -> list[int]:
    """Integer labels as given (non-negative), other labels as ids of their sorted names."""
    if all(isinstance(v, int | np.integer) for v in raw):
        labels = [int(v) for v in raw]
        if min(labels) < 0:
            raise DataError(f"labels in {where} must be non-negative integers")
        return labels
    names = sorted({str(v) for v in raw})
    lookup = {name: i for i, name in enumerate(names)}
    return [lookup[str(v)] for v in raw]


def _subsample(n: int, wanted: int | None, *, seed: int, where: str) -> np.ndarray:
    """Seeded choice of ``wanted`` of ``n`` rows in file order (all rows without ``wanted``)."""
    if wanted is None or wanted >= n:
        if wanted is not None and wanted > n:
            log.warning("data.num_examples = %d but %s holds %d rows: using all", wanted, where, n)
        return np.arange(n)
    rng = np.random.default_rng([seed, 2])
    return np.sort(rng.choice(n, size=wanted, replace=False))


def _load_files(cfg: DataSection, *, seed: int) -> TextDataset:
    path = Path(cfg.path or "")
    ds = _read_file(cfg, path, "data.path")
    keep = _subsample(len(ds), cfg.num_examples, seed=seed, where=str(path))
    all_texts, all_raw = list(ds[cfg.text_column]), list(ds[cfg.label_column])
    texts = [str(all_texts[int(i)]) for i in keep]
    raw = [all_raw[int(i)] for i in keep]
    eval_start = None
    if cfg.eval_path is not None:
        held = _read_file(cfg, Path(cfg.eval_path), "data.eval_path")
        eval_start = len(texts)
        texts += [str(t) for t in held[cfg.text_column]]
        raw += list(held[cfg.label_column])
    labels = _label_ids(raw, str(path) if eval_start is None else f"{path} / {cfg.eval_path}")
    train_labels = labels[:eval_start]
    if len(set(train_labels)) < 2:
        log.warning(
            "every training example in %s has label %s: a classifier learns nothing from "
            "one class (its accuracy will read 1.0 on one-class held-out data); check "
            "data.label_column",
            path,
            raw[0],
        )
    names = None
    if not all(isinstance(v, int | np.integer) for v in raw):
        names = sorted({str(v) for v in raw})
    return TextDataset(texts, labels, eval_start=eval_start, label_names=names)


def load_labelled_file(cfg: DataSection, *, seed: int = 0) -> TextDataset:
    """One labelled file (``cfg.path``, plus ``cfg.eval_path`` if set) as a dataset."""
    return _load_files(cfg, seed=seed)


def load_dataset(cfg: DataSection, *, seed: int) -> TextDataset:
    """The job's examples, deterministic for the same config and seed."""
    if cfg.source in ("dpo_builtin", "dpo_json"):
        from .dpo import generate_preference_task, load_preference_records

        if cfg.source == "dpo_builtin":
            pairs = generate_preference_task(
                num_examples=cfg.num_examples or BUILTIN_EXAMPLES, seed=seed
            )
        else:
            pairs = load_preference_records(
                cfg.path or "", prompt_key=cfg.prompt_key, chosen_key=cfg.chosen_key,
                rejected_key=cfg.rejected_key,
            )  # fmt: skip
        chosen = [(p, c) for p, c, _ in pairs]
        return TextDataset([p + c for p, c in chosen], [0] * len(pairs), chosen, pairs)
    count = cfg.num_examples or BUILTIN_EXAMPLES
    if cfg.source in ("sft_builtin", "sft_json"):
        from .sft import generate_sft_task, load_sft_records

        if cfg.source == "sft_builtin":
            records = generate_sft_task(num_examples=count, seed=seed)
        else:
            records = load_sft_records(
                cfg.path or "", prompt_key=cfg.prompt_key, response_key=cfg.response_key
            )
            keep = _subsample(len(records), cfg.num_examples, seed=seed, where=str(cfg.path))
            records = [records[int(i)] for i in keep]
        return TextDataset([p + r for p, r in records], [0] * len(records), records)
    if cfg.source == "builtin":
        texts, labels = builtin_task.generate(
            num_examples=count, seed=seed, label_noise=cfg.label_noise
        )
        return TextDataset(texts, labels)
    data = _load_files(cfg, seed=seed)
    if (data.eval_start or len(data.texts)) < 2:
        raise DataError(f"{cfg.path} holds {len(data.texts)} examples; need at least 2")
    return data


def partition(
    data: TextDataset, cfg: DataSection, fed: FederationSection, *, seed: int
) -> list[ClientShard]:
    """Split ``data`` across ``fed.clients`` clients, each with train and test parts.

    With a separate evaluation file (``data.eval_start``) clients hold out nothing. A plan
    that leaves a client without training (or held-out) examples raises :class:`DataError`;
    clients with less than one batch to train on are warned about.
    """
    rng = np.random.default_rng([seed, 1])
    n = len(data.labels) if data.eval_start is None else data.eval_start
    if cfg.partition == "iid":
        parts = iid_partition(n, clients=fed.clients, rng=rng)
    else:
        parts = dirichlet_partition(
            data.labels[:n],
            clients=fed.clients,
            alpha=cfg.alpha,
            rng=rng,
            min_size=cfg.min_examples_per_client,
        )
    fraction = 0.0 if data.eval_start is not None else cfg.test_fraction
    check_plan([len(p) for p in parts], test_fraction=fraction, total=n)
    shards = []
    for cid, idx in enumerate(parts):
        if fraction:
            train, test = train_test_split(idx, test_fraction=fraction, rng=rng)
        else:
            train, test = idx, np.array([], dtype=np.int64)
        shards.append(ClientShard(cid, train, test))
    small = [(s.client_id, len(s.train)) for s in shards if len(s.train) < fed.batch_size]
    if small:
        shown = ", ".join(f"client {c} ({k})" for c, k in small[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        log.warning(
            "%s%s hold fewer training examples than one batch (federation.batch_size = %d): "
            "their updates are noisy; use fewer clients, more data%s",
            shown,
            more,
            fed.batch_size,
            " or a larger data.alpha" if cfg.partition == "dirichlet" else "",
        )
    return shards
