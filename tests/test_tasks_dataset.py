"""User datasets: JSONL, Parquet and saved HF datasets become Tasks; bad rows fail clearly."""

from __future__ import annotations

import json

import pytest

from rlm_env.tasks import DatasetError, load_dataset_tasks
from rlm_env.tasks.base import ContextDir, ContextFile

ROWS = [
    {"id": "q1", "context": "alpha beta", "question": "first?", "answer": "alpha", "split": "train"},
    {"context": ["c1", "c2"], "question": "second?", "answer": 2, "scorer": "numeric", "split": "test"},
    {
        "context": {"a.txt": "x"},
        "question": "third?",
        "answer": [[1, 2]],
        "scorer": "pair_f1",
        "split": "test",
        "difficulty": "hard",
    },
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl(tmp_path):
    tasks = load_dataset_tasks(_jsonl(tmp_path / "d.jsonl", ROWS))
    assert [t.id for t in tasks] == ["q1", "d-2", "d-3"]
    assert (
        tasks[0].context == "alpha beta"
        and tasks[0].scorer == "exact"
        and tasks[0].expected_answer == "alpha"
    )
    assert tasks[1].context == ["c1", "c2"] and tasks[1].scorer == "numeric"
    assert tasks[2].metadata["difficulty"] == "hard" and tasks[2].metadata["family"] == "dataset"
    assert [t.id for t in load_dataset_tasks(tmp_path / "d.jsonl", split="test")] == ["d-2", "d-3"]
    assert len(load_dataset_tasks(tmp_path / "d.jsonl", limit=1)) == 1


def test_context_file_kinds(tmp_path):
    (tmp_path / "ctx.txt").write_text("long text")
    (tmp_path / "ctx.json").write_text('{"a": 1}')
    (tmp_path / "repo").mkdir()
    rows = [
        {"context_file": name, "question": "q?", "answer": "a"} for name in ("ctx.txt", "ctx.json", "repo")
    ]
    tasks = load_dataset_tasks(_jsonl(tmp_path / "d.jsonl", rows))
    assert tasks[0].context == ContextFile(tmp_path / "ctx.txt", "text")
    assert tasks[1].context == ContextFile(tmp_path / "ctx.json", "json")
    assert tasks[2].context == ContextDir(tmp_path / "repo")


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "context": ["one", "two"],
            "question": ["a?", "b?"],
            "answer": ["1", "2"],
            "scorer": [None, "numeric"],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    tasks = load_dataset_tasks(tmp_path / "d.parquet")
    assert [(t.context, t.question, t.expected_answer, t.scorer) for t in tasks] == [
        ("one", "a?", "1", "exact"),
        ("two", "b?", "2", "numeric"),
    ]


def test_saved_hf_dataset(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list([{"context": "c", "question": "q?", "answer": "a"}])
    DatasetDict({"test": ds, "train": ds}).save_to_disk(str(tmp_path / "saved"))
    assert load_dataset_tasks(tmp_path / "saved", split="test")[0].question == "q?"
    with pytest.raises(DatasetError, match="pass split"):
        load_dataset_tasks(tmp_path / "saved")
    with pytest.raises(DatasetError, match="no split 'dev'"):
        load_dataset_tasks(tmp_path / "saved", split="dev")


@pytest.mark.parametrize(
    "row,message",
    [
        ({"context": "c", "answer": "a"}, r"row 2: missing field 'question'"),
        ({"context": "c", "question": "q?"}, r"row 2: missing field 'answer'"),
        ({"question": "q?", "answer": "a"}, r"row 2: missing field 'context' \(or 'context_file'\)"),
        (
            {"context_file": "nope.txt", "question": "q?", "answer": "a"},
            r"row 2: context_file 'nope.txt' not found",
        ),
        ({"context": "c", "question": "", "answer": "a"}, r"row 2: field 'question' must be a non-empty"),
    ],
)
def test_missing_fields(tmp_path, row, message):
    path = _jsonl(tmp_path / "bad.jsonl", [ROWS[0], row])
    with pytest.raises(DatasetError, match=message):
        load_dataset_tasks(path)


def test_parquet_missing_field(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"context": ["one"], "answer": ["1"]}), tmp_path / "d.parquet")
    with pytest.raises(DatasetError, match=r"row 1: missing field 'question'"):
        load_dataset_tasks(tmp_path / "d.parquet")


def test_bad_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset_tasks(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        load_dataset_tasks(tmp_path / "x.csv")
    (tmp_path / "broken.jsonl").write_text('{"context": "c"\n')
    with pytest.raises(DatasetError, match="line 1: not valid JSON"):
        load_dataset_tasks(tmp_path / "broken.jsonl")
