"""Labeled text datasets: the shipped ones, strict CSV/JSONL loaders, digest, split, generators.

A dataset is a list of texts and a vector of 0/1 labels (1 = positive). Loaders validate
everything and raise one exception type, `DatasetError`, whose `kind` says what is wrong
and whose `row` is the 1-based line number in the file where the bad record starts (the
CSV header is line 1).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from kloop_model.text import tokenize

DatasetFormat = Literal["csv", "jsonl"]
DatasetErrorKind = Literal[
    "not_found",
    "unknown_format",
    "too_large",
    "encoding",
    "empty",
    "missing_column",
    "bad_header",
    "bad_row",
    "bad_json",
    "bad_label",
    "bad_text",
    "empty_text",
    "single_class",
]

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 50 * MiB

_EXTENSION_FORMATS: dict[str, DatasetFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_TRUE_STRINGS = frozenset({"1", "true", "positive"})
_FALSE_STRINGS = frozenset({"0", "false", "negative"})
_DIGEST_HEADER = b"kloop-dataset-digest/v1\n"


class DatasetError(ValueError):
    """A dataset that cannot be used, and why.

    `kind` is machine-readable (see `DatasetErrorKind`), `row` the 1-based line number of
    the offending record when there is one, `path` the file. `str(error)` names all three.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: DatasetErrorKind,
        row: int | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.kind: DatasetErrorKind = kind
        self.row = row
        self.path = path
        super().__init__(self._render())

    @property
    def reason(self) -> DatasetErrorKind:
        """Alias of `kind`."""
        return self.kind

    def _render(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.row is not None:
            where.append(f"row {self.row}")
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments are lost by Exception's default pickling (Celery pickles).
        return (_rebuild_dataset_error, (self.message, self.kind, self.row, self.path))


def _rebuild_dataset_error(
    message: str, kind: DatasetErrorKind, row: int | None, path: str | None
) -> DatasetError:
    return DatasetError(message, kind=kind, row=row, path=path)


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class Dataset:
    """Texts and their 0/1 labels (int64), in order. `name` is informational only."""

    texts: list[str]
    labels: npt.NDArray[np.int64]
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != len(self.texts):
            raise ValueError(
                f"labels must be 1-D with one label per text: {len(self.texts)} texts, "
                f"labels of shape {labels.shape}"
            )
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must all be 0 or 1")
        if not all(isinstance(text, str) for text in self.texts):
            raise ValueError("texts must all be str")
        # Own, read-only copies: splits and subsets never share mutable state.
        owned_labels = np.array(labels, dtype=np.int64)
        owned_labels.setflags(write=False)
        object.__setattr__(self, "labels", owned_labels)
        object.__setattr__(self, "texts", list(self.texts))

    @classmethod
    def from_examples(cls, examples: Iterable[Example], name: str = "") -> Dataset:
        rows = list(examples)
        return cls(
            [row.text for row in rows], np.array([row.label for row in rows], np.int64), name
        )

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[Example]:
        for text, label in zip(self.texts, self.labels.tolist(), strict=True):
            yield Example(text, int(label))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dataset):
            return NotImplemented
        return self.texts == other.texts and np.array_equal(self.labels, other.labels)

    __hash__ = None  # type: ignore[assignment]  # mutable contents

    def subset(self, indices: Sequence[int] | npt.NDArray[np.integer[Any]]) -> Dataset:
        """The rows at `indices`, in that order."""
        index_array = np.asarray(indices, dtype=np.int64)
        return Dataset(
            [self.texts[i] for i in index_array.tolist()], self.labels[index_array], self.name
        )

    @property
    def positive_count(self) -> int:
        return int(self.labels.sum())

    @property
    def negative_count(self) -> int:
        return len(self) - self.positive_count


# --- shipped datasets -----------------------------------------------------------------

_BUILTIN_POSITIVE = (
    "i love this product it is great",
    "absolutely love it fantastic and great",
    "great quality and fast shipping i love it",
    "this is the best purchase i have made excellent",
    "works perfectly and looks wonderful",
    "excellent value great price i would buy it again",
    "really happy with this great product",
    "fantastic product i highly recommend it",
    "the quality is excellent and it works great",
    "i am very happy it is wonderful",
    "amazing product and great support",
    "love the design it is beautiful and excellent",
    "super fast delivery and excellent packaging",
    "it works great and was easy to set up",
    "perfect gift my family loves it",
    "wonderful experience great customer service",
    "best product ever i highly recommend it",
    "reliable and fast i love it",
    "very happy it works perfectly",
    "good price and great quality",
    "i recommend this to everyone it is excellent",
    "happy with the purchase it is fantastic",
    "awesome product fast and reliable",
    "amazing battery life i am happy",
    "brilliant little gadget i love it",
)
_BUILTIN_NEGATIVE = (
    "i hate this product it is terrible",
    "absolutely hate it awful and terrible",
    "poor quality and slow shipping i hate it",
    "this is the worst purchase i have made terrible",
    "stopped working after a week very disappointed",
    "waste of money awful do not buy",
    "really unhappy with this bad product",
    "terrible product i would not recommend it",
    "the quality is poor and it broke quickly",
    "i am very disappointed it is useless",
    "awful product and bad support",
    "hate the design it is ugly and poor",
    "slow delivery and the box was broken",
    "it never worked and was terrible to set up",
    "useless gift my family hates it",
    "horrible experience bad customer service",
    "worst product ever do not buy it",
    "unreliable and slow i hate it",
    "very disappointed it does not work",
    "bad price and poor quality",
    "i warn everyone it is a terrible scam",
    "unhappy with the purchase it is awful",
    "useless product slow and broken",
    "terrible battery life i am disappointed",
    "broken on arrival i regret buying it",
)

SHIFTED_DATASET_FILE = "restaurant_reviews.jsonl"


def builtin_dataset() -> Dataset:
    """The default dataset: 25 positive then 25 negative product-review sentences."""
    texts = [*_BUILTIN_POSITIVE, *_BUILTIN_NEGATIVE]
    labels = np.array([1] * len(_BUILTIN_POSITIVE) + [0] * len(_BUILTIN_NEGATIVE), np.int64)
    return Dataset(texts, labels, "builtin")


def shifted_dataset() -> Dataset:
    """200 labeled restaurant reviews (100/100): a different vocabulary and style (mixed
    case, punctuation) from `builtin_dataset`, for the drift demo and for retraining.

    Shipped as package data (`kloop_model/data/restaurant_reviews.jsonl`).
    """
    data = resources.files("kloop_model").joinpath("data", SHIFTED_DATASET_FILE).read_bytes()
    return _parse(data, "jsonl", path=SHIFTED_DATASET_FILE, name="restaurant_reviews")


# --- loaders ---------------------------------------------------------------------------


def infer_format(path: str | os.PathLike[str]) -> DatasetFormat:
    """The format a file name implies (``.csv``, ``.jsonl``/``.ndjson``)."""
    suffix = Path(path).suffix.lower()
    try:
        return _EXTENSION_FORMATS[suffix]
    except KeyError:
        raise DatasetError(
            f"cannot infer the format from the extension {suffix or '(none)'!r}; "
            "use .csv or .jsonl, or pass format='csv' / 'jsonl'",
            kind="unknown_format",
            path=str(path),
        ) from None


def load_dataset(
    path: str | os.PathLike[str],
    format: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> Dataset:
    """Load and strictly validate a CSV or JSONL dataset.

    CSV: a header naming at least ``text`` and ``label`` (any order, case-insensitive,
    extra columns ignored), then one record per row; quoted fields may span lines.
    JSONL: one JSON object per line with ``text`` (a string) and ``label`` (other keys
    ignored); blank lines are skipped. Labels: 0/1, "0"/"1", true/false, "true"/"false",
    "positive"/"negative" (strings case-insensitive, surrounding spaces ignored).

    `format` is "csv" or "jsonl"; None or "" infers it from the extension. The size is
    checked against `max_bytes` before anything is read. Raises
    `DatasetError` (a `ValueError`) for anything else than a usable two-class dataset.
    """
    shown = str(path)
    resolved_format = _resolve_format(format, path) if format else infer_format(path)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise DatasetError("no such file", kind="not_found", path=shown) from None
    except OSError as error:
        raise DatasetError(
            f"cannot stat the file: {error.strerror}", kind="not_found", path=shown
        ) from None
    if not Path(path).is_file():
        raise DatasetError("not a regular file", kind="not_found", path=shown)
    if size > max_bytes:
        raise DatasetError(
            f"file is {size} bytes, over the limit of {max_bytes} bytes",
            kind="too_large",
            path=shown,
        )
    with open(path, "rb") as file:
        # Read one byte past the limit: the file may have grown since stat.
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DatasetError(
            f"file is over the limit of {max_bytes} bytes", kind="too_large", path=shown
        )
    return _parse(data, resolved_format, path=shown, name=name or Path(path).stem)


def parse_dataset(data: bytes, format: str, name: str = "", path: str | None = None) -> Dataset:
    """Validate in-memory file content (`format` "csv" or "jsonl") as `load_dataset` does."""
    return _parse(data, _resolve_format(format, path), path=path, name=name)


def _resolve_format(format: str, path: str | os.PathLike[str] | None) -> DatasetFormat:
    if format == "csv":
        return "csv"
    if format == "jsonl":
        return "jsonl"
    raise DatasetError(
        f"unknown format {format!r}; expected 'csv' or 'jsonl'",
        kind="unknown_format",
        path=None if path is None else str(path),
    )


def _parse(data: bytes, format: DatasetFormat, *, path: str | None, name: str) -> Dataset:
    text = _decode(data, path)
    rows = _parse_csv(text, path) if format == "csv" else _parse_jsonl(text, path)
    if not rows:
        raise DatasetError("no data rows", kind="empty", path=path)
    texts = [row_text for row_text, _ in rows]
    labels = np.array([label for _, label in rows], dtype=np.int64)
    classes = set(labels.tolist())
    if len(classes) < 2:
        only = "positive (1)" if classes == {1} else "negative (0)"
        raise DatasetError(
            f"all {len(rows)} rows are {only}; a dataset needs both classes",
            kind="single_class",
            path=path,
        )
    return Dataset(texts, labels, name)


def _decode(data: bytes, path: str | None) -> str:
    if not data:
        raise DatasetError("file is empty", kind="empty", path=path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DatasetError(
            f"invalid UTF-8 at byte offset {error.start} (line {line}): {error.reason}",
            kind="encoding",
            row=line,
            path=path,
        ) from None


def _parse_csv(text: str, path: str | None) -> list[tuple[str, int]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[str, int]] = []
    header: list[str] | None = None
    text_index = label_index = -1
    record_start = 1
    try:
        for record in reader:
            row_number = record_start
            record_start = reader.line_num + 1
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if header is None:
                header = [column.strip().lower() for column in record]
                text_index, label_index = _csv_columns(header, row_number, path)
                continue
            if len(record) != len(header):
                raise DatasetError(
                    f"expected {len(header)} fields like the header, found {len(record)}",
                    kind="bad_row",
                    row=row_number,
                    path=path,
                )
            row_text = _check_text(record[text_index], row_number, path)
            rows.append((row_text, _parse_label(record[label_index], row_number, path)))
    except csv.Error as error:
        raise DatasetError(
            f"malformed CSV: {error}", kind="bad_row", row=record_start, path=path
        ) from None
    if header is None:
        raise DatasetError("no header and no rows", kind="empty", path=path)
    return rows


def _csv_columns(header: list[str], row_number: int, path: str | None) -> tuple[int, int]:
    duplicated = sorted({column for column in header if header.count(column) > 1 and column})
    if duplicated:
        raise DatasetError(
            f"duplicate column(s) in the header: {', '.join(duplicated)}",
            kind="bad_header",
            row=row_number,
            path=path,
        )
    missing = [column for column in ("text", "label") if column not in header]
    if missing:
        raise DatasetError(
            f"missing column(s) {', '.join(repr(m) for m in missing)} in the header "
            f"(found {', '.join(repr(c) for c in header)})",
            kind="missing_column",
            row=row_number,
            path=path,
        )
    return header.index("text"), header.index("label")


def _parse_jsonl(text: str, path: str | None) -> list[tuple[str, int]]:
    rows: list[tuple[str, int]] = []
    # splitlines would also split on \x85, \u2028 ... which JSON allows inside strings.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:
            # ValueError covers JSONDecodeError and the int-digits limit.
            raise DatasetError(
                f"malformed JSON: {error}", kind="bad_json", row=line_number, path=path
            ) from None
        if not isinstance(record, dict):
            raise DatasetError(
                f"expected a JSON object, found {type(record).__name__}",
                kind="bad_json",
                row=line_number,
                path=path,
            )
        missing = [key for key in ("text", "label") if key not in record]
        if missing:
            raise DatasetError(
                f"missing field(s) {', '.join(repr(m) for m in missing)}",
                kind="missing_column",
                row=line_number,
                path=path,
            )
        row_text = record["text"]
        if not isinstance(row_text, str):
            raise DatasetError(
                f"text must be a string, found {type(row_text).__name__}",
                kind="bad_text",
                row=line_number,
                path=path,
            )
        row_text = _check_text(row_text, line_number, path)
        rows.append((row_text, _parse_label(record["label"], line_number, path)))
    return rows


def _check_text(value: str, row: int, path: str | None) -> str:
    if not value.strip():
        raise DatasetError("text is empty", kind="empty_text", row=row, path=path)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (from JSON "\ud800" escapes) cannot reach the ONNX graph.
        raise DatasetError(
            "text contains an unpaired surrogate escape", kind="bad_text", row=row, path=path
        ) from None
    return value


def _parse_label(value: object, row: int, path: str | None) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str):
        folded = value.strip().lower()
        if folded in _TRUE_STRINGS:
            return 1
        if folded in _FALSE_STRINGS:
            return 0
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    raise DatasetError(
        f"label {shown} is not binary; use 0/1, true/false or positive/negative",
        kind="bad_label",
        row=row,
        path=path,
    )


# --- writers (for tests, fixtures and exports) ----------------------------------------


def dump_dataset(dataset: Dataset, format: DatasetFormat) -> bytes:
    """Serialize to CSV (``text,label`` header) or JSONL bytes that `load_dataset` reads."""
    if format == "csv":
        buffer = io.StringIO(newline="")
        # RFC 4180 line ends; QUOTE_MINIMAL then also quotes fields holding a bare "\r".
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(["text", "label"])
        for example in dataset:
            writer.writerow([example.text, example.label])
        return buffer.getvalue().encode("utf-8")
    lines = [
        json.dumps({"text": example.text, "label": example.label}, ensure_ascii=False) + "\n"
        for example in dataset
    ]
    return "".join(lines).encode("utf-8")


# --- digest and split ------------------------------------------------------------------


def dataset_digest(dataset: Dataset) -> str:
    """sha256 hex digest of the dataset's content: the data version.

    Canonical form: the bytes ``kloop-dataset-digest/v1\\n`` followed, for each row in
    order, by ``json.dumps([text, label], ensure_ascii=True, separators=(",", ":"))`` and a
    newline. Order-sensitive (a shuffled dataset is another version); `name` is not part
    of it; the file format (CSV or JSONL) is not either, so the same rows hash the same.
    """
    digest = hashlib.sha256(_DIGEST_HEADER)
    for text, label in zip(dataset.texts, dataset.labels.tolist(), strict=True):
        digest.update(json.dumps([text, int(label)], separators=(",", ":")).encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


def stratified_split(dataset: Dataset, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Deterministic (train, test) split keeping each class's share.

    Per class, ``round(test_fraction * n_class)`` rows go to test, clamped so that a class
    with at least two rows has at least one row on each side. Rows keep their original
    order within each split. Same dataset, fraction and seed: same split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test_indices: list[int] = []
    for label in (0, 1):
        class_indices = np.flatnonzero(dataset.labels == label)
        count = len(class_indices)
        n_test = round(test_fraction * count)
        # A class with >= 2 rows gets at least one row on each side.
        n_test = min(max(n_test, 1), count - 1) if count >= 2 else 0
        chosen = rng.permutation(class_indices)[:n_test]
        test_indices.extend(chosen.tolist())
    is_test = np.zeros(len(dataset), dtype=bool)
    is_test[test_indices] = True
    return dataset.subset(np.flatnonzero(~is_test)), dataset.subset(np.flatnonzero(is_test))


# --- generated texts -------------------------------------------------------------------

POSITIVE_WORDS = (
    "love",
    "great",
    "excellent",
    "fantastic",
    "wonderful",
    "amazing",
    "perfect",
    "happy",
    "awesome",
    "good",
    "beautiful",
    "reliable",
    "brilliant",
    "recommend",
    "best",
)
NEGATIVE_WORDS = (
    "hate",
    "terrible",
    "awful",
    "poor",
    "worst",
    "bad",
    "broken",
    "useless",
    "disappointed",
    "horrible",
    "flimsy",
    "unreliable",
    "junk",
    "scam",
    "regret",
)
_NEUTRAL_WORDS = (
    "the",
    "this",
    "it",
    "is",
    "and",
    "product",
    "i",
    "was",
    "with",
    "very",
    "quality",
    "service",
    "delivery",
    "price",
    "battery",
    "design",
    "box",
    "store",
    "phone",
    "order",
)
_EXOTIC_WORDS = (
    "café",
    "naïve",
    "ÉNORME",
    "Ωmega",
    "ΣΊΣΥΦΟΣ",
    "İstanbul",
    "straße",
    "STRAẞE",
    "日本語",
    "привет",
    "ПРИВЕТ",
    "e\u0301clair",
    "😀",
    "👍🏽",
    "❤️",
    "—",
    "«bien»",
    "¡genial!",
    "ｆｕｌｌｗｉｄｔｈ",  # noqa: RUF001 - confusable on purpose
    "non\xa0breaking",
    "zero\u200bwidth",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",  # noqa: RUF001 - confusable on purpose
    "ǅemal",
)
_ATTACHED_PUNCTUATION = ("", "", "", ",", ".", "!", "!!", "?", "?!", "...", ":", ";", ")", "'s")
_LEADING_PUNCTUATION = ("", "", "", "", "(", '"', "'", "#", "@", "*", "-")
_SPECIAL_TEXTS = (
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    " \t\n ",
    "\xa0",
    "\u3000",
    "!!!",
    "...",
    "?!?!",
    "'",
    "--",
    "()[]{}",
    "😀",
    "😀😀😀",
    "—",
    "!@#$%^&*()_+-=[]{};':\",./<>?\\|`~",
)
_SEPARATOR_RUNS = (" ", " ", " ", " ", "  ", "\t", "\n", " \r\n ", " - ", ", ", "/")


class _Draws:
    """Seeded scalar draws for the generators. Only `random.Random.random()` is used (its
    sequence is stable across Python versions, unlike `choice`/`randrange`); per-call
    NumPy scalar draws would be ~20x slower."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self.random = self._random.random

    def below(self, high: int) -> int:
        """An integer in [0, high)."""
        return int(self.random() * high)

    def between(self, low: int, high: int) -> int:
        """An integer in [low, high)."""
        return low + int(self.random() * (high - low))

    def pick(self, options: Sequence[str]) -> str:
        return options[int(self.random() * len(options))]

    def shuffled(self, items: list[str]) -> list[str]:
        keyed = sorted((self.random(), i) for i in range(len(items)))
        return [items[i] for _, i in keyed]


def _random_case(word: str, draws: _Draws) -> str:
    choice = draws.below(10)
    if choice < 5:
        return word
    if choice < 7:
        return word.capitalize()
    if choice < 8:
        return word.upper()
    return "".join(ch.upper() if draws.random() < 0.5 else ch for ch in word)


_UNKNOWN_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _unknown_word(draws: _Draws) -> str:
    return "".join(draws.pick(_UNKNOWN_LETTERS) for _ in range(draws.between(1, 12)))


def _decorate(word: str, draws: _Draws) -> str:
    return (
        draws.pick(_LEADING_PUNCTUATION)
        + _random_case(word, draws)
        + draws.pick(_ATTACHED_PUNCTUATION)
    )


def _join(words: list[str], draws: _Draws) -> str:
    if not words:
        return ""
    parts = [words[0]]
    for word in words[1:]:
        parts.append(draws.pick(_SEPARATOR_RUNS))
        parts.append(word)
    text = "".join(parts)
    if draws.random() < 0.1:
        text = draws.pick(_SEPARATOR_RUNS) + text + draws.pick(_SEPARATOR_RUNS)
    return text


def generate_texts(n: int, seed: int) -> list[str]:
    """`n` deterministic texts exercising the tokenizer: known and unknown words in mixed
    case with attached punctuation, tabs/newlines, non-ASCII letters, emoji, and texts that
    tokenize to nothing (empty, whitespace-only, punctuation-only). For parity tests and
    benchmarks; not labeled."""
    if n < 0:
        raise ValueError("n must be >= 0")
    draws = _Draws(seed)
    known = [*POSITIVE_WORDS, *NEGATIVE_WORDS, *_NEUTRAL_WORDS]
    texts: list[str] = []
    for _ in range(n):
        kind = draws.random()
        if kind < 0.08:
            texts.append(draws.pick(_SPECIAL_TEXTS))
            continue
        words: list[str] = []
        for _ in range(draws.between(1, 25)):
            source = draws.random()
            if source < 0.6:
                word = draws.pick(known)
            elif source < 0.8:
                word = _unknown_word(draws)
            else:
                word = draws.pick(_EXOTIC_WORDS)
            words.append(_decorate(word, draws))
        texts.append(_join(words, draws))
    return texts


def rule_label(text: str) -> int:
    """The rule `generate_dataset` labels by: 1 if the text has more tokens from
    `POSITIVE_WORDS` than from `NEGATIVE_WORDS`, else 0."""
    tokens = tokenize(text)
    positive = sum(token in _POSITIVE_SET for token in tokens)
    negative = sum(token in _NEGATIVE_SET for token in tokens)
    return int(positive > negative)


_POSITIVE_SET = frozenset(POSITIVE_WORDS)
_NEGATIVE_SET = frozenset(NEGATIVE_WORDS)


def generate_dataset(n: int, seed: int) -> Dataset:
    """`n` deterministic labeled review-like texts, labels from `rule_label` (so the task is
    learnable by a bag-of-words model, and roughly balanced). For benchmarks and tests."""
    if n < 0:
        raise ValueError("n must be >= 0")
    draws = _Draws(seed)
    filler = [*_NEUTRAL_WORDS, *_EXOTIC_WORDS]
    texts: list[str] = []
    for _ in range(n):
        positive = draws.random() < 0.5
        majority, minority = (
            (POSITIVE_WORDS, NEGATIVE_WORDS) if positive else (NEGATIVE_WORDS, POSITIVE_WORDS)
        )
        n_minority = draws.below(2)
        words = [draws.pick(majority) for _ in range(n_minority + draws.between(1, 3))]
        words += [draws.pick(minority) for _ in range(n_minority)]
        words += [draws.pick(filler) for _ in range(draws.between(2, 10))]
        words += [_unknown_word(draws) for _ in range(draws.between(0, 3))]
        words = draws.shuffled(words)
        texts.append(_join([_decorate(word, draws) for word in words], draws))
    labels = np.array([rule_label(text) for text in texts], dtype=np.int64)
    return Dataset(texts, labels, f"generated-{n}-{seed}")
