"""Loading job data: the built-in task and Hugging Face ``datasets`` from local files."""

from __future__ import annotations

import datasets
import pytest

from secfed import builtin_task
from secfed.config import DataSection
from secfed.data import load_dataset
from secfed.errors import DataError
from secfed.runner import FederatedRunner
from tests.secfed.conftest import tiny_job

TEXTS, LABELS = builtin_task.generate(num_examples=120, seed=5)


def test_builtin_task_is_deterministic_and_balanced():
    again = builtin_task.generate(num_examples=120, seed=5)
    assert again == (TEXTS, LABELS)
    assert builtin_task.generate(num_examples=120, seed=6) != again
    share = sum(LABELS) / len(LABELS)
    assert 0.3 < share < 0.7


def _write(tmp_path, kind):
    ds = datasets.Dataset.from_dict(
        {"sentence": TEXTS, "y": ["pos" if y else "neg" for y in LABELS]}
    )
    path = tmp_path / f"data.{kind}"
    if kind == "csv":
        ds.to_csv(str(path))
    elif kind == "json":
        ds.to_json(str(path))
    elif kind == "parquet":
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["csv", "json", "parquet", "disk"])
def test_local_files_load_with_string_labels_mapped(tmp_path, kind):
    path = _write(tmp_path, kind)
    cfg = DataSection(source=kind, path=str(path), text_column="sentence", label_column="y")
    data = load_dataset(cfg, seed=0)
    assert data.texts == TEXTS
    # String labels become sorted integer ids: "neg" -> 0, "pos" -> 1.
    assert data.labels == LABELS


def test_missing_column_names_the_columns(tmp_path):
    path = _write(tmp_path, "csv")
    cfg = DataSection(source="csv", path=str(path))
    with pytest.raises(DataError, match=r"column 'text' not in .*sentence, y"):
        load_dataset(cfg, seed=0)


def test_missing_file_is_a_clear_error(tmp_path):
    cfg = DataSection(source="parquet", path=str(tmp_path / "nope.parquet"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(cfg, seed=0)


def test_a_job_runs_on_a_csv_file(tmp_path):
    path = _write(tmp_path, "csv")
    cfg = tiny_job(
        data={"source": "csv", "path": str(path), "text_column": "sentence", "label_column": "y"},
        federation={"clients": 2, "rounds": 1},
    )
    summary = FederatedRunner(cfg, tmp_path / "run").run()
    assert summary["rounds"] == 1 and 0.0 <= summary["accuracy"] <= 1.0
