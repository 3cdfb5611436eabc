"""Local data files as a new user brings them: TSV, other delimiters, a separate evaluation
file, subsampling, and the plans and files that must be refused or warned about."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from secfed import builtin_task
from secfed.assembly import build_parts
from secfed.config import DataSection, FederationSection
from secfed.data import load_dataset, partition
from secfed.errors import DataError
from tests.secfed.conftest import tiny_job

TEXTS, LABELS = builtin_task.generate(num_examples=120, seed=5)
NAMES = ["neg", "pos"]


def _write(path: Path, texts: list[str], labels: list[int], *, delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(["sentence", "y"])
        for t, y in zip(texts, labels, strict=True):
            writer.writerow([f"{t}, really", NAMES[y]])  # a comma inside every text
    return path


def _section(path: Path, **extra: object) -> DataSection:
    return DataSection(path=str(path), text_column="sentence", label_column="y", **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "delimiter", "extra"),
    [
        ("d.tsv", "\t", {"source": "csv"}),  # inferred from the suffix
        ("d.txt", "\t", {"source": "tsv"}),
        ("d.txt", ";", {"source": "csv", "delimiter": ";"}),
    ],
)
def test_tsv_and_delimiters(tmp_path, name, delimiter, extra):
    path = _write(tmp_path / name, TEXTS, LABELS, delimiter=delimiter)
    data = load_dataset(_section(path, **extra), seed=0)
    assert data.texts == [f"{t}, really" for t in TEXTS]
    assert data.labels == LABELS


def test_delimiter_is_validated():
    with pytest.raises(ValueError, match="delimiter"):
        DataSection(source="json", path="x.json", delimiter="\t")
    with pytest.raises(ValueError, match="eval_path"):
        DataSection(source="builtin", eval_path="x.csv")


def test_num_examples_draws_a_seeded_subsample_of_a_file(tmp_path):
    path = _write(tmp_path / "d.csv", TEXTS, LABELS)
    cfg = _section(path, source="csv", num_examples=40)
    a, b, c = (load_dataset(cfg, seed=s) for s in (1, 1, 2))
    assert len(a.texts) == 40 and a == b and a.texts != c.texts
    rows = {f"{t}, really": y for t, y in zip(TEXTS, LABELS, strict=True)}
    assert all(rows[t] == y for t, y in zip(a.texts, a.labels, strict=True))
    assert len(set(a.texts)) == 40  # without replacement
    assert len(load_dataset(_section(path, source="csv"), seed=1).texts) == len(TEXTS)


def test_eval_path_is_the_held_out_set(tmp_path):
    train = _write(tmp_path / "train.csv", TEXTS[:90], LABELS[:90])
    # The evaluation file holds only "pos": labels must still map through the union.
    held = _write(tmp_path / "eval.csv", TEXTS[90:], [1] * 30)
    cfg = tiny_job(
        data={"source": "csv", "path": str(train), "eval_path": str(held),
              "text_column": "sentence", "label_column": "y"},
        federation={"clients": 3},
    )  # fmt: skip
    parts = build_parts(cfg)
    assert sum(len(s.train) for s in parts.shards) == 90
    assert all(len(s.test) == 0 for s in parts.shards)
    assert len(parts.test_set) == 30
    assert parts.test_set.tensors[2].tolist() == [1] * 30


def test_a_plan_with_empty_held_out_sets_is_refused():
    # The case: 10 clients on 20 rows -> 2 each, round(0.4) = 0 held out.
    texts, _ = builtin_task.generate(num_examples=20, seed=1)
    data = load_dataset(DataSection(num_examples=20), seed=1)
    assert data.texts == texts
    with pytest.raises(DataError, match=r"10 of 10 clients would have no held-out.*at most 6"):
        partition(data, DataSection(), FederationSection(clients=10), seed=0)
    # Six clients of 3 or 4 examples each hold one out and train on the rest.
    shards = partition(data, DataSection(), FederationSection(clients=6), seed=0)
    assert all(len(s.test) >= 1 and len(s.train) >= 1 for s in shards)


def test_a_plan_with_no_training_examples_is_refused():
    data = load_dataset(DataSection(num_examples=20), seed=1)
    with pytest.raises(DataError, match="no training examples"):
        partition(data, DataSection(test_fraction=0.9), FederationSection(clients=10), seed=0)


def test_single_class_file_warns(tmp_path, caplog):
    path = _write(tmp_path / "one.csv", TEXTS, [1] * len(TEXTS))
    with caplog.at_level(logging.WARNING, logger="secfed.data"):
        load_dataset(_section(path, source="csv"), seed=0)
    assert "learns nothing from one class" in caplog.text


def test_tiny_dirichlet_clients_warn(caplog):
    data = load_dataset(DataSection(num_examples=200), seed=0)
    cfg = DataSection(partition="dirichlet", alpha=0.3, min_examples_per_client=5)
    with caplog.at_level(logging.WARNING, logger="secfed.data"):
        shards = partition(data, cfg, FederationSection(clients=8, batch_size=16), seed=3)
    small = [s.client_id for s in shards if len(s.train) < 16]
    assert small, "the draw should leave at least one client below one batch"
    for cid in small:
        assert f"client {cid} (" in caplog.text


@pytest.mark.parametrize("content", ["", "sentence,y\n"])
def test_empty_files_are_clean_errors(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=r"empty file|holds no rows"):
        load_dataset(_section(path, source="csv"), seed=0)


def test_unreadable_csv_names_the_cause_and_the_delimiter_option(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('sentence,y\n"unclosed,1\nb,2,3,4\n')
    with pytest.raises(DataError, match=r"cannot read data.path .*bad.csv.*data.delimiter"):
        load_dataset(_section(path, source="csv"), seed=0)


def test_eval_path_missing_is_a_clean_error(tmp_path):
    path = _write(tmp_path / "d.csv", TEXTS, LABELS)
    cfg = _section(path, source="csv", eval_path=str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match=r"data.eval_path .*does not exist"):
        load_dataset(cfg, seed=0)


def test_rows_without_a_label_are_named(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("sentence,y\ngood film,pos\nbad film,\nfine,neg\n")
    with pytest.raises(DataError, match=r"1 rows of .*gaps.csv have no 'y' value .*row 2"):
        load_dataset(_section(path, source="csv"), seed=0)
