"""`kloop docs`: add, inspect and remove the documents RAG answers from.

Files are read here (client side) and their text is POSTed to the gateway's
/v1/documents with the local API key (KLOOP_API_KEY, else the one `kloop up` wrote);
the worker chunks and stores them in the background. Mount with
`app.add_typer(docs_app, name="docs")`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.table import Table

from kloop_client.platform import LocalPlatformSettings, current_endpoints, local_api_key
from kloop_client.sdk import DOCUMENT_UNFINISHED

docs_app = typer.Typer(help="Documents for RAG (kloop ask).", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

SUFFIXES = (".md", ".markdown", ".txt")
# The gateway's defaults: documents per request, bytes per document, bytes per body.
MAX_DOCUMENTS = 100
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_BODY_BYTES = 1536 * 1024

CollectionOption = Annotated[str, typer.Option(help="The document collection.")]


@dataclass(frozen=True)
class LocalDocument:
    id: str
    source: str
    text: str


class DocsError(Exception):
    """Bad input on the command line; the message says what and where."""


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error[/] {message}", soft_wrap=True)
    return typer.Exit(1)


def find_documents(paths: list[Path]) -> list[LocalDocument]:
    """The *.md, *.markdown and *.txt files of `paths` (files, or directories searched
    recursively), read as UTF-8; ids are paths relative to the directory given (a file
    given itself: its name)."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if not path.exists():
            raise DocsError(f"{path}: no such file or directory")
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
            )
            if not files:
                raise DocsError(f"{path}: no {', '.join(SUFFIXES)} files in this directory")
            found += [(f, f.relative_to(path).as_posix()) for f in files]
        elif path.suffix.lower() not in SUFFIXES:
            raise DocsError(f"{path}: not a document ({', '.join(SUFFIXES)})")
        else:
            found.append((path, path.name))
    documents: dict[str, LocalDocument] = {}
    for file, doc_id in found:
        try:
            data = file.read_bytes()
        except OSError as e:
            raise DocsError(f"{file}: cannot be read ({e.strerror})") from None
        if len(data) > MAX_DOCUMENT_BYTES:
            raise DocsError(f"{file}: {len(data)} bytes, more than {MAX_DOCUMENT_BYTES}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DocsError(f"{file}: not valid UTF-8 (byte offset {e.start})") from None
        if doc_id in documents:
            raise DocsError(f"{file}: id {doc_id!r} given twice")
        documents[doc_id] = LocalDocument(doc_id, doc_id, text)
    return list(documents.values())


def batches(documents: list[LocalDocument]) -> Iterator[list[LocalDocument]]:
    """Requests within the gateway's limits on documents and body bytes."""
    batch: list[LocalDocument] = []
    size = 0
    for doc in documents:
        cost = len(json.dumps(doc.text)) + len(doc.id) * 2 + 64
        if batch and (len(batch) >= MAX_DOCUMENTS or size + cost > MAX_BODY_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(doc)
        size += cost
    if batch:
        yield batch


@contextmanager
def _gateway() -> Iterator[httpx.Client]:
    settings = LocalPlatformSettings()
    url = current_endpoints(settings).gateway_http
    client = httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {local_api_key(settings)}"},
        timeout=30.0,
    )
    try:
        yield client
    except httpx.HTTPError as e:
        raise _fail(f"gateway unreachable at {url}: {e}") from None
    finally:
        client.close()


def _checked(response: httpx.Response) -> dict[str, Any]:
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        found = body.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        message = error.get("message") or response.text[:300]
        raise _fail(f"{response.status_code} {error.get('code', '')}: {message}".strip())
    return body


def _doc_path(document_id: str) -> str:
    return f"/v1/documents/{quote(document_id, safe='/')}"


def _status_table(records: list[dict[str, Any]]) -> Table:
    table = Table("id", "status", "chunks", "error")
    for r in records:
        table.add_row(r["id"], r["status"], str(r.get("chunks", "")), r.get("error") or "")
    return table


@docs_app.command("add")
def add(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories (*.md, *.txt).")],
    collection: CollectionOption = "docs",
    wait: Annotated[bool, typer.Option("--wait", help="Wait until each is ingested.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after (s).")] = 600.0,
) -> None:
    """Add (or replace) documents; a document that did not change is left as it is."""
    try:
        documents = find_documents(paths)
    except DocsError as e:
        raise _fail(str(e)) from None
    urls: dict[str, str] = {}
    with _gateway() as gw:
        for batch in batches(documents):
            body = {
                "collection": collection,
                "documents": [{"id": d.id, "source": d.source, "text": d.text} for d in batch],
            }
            accepted = _checked(gw.post("/v1/documents", json=body))
            for doc in accepted["documents"]:
                urls[doc["id"]] = doc["status_url"]
        console.print(f"queued {len(urls)} document(s) in collection {collection!r}")
        if not wait:
            for doc_id in urls:
                console.print(f"  {doc_id}")
            return
        deadline = time.monotonic() + timeout
        records: dict[str, dict[str, Any]] = {}
        pending = dict(urls)
        while pending:
            for doc_id, url in list(pending.items()):
                record = _checked(gw.get(url))
                if record["status"] not in DOCUMENT_UNFINISHED:
                    records[doc_id] = record
                    del pending[doc_id]
            if pending:
                if time.monotonic() > deadline:
                    raise _fail(f"{len(pending)} document(s) still not ingested after {timeout} s")
                time.sleep(0.5)
    ordered = [records[doc_id] for doc_id in urls]
    console.print(_status_table(ordered))
    failed = [r for r in ordered if r["status"] != "succeeded"]
    chunks = sum(int(r.get("chunks") or 0) for r in ordered)
    console.print(f"{len(ordered) - len(failed)} ingested ({chunks} chunks), {len(failed)} failed")
    if failed:
        raise typer.Exit(1)


@docs_app.command("status")
def status(
    document_id: Annotated[str, typer.Argument(metavar="ID", help="The document's id.")],
    collection: CollectionOption = "docs",
) -> None:
    """A document's ingestion status."""
    with _gateway() as gw:
        record = _checked(gw.get(_doc_path(document_id), params={"collection": collection}))
    console.print(_status_table([record]))
    for key in ("source", "content_sha256", "size", "updated_at", "finished_at"):
        if record.get(key) is not None:
            console.print(f"{key}: {record[key]}")


@docs_app.command("rm")
def remove(
    document_id: Annotated[str, typer.Argument(metavar="ID", help="The document's id.")],
    collection: CollectionOption = "docs",
) -> None:
    """Remove a document's chunks (in the background: see `kloop docs status`)."""
    with _gateway() as gw:
        record = _checked(gw.delete(_doc_path(document_id), params={"collection": collection}))
    console.print(f"{record['id']}: {record['status']}")
