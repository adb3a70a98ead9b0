"""Files the worker reads and writes: a scoring job's input texts, and the labeled
dataset a retrain trains on (shipped datasets + texts labeled through feedback)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from kloop_model.dataset import (
    Dataset,
    Example,
    builtin_dataset,
    dataset_digest,
    dump_dataset,
    load_dataset,
    shifted_dataset,
)

SHIPPED = {"builtin": builtin_dataset, "shifted": shifted_dataset}


class InputError(ValueError):
    """A job's dataset that cannot be read; the message says why (and where)."""


def local_path(uri: str) -> Path:
    """An absolute path from `/abs/path` or `file:///abs/path`."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InputError(f"{uri}: file URIs must name a local path (file:///...)")
        path = unquote(parsed.path)
    elif parsed.scheme == "":
        path = uri
    else:
        raise InputError(f"{uri}: only local paths and file:// URIs are supported")
    if not os.path.isabs(path):
        raise InputError(f"{uri}: the path must be absolute")
    return Path(path)


def _allowed(path: Path, roots: Sequence[Path]) -> bool:
    return not roots or any(path.is_relative_to(root.resolve()) for root in roots)


def read_texts(uri: str, *, roots: Sequence[Path], max_bytes: int, max_rows: int) -> list[str]:
    """The texts of a .jsonl/.ndjson (objects with "text"), .csv (a "text" column) or
    .txt (one text per line) file; other columns (labels, ids) are ignored."""
    path = local_path(uri).resolve()
    if not _allowed(path, roots):
        raise InputError(f"{uri}: outside the dataset roots this worker may read")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"{uri}: {size} bytes, more than the limit of {max_bytes}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{uri}: no such file") from None
    except OSError as e:
        raise InputError(f"{uri}: cannot be read ({e.strerror})") from None
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{uri}: not UTF-8 (byte {e.start})") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        texts = jsonl_texts(content, uri)
    elif suffix == ".csv":
        texts = _csv_texts(content, uri)
    elif suffix == ".txt":
        texts = content.splitlines()
    else:
        raise InputError(f"{uri}: unknown format {suffix or '(none)'}; use .jsonl, .csv or .txt")
    if len(texts) > max_rows:
        raise InputError(f"{uri}: {len(texts)} rows, more than the limit of {max_rows}")
    return texts


def jsonl_texts(content: str, uri: str) -> list[str]:
    """The "text" of each JSON line (blank lines skipped); `uri` names it in errors."""
    texts = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{uri}, line {number}: not JSON") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise InputError(f'{uri}, line {number}: no string "text" field')
        texts.append(text)
    return texts


def _csv_texts(content: str, uri: str) -> list[str]:
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    if header is None or "text" not in header:
        raise InputError(f'{uri}: the first line must be a header with a "text" column')
    column = header.index("text")
    texts = []
    for row in reader:
        if not row:
            continue
        if len(row) <= column:
            raise InputError(f"{uri}, line {reader.line_num}: no text column")
        texts.append(row[column])
    return texts


# --- retraining data ------------------------------------------------------------------


def feedback_examples(
    predictions: Iterable[Mapping[str, str]],
    feedback: Iterable[Mapping[str, str]],
    *,
    model: str,
    positive_label: str,
) -> list[Example]:
    """Texts with their true label: feedback events joined with the prediction events
    that carry the text (the gateway includes it only when configured to), by id. One
    example per distinct text, from the first feedback given for it in `feedback`'s
    order (the caller reads newest first: the latest label of a text wins). A text
    asked about many times is one training row, so that no text is both trained on and
    held out (the holdout, and the drift reference built on it, stay honest)."""
    texts = {
        event["id"]: event["text"]
        for event in predictions
        if event.get("model") == model and event.get("text") and event.get("id")
    }
    examples: dict[str, Example] = {}
    for event in feedback:
        text = texts.get(event.get("prediction_id", ""))
        if event.get("model") != model or text is None or text in examples:
            continue
        examples[text] = Example(text, int(event.get("label") == positive_label))
    return list(examples.values())


def combine(datasets: Iterable[Dataset], extra: Sequence[Example], name: str) -> Dataset:
    """The datasets' rows, then the `extra` examples whose text none of them has (a
    curated row wins over feedback on the same text)."""
    rows = [example for dataset in datasets for example in dataset]
    known = {example.text for example in rows}
    return Dataset.from_examples([*rows, *(e for e in extra if e.text not in known)], name=name)


def shipped_or_file(name: str) -> Dataset:
    """A shipped dataset by name ("builtin", "shifted"), or a CSV/JSONL file."""
    if name in SHIPPED:
        return SHIPPED[name]()
    return load_dataset(local_path(name))


def write_dataset(dataset: Dataset, directory: Path, stem: str) -> Path:
    """`<directory>/<stem>-<digest>.jsonl`, written atomically (same content, same file:
    a repeated step rewrites nothing the training service could half-read)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-{dataset_digest(dataset)[:16]}.jsonl"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(dump_dataset(dataset, "jsonl"))
        partial.replace(path)
    return path


def probe_texts(dataset: Dataset, count: int) -> list[str]:
    """`count` texts spread evenly over the dataset (deterministic)."""
    if len(dataset) <= count:
        return list(dataset.texts)
    step = len(dataset) / count
    return [dataset.texts[int(i * step)] for i in range(count)]
