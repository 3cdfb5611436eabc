"""An organisation's own data on its SuperNode: the node config names the file.

In a cross-silo deployment each SuperNode's node config (``flower-supernode --node-config``,
given to the node agent too) names the organisation's local data::

    partition-id=0 data-path="/srv/bank/reviews.csv" text-column="text" label-column="label"
    test-fraction=0.2            # or: eval-path="/srv/bank/heldout.csv"
    data-source="csv"            # default: from the file's suffix (.csv .json .jsonl .parquet)

The whole file is that client's data (its training set, less the held-out part); nothing of
it leaves the node but what the job's protocol and accountant allow. The server learns each
client's id, its number of training and held-out examples, its label names when labels are
strings (a schema, no rows) and, with federated evaluation, the held-out loss and accuracy
sums. Without ``data-path`` a node takes partition ``partition-id`` of the job's own dataset
(the simulation set-up: the same file and seed on every machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..assembly import public_corpus
from ..config import DataSection, ExperimentConfig
from ..data import ClientShard, TextDataset, load_labelled_file
from ..errors import ConfigError, DataError
from ..partition import train_test_split

#: Node config keys read here, and the DataSection field each one sets.
NODE_KEYS = {
    "data-path": "path",
    "data-source": "source",
    "text-column": "text_column",
    "label-column": "label_column",
    "test-fraction": "test_fraction",
}
LOCAL_KEY = "data-path"
EVAL_PATH = "eval-path"
SUFFIX_SOURCE = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class NodeData:
    """One node's examples: training and held-out indices into ``data``."""

    data: TextDataset
    shard: ClientShard
    label_names: list[str] | None

    def info(self) -> dict[str, Any]:
        """What the server may learn: counts, label count and label names (no rows)."""
        return {
            "data": "local",
            "num_examples": len(self.shard.train),
            "num_test": len(self.shard.test),
            "num_labels": self.data.num_labels,
            "label_names": self.label_names,
        }


def section_for(cfg: ExperimentConfig, node_config: dict[str, Any], *, key: str) -> DataSection:
    """The job's data section with the node's file (``key``) and its columns."""
    path = str(node_config[key])
    values: dict[str, Any] = {**cfg.data.model_dump(), "path": path}
    for nkey, field in NODE_KEYS.items():
        if nkey != "data-path" and nkey in node_config:
            values[field] = node_config[nkey]
    if "data-source" not in node_config:
        suffix = Path(path).suffix.lower()
        if suffix not in SUFFIX_SOURCE:
            raise ConfigError(
                f'cannot tell the format of {path!r} from its suffix: add data-source="csv" '
                "(or json, parquet) to the node config"
            )
        values["source"] = SUFFIX_SOURCE[suffix]
    if values["source"] not in ("csv", "json", "parquet", "disk"):
        raise ConfigError(
            f"data-source = {values['source']!r}: a node's own file must be csv, json, parquet "
            "or disk (classification text and label columns)"
        )
    try:
        return DataSection.model_validate(values)
    except ValueError as err:
        raise ConfigError(f"node config data settings: {err}") from err


def _labelled(section: DataSection) -> tuple[TextDataset, list[str] | None]:
    """The file's texts and labels (string labels mapped by sorted name)."""
    data = load_labelled_file(section)
    if not data.texts:
        raise DataError(f"{section.path} holds no examples")
    return data, data.label_names


def load_node_data(cfg: ExperimentConfig, node_config: dict[str, Any], *, seed: int) -> NodeData:
    """The node's whole file as its client's data, split into train and held-out parts."""
    if cfg.model.task != "classification":
        raise ConfigError(
            "a node's own data file is supported for classification jobs; causal-LM SFT over "
            "Flower still uses the job's dataset partitions"
        )
    train_data, names = _labelled(section_for(cfg, node_config, key="data-path"))
    n = len(train_data.texts)
    rng = np.random.default_rng([seed, 2])
    if EVAL_PATH in node_config:
        test_data, test_names = _labelled(section_for(cfg, node_config, key=EVAL_PATH))
        if test_names != names:
            raise DataError(
                f"{node_config[EVAL_PATH]} has label names {test_names}, "
                f"{node_config['data-path']} has {names}: use the same labels in both files"
            )
        data = TextDataset(train_data.texts + test_data.texts, train_data.labels + test_data.labels)
        train, test = np.arange(n), np.arange(n, len(data.texts))
    else:
        section = section_for(cfg, node_config, key="data-path")
        data = train_data
        train, test = train_test_split(np.arange(n), test_fraction=section.test_fraction, rng=rng)
    if len(test) == 0:
        raise DataError(
            f"{node_config['data-path']}: {n} examples leave no held-out example at "
            "test-fraction; raise test-fraction or give eval-path"
        )
    return NodeData(data, ClientShard(-1, train, test), names)


def load_eval_file(cfg: ExperimentConfig, path: str) -> tuple[TextDataset, list[str] | None]:
    """A server-side evaluation file (the whole file is the global held-out set)."""
    return _labelled(section_for(cfg, {"eval-path": path}, key="eval-path"))


def shared_tokenizer_texts(cfg: ExperimentConfig) -> list[str] | None:
    """Tokenizer corpus every party shares when nodes hold their own files.

    A ``model.path`` model brings its tokenizer; the built-in model's tokenizer is trained on
    secfed's public built-in corpus, never on one organisation's texts, so every node and the
    server build the same vocabulary.
    """
    return None if cfg.model.path else public_corpus("builtin", public_words=cfg.model.public_words)
