"""Job input files and retraining data: formats, limits, roots, feedback joins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kloop_model.dataset import Example, builtin_dataset, load_dataset, shifted_dataset
from kloop_worker.datasets import (
    InputError,
    combine,
    feedback_examples,
    local_path,
    probe_texts,
    read_texts,
    shipped_or_file,
    write_dataset,
)


def read(path: Path, **limits: object) -> list[str]:
    options: dict[str, Any] = {"roots": [], "max_bytes": 10_000, "max_rows": 100, **limits}
    return read_texts(str(path), **options)


def test_local_paths_and_file_uris() -> None:
    assert local_path("/data/a b.jsonl") == Path("/data/a b.jsonl")
    assert local_path("file:///data/a%20b.jsonl") == Path("/data/a b.jsonl")
    assert local_path("file://localhost/data/x.csv") == Path("/data/x.csv")
    for bad, why in [
        ("s3://bucket/x.jsonl", "only local paths"),
        ("relative/x.jsonl", "absolute"),
        ("file://host/x.jsonl", "local path"),
    ]:
        with pytest.raises(InputError, match=why):
            local_path(bad)


def test_the_three_formats(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "one", "label": 1}\n\n{"text": "two"}\n')
    csv_file = tmp_path / "a.csv"
    csv_file.write_text('id,text\n1,"one, quoted"\n2,"multi\nline"\n')
    txt = tmp_path / "a.txt"
    txt.write_text("one\ntwo\n")
    assert read(jsonl) == ["one", "two"]
    assert read(csv_file) == ["one, quoted", "multi\nline"]
    assert read(txt) == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("x.jsonl", '{"text": 3}\n', 'line 1: no string "text"'),
        ("x.jsonl", "nope\n", "line 1: not JSON"),
        ("x.csv", "a,b\n1,2\n", 'header with a "text" column'),
        ("x.parquet", "", "unknown format .parquet"),
    ],
)
def test_bad_files_say_what_and_where(tmp_path: Path, name: str, content: str, error: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=error):
        read(path)


def test_limits_and_roots(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("a\nb\nc\n")
    with pytest.raises(InputError, match="more than the limit of 3"):
        read(path, max_bytes=3)
    with pytest.raises(InputError, match="3 rows, more than the limit of 2"):
        read(path, max_rows=2)
    with pytest.raises(InputError, match="outside the dataset roots"):
        read(path, roots=[tmp_path / "elsewhere"])
    assert read(path, roots=[tmp_path]) == ["a", "b", "c"]
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="not UTF-8"):
        read(tmp_path / "bad.txt")


def test_feedback_examples_join_labels_with_texts() -> None:
    predictions = [
        {"id": "p1", "model": "m", "text": "great"},
        {"id": "p2", "model": "m"},  # no text recorded
        {"id": "p3", "model": "other", "text": "awful"},
        {"id": "p4", "model": "m", "text": "awful"},
        {"id": "p5", "model": "m", "text": "great"},
    ]
    feedback = [
        {"prediction_id": "p1", "model": "m", "label": "positive"},
        {"prediction_id": "p2", "model": "m", "label": "negative"},
        {"prediction_id": "p3", "model": "other", "label": "negative"},
        {"prediction_id": "p4", "model": "m", "label": "negative"},
        {"prediction_id": "p4", "model": "m", "label": "positive"},  # the first one wins
        {"prediction_id": "p9", "model": "m", "label": "positive"},
        {"prediction_id": "p5", "model": "m", "label": "positive"},  # "great" again: one row
    ]
    examples = feedback_examples(predictions, feedback, model="m", positive_label="positive")
    assert examples == [Example("great", 1), Example("awful", 0)]


def test_retraining_data_is_written_once_per_content(tmp_path: Path) -> None:
    known = builtin_dataset().texts[0]
    extra = [Example("new text", 1), Example(known, 0)]  # a curated text wins
    data = combine([builtin_dataset(), shifted_dataset()], extra, "m")
    assert len(data) == 50 + 200 + 1
    path = write_dataset(data, tmp_path / "out", "m")
    assert write_dataset(data, tmp_path / "out", "m") == path
    assert load_dataset(path) == data
    assert [p.name for p in (tmp_path / "out").iterdir()] == [path.name]


def test_shipped_or_file(tmp_path: Path) -> None:
    assert shipped_or_file("builtin") == builtin_dataset()
    assert len(shipped_or_file("shifted")) == 200
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": t, "label": i % 2}) for i, t in enumerate("abcd"))
    )
    assert len(shipped_or_file(str(path))) == 4


def test_probe_texts_spread_over_the_dataset() -> None:
    data = builtin_dataset()
    probe = probe_texts(data, 10)
    assert len(probe) == 10 and probe[0] == data.texts[0] and probe[5] == data.texts[25]
    assert probe_texts(data, 100) == data.texts
