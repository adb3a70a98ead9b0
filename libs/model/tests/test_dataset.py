"""Shipped datasets, strict loaders, digest, split and generators."""

from __future__ import annotations

import builtins
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kloop_model.dataset import (
    DEFAULT_MAX_BYTES,
    Dataset,
    DatasetError,
    Example,
    builtin_dataset,
    dataset_digest,
    dump_dataset,
    generate_dataset,
    generate_texts,
    load_dataset,
    parse_dataset,
    rule_label,
    shifted_dataset,
    stratified_split,
)
from kloop_model.text import tokenize


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


# --- shipped datasets ---------------------------------------------------------------------


def test_builtin_dataset_is_balanced_and_clean() -> None:
    dataset = builtin_dataset()
    assert len(dataset) == 50
    assert dataset.positive_count == dataset.negative_count == 25
    assert dataset.labels.dtype == np.int64
    assert all(tokenize(text) for text in dataset.texts)
    assert len(set(dataset.texts)) == 50


def test_shifted_dataset_ships_as_package_data_with_a_different_vocabulary() -> None:
    shifted = shifted_dataset()
    assert len(shifted) == 200
    assert shifted.positive_count == shifted.negative_count == 100
    builtin_tokens = {token for text in builtin_dataset().texts for token in tokenize(text)}
    shifted_tokens = [token for text in shifted.texts for token in tokenize(text)]
    unseen = sum(token not in builtin_tokens for token in shifted_tokens) / len(shifted_tokens)
    assert unseen > 0.5
    assert any(text != text.lower() for text in shifted.texts)  # a shift in style too


def test_dataset_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="one label per text"):
        Dataset(["a", "b"], np.array([1]))
    with pytest.raises(ValueError, match="0 or 1"):
        Dataset(["a"], np.array([2]))
    dataset = Dataset.from_examples([Example("a", 1), Example("b", 0)], name="x")
    assert list(dataset) == [Example("a", 1), Example("b", 0)]
    assert dataset == Dataset(["a", "b"], np.array([1, 0]), name="other name")
    assert dataset.subset([1]).texts == ["b"]


# --- loaders: valid input -------------------------------------------------------------------


def test_load_csv_with_extra_columns_label_forms_quotes_and_blank_lines(tmp_path: Path) -> None:
    content = (
        "\ufeffid, Label ,TEXT,source\r\n"
        '1,1,"great, really great",web\r\n'
        "\r\n"
        '2, false ,"multi\nline ""quoted"" text",app\r\n'
        "3,Positive,fine,web\r\n"
        "4,NEGATIVE,bad,web\r\n"
        "5,0,worse,web\r\n"
        "6,true,best,web\r\n"
    )
    dataset = load_dataset(write(tmp_path, "reviews.csv", content))
    assert dataset.texts == [
        "great, really great",
        'multi\nline "quoted" text',
        "fine",
        "bad",
        "worse",
        "best",
    ]
    assert dataset.labels.tolist() == [1, 0, 1, 0, 0, 1]
    assert dataset.name == "reviews"


def test_load_jsonl_with_extra_keys_and_label_forms(tmp_path: Path) -> None:
    lines = [
        {"text": "good", "label": 1, "id": 7},
        {"label": False, "text": "bad"},
        {"text": "ok\u2028fine", "label": "positive"},
        {"text": "meh", "label": "0"},
        {"text": "yes", "label": True},
    ]
    content = "\n".join(json.dumps(line) for line in lines) + "\n\n   \n"
    dataset = load_dataset(write(tmp_path, "data.jsonl", content))
    assert dataset.texts == ["good", "bad", "ok\u2028fine", "meh", "yes"]
    assert dataset.labels.tolist() == [1, 0, 1, 0, 1]


def test_format_argument_overrides_the_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "data.txt", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    assert len(load_dataset(path, format="jsonl")) == 2
    # "" means infer, as the training API's DatasetSpec.format does.
    assert len(load_dataset(write(tmp_path, "e.csv", "text,label\na,1\nb,0\n"), format="")) == 2
    assert len(load_dataset(write(tmp_path, "d.ndjson", path.read_text()))) == 2


# --- loaders: every kind of bad input, with the row in the message -------------------------


def expect_error(path: Path, kind: str, row: int | None, *fragments: str, **kwargs: Any) -> None:
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, **kwargs)
    error = caught.value
    assert error.kind == kind, str(error)
    assert error.reason == kind
    assert error.row == row, str(error)
    message = str(error)
    assert str(path) in message
    if row is not None:
        assert f"row {row}" in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_column_csv_header(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "a.csv", "text,score\nhi,1\n"), "missing_column", 1, "'label'")
    expect_error(write(tmp_path, "b.csv", "\n\nlabel\n1\n"), "missing_column", 3, "'text'")


def test_missing_field_jsonl(tmp_path: Path) -> None:
    content = '{"text": "a", "label": 1}\n\n{"text": "b"}\n'
    expect_error(write(tmp_path, "a.jsonl", content), "missing_column", 3, "'label'")


@pytest.mark.parametrize("label", ["2", "-1", "yes", "", "0.5", "1.0", "pos"])
def test_bad_label_csv(tmp_path: Path, label: str) -> None:
    content = f"text,label\ngood,1\nbad,{label}\n"
    expect_error(write(tmp_path, "a.csv", content), "bad_label", 3, "not binary")


@pytest.mark.parametrize("label", ["2", "-1", "0.0", "1.5", "null", '"yes"', "[1]", "NaN"])
def test_bad_label_jsonl(tmp_path: Path, label: str) -> None:
    content = '{"text": "good", "label": 1}\n{"text": "bad", "label": ' + label + "}\n"
    expect_error(write(tmp_path, "a.jsonl", content), "bad_label", 2, "not binary")


def test_empty_file_and_no_rows(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "a.csv", b""), "empty", None, "empty")
    expect_error(write(tmp_path, "b.csv", "text,label\n\n"), "empty", None, "no data rows")
    expect_error(write(tmp_path, "c.jsonl", "\n  \n"), "empty", None, "no data rows")
    expect_error(write(tmp_path, "d.csv", "\n\n"), "empty", None, "no header")


def test_too_large_is_checked_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "a.csv", "text,label\ngood,1\nbad,0\n")
    real_open = builtins.open

    def no_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(path):
            raise AssertionError("the file was opened")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_open)
    expect_error(path, "too_large", None, "over the limit of 10 bytes", max_bytes=10)
    assert DEFAULT_MAX_BYTES >= 1024 * 1024


def test_invalid_utf8_names_the_byte_offset_and_line(tmp_path: Path) -> None:
    content = b"text,label\ngood,1\nbad \xff here,0\n"
    expect_error(write(tmp_path, "a.csv", content), "encoding", 3, "byte offset 22", "line 3")


def test_malformed_json_line(tmp_path: Path) -> None:
    content = '{"text": "a", "label": 1}\n{"text": "b", "label": 0\n'
    expect_error(write(tmp_path, "a.jsonl", content), "bad_json", 2, "malformed JSON")
    expect_error(write(tmp_path, "b.jsonl", '["a", 1]\n'), "bad_json", 1, "JSON object")
    deep = "[" * 100_000 + "]" * 100_000
    expect_error(write(tmp_path, "c.jsonl", deep + "\n"), "bad_json", 1)


@pytest.mark.parametrize("text", ['""', '"   "', '"\\t\\n"'])
def test_empty_text_jsonl(tmp_path: Path, text: str) -> None:
    content = '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": ' + text
    expect_error(write(tmp_path, "a.jsonl", content + ', "label": 1}\n'), "empty_text", 3)


def test_empty_text_csv(tmp_path: Path) -> None:
    content = 'text,label\ngood,1\nbad,0\n"  ",1\n'
    expect_error(write(tmp_path, "a.csv", content), "empty_text", 4, "text is empty")


def test_non_string_text_jsonl(tmp_path: Path) -> None:
    content = '{"text": "a", "label": 1}\n{"text": 42, "label": 0}\n'
    expect_error(write(tmp_path, "a.jsonl", content), "bad_text", 2, "must be a string")
    surrogate = '{"text": "a", "label": 1}\n{"text": "x\\ud800", "label": 0}\n'
    expect_error(write(tmp_path, "b.jsonl", surrogate), "bad_text", 2, "surrogate")


def test_single_class(tmp_path: Path) -> None:
    content = "text,label\ngood,1\ngreat,true\n"
    expect_error(write(tmp_path, "a.csv", content), "single_class", None, "both classes")


def test_wrong_field_count_csv(tmp_path: Path) -> None:
    content = "text,label\ngood,1\nbad\n"
    expect_error(write(tmp_path, "a.csv", content), "bad_row", 3, "expected 2 fields")


def test_malformed_csv_quoting(tmp_path: Path) -> None:
    content = 'text,label\ngood,1\n"bad"x,0\n'
    expect_error(write(tmp_path, "a.csv", content), "bad_row", 3, "malformed CSV")


def test_duplicate_header(tmp_path: Path) -> None:
    content = "text,label,Text\ngood,1,x\n"
    expect_error(write(tmp_path, "a.csv", content), "bad_header", 1, "duplicate")


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "a.txt", "x"), "unknown_format", None, ".txt")
    expect_error(write(tmp_path, "a.csv", "x"), "unknown_format", None, "xml", format="xml")
    expect_error(tmp_path / "missing.csv", "not_found", None, "no such file")
    expect_error(tmp_path, "not_found", None, format="csv")


def test_dataset_error_pickles_with_its_fields() -> None:
    error = DatasetError("label 2 is not binary", kind="bad_label", row=3, path="a.csv")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (copy.kind, copy.row, copy.path, str(copy)) == (
        "bad_label",
        3,
        "a.csv",
        "a.csv: row 3: label 2 is not binary",
    )


# --- loaders: properties ----------------------------------------------------------------------

valid_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40).filter(
    lambda text: text.strip() != ""
)
rows_strategy = st.lists(st.tuples(valid_text, st.integers(0, 1)), min_size=0, max_size=20)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, file_format=st.sampled_from(["csv", "jsonl"]))
def test_round_trip(tmp_path: Path, rows: list[tuple[str, int]], file_format: str) -> None:
    rows = [("positive one", 1), ("negative one", 0), *rows]
    dataset = Dataset([text for text, _ in rows], np.array([label for _, label in rows]))
    path = tmp_path / f"round_trip.{file_format}"
    path.write_bytes(dump_dataset(dataset, file_format))  # type: ignore[arg-type]
    loaded = load_dataset(path)
    assert loaded == dataset
    assert dataset_digest(loaded) == dataset_digest(dataset)


garbage_lines = st.lists(
    st.one_of(
        st.text(max_size=30),
        st.sampled_from(
            ['{"text": "a", "label": 1}', '{"text": "b", "label": 0}', "text,label", "a,1", "b,0"]
        ),
        st.builds(
            json.dumps,
            st.recursive(st.none() | st.booleans() | st.text(max_size=10), st.lists, max_leaves=8),
        ),
    ),
    max_size=8,
).map("\n".join)


@settings(max_examples=200)
@given(
    data=st.one_of(
        st.binary(max_size=300), garbage_lines.map(lambda s: s.encode("utf-8", "replace"))
    ),
    file_format=st.sampled_from(["csv", "jsonl"]),
)
def test_garbage_raises_only_dataset_error(data: bytes, file_format: str) -> None:
    try:
        dataset = parse_dataset(data, file_format)
    except DatasetError as error:
        assert error.kind
        return
    assert len(dataset) >= 2
    assert set(dataset.labels.tolist()) == {0, 1}


# --- digest ------------------------------------------------------------------------------------


def test_digest_follows_the_documented_canonical_form() -> None:
    dataset = Dataset(["a,b", 'é "q"\n'], np.array([1, 0]))
    expected = hashlib.sha256(
        b"kloop-dataset-digest/v1\n" + b'["a,b",1]\n' + b'["\\u00e9 \\"q\\"\\n",0]\n'
    ).hexdigest()
    assert dataset_digest(dataset) == expected


def test_digest_is_sensitive_to_content_and_order_only() -> None:
    dataset = builtin_dataset()
    digest = dataset_digest(dataset)
    assert len(digest) == 64
    assert dataset_digest(builtin_dataset()) == digest
    assert dataset_digest(Dataset(dataset.texts, dataset.labels, name="other")) == digest
    reordered = dataset.subset(list(range(len(dataset)))[::-1])
    assert dataset_digest(reordered) != digest
    flipped = Dataset(dataset.texts, 1 - dataset.labels)
    assert dataset_digest(flipped) != digest
    edited = Dataset([dataset.texts[0] + " ", *dataset.texts[1:]], dataset.labels)
    assert dataset_digest(edited) != digest


def test_csv_and_jsonl_of_the_same_rows_have_the_same_digest(tmp_path: Path) -> None:
    dataset = shifted_dataset()
    digests = set()
    for file_format in ("csv", "jsonl"):
        path = tmp_path / f"data.{file_format}"
        path.write_bytes(dump_dataset(dataset, file_format))
        digests.add(dataset_digest(load_dataset(path)))
    assert digests == {dataset_digest(dataset)}


# --- split -------------------------------------------------------------------------------------


def test_split_of_builtin_matches_the_book() -> None:
    train, test = stratified_split(builtin_dataset(), test_fraction=0.25, seed=0)
    assert (len(train), len(test)) == (38, 12)
    assert test.positive_count == test.negative_count == 6


@given(
    labels=st.lists(st.integers(0, 1), min_size=0, max_size=60),
    test_fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_properties(labels: list[int], test_fraction: float, seed: int) -> None:
    dataset = Dataset([f"text {i}" for i in range(len(labels))], np.array(labels, np.int64))
    train, test = stratified_split(dataset, test_fraction, seed)
    assert sorted(train.texts + test.texts, key=lambda t: int(t.split()[1])) == dataset.texts
    assert not set(train.texts) & set(test.texts)
    assert stratified_split(dataset, test_fraction, seed) == (train, test)
    # Original order kept on each side.
    assert train.texts == sorted(train.texts, key=lambda t: int(t.split()[1]))
    for label in (0, 1):
        count = labels.count(label)
        in_test = int((test.labels == label).sum())
        expected = min(max(round(test_fraction * count), 1), count - 1) if count >= 2 else 0
        assert in_test == expected


def test_split_depends_on_the_seed_and_rejects_bad_fractions() -> None:
    dataset = shifted_dataset()
    assert stratified_split(dataset, 0.2, 1)[1] != stratified_split(dataset, 0.2, 2)[1]
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="test_fraction"):
            stratified_split(dataset, fraction, 0)


# --- generators --------------------------------------------------------------------------------


def test_generate_texts_is_deterministic_and_covers_the_hard_cases() -> None:
    texts = generate_texts(5000, seed=7)
    assert texts == generate_texts(5000, seed=7)
    assert texts != generate_texts(5000, seed=8)
    assert len(texts) == 5000
    assert "" in texts
    assert any(text and not text.strip() for text in texts)  # whitespace only
    assert any(text.strip() and not tokenize(text) for text in texts)  # punctuation only
    assert any(any(ord(ch) > 127 for ch in text) for text in texts)
    assert any(any(ord(ch) > 0xFFFF for ch in text) for text in texts)  # emoji and the like
    assert any(text != text.lower() for text in texts)
    assert any("!" in text or "," in text for text in texts)
    assert generate_texts(0, seed=1) == []


def test_generate_dataset_labels_follow_the_rule() -> None:
    dataset = generate_dataset(2000, seed=3)
    assert dataset.labels.tolist() == [rule_label(text) for text in dataset.texts]
    assert 0.4 < dataset.labels.mean() < 0.6
    assert dataset == generate_dataset(2000, seed=3)
