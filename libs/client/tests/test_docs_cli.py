"""`kloop docs`: bad input fails clearly (non-zero exit, no traceback, nothing sent);
good input is sent through a stand-in gateway (an HTTP server recording requests)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kloop_client.cli import app
from kloop_client.docs_cli import DocsError, LocalDocument, batches, find_documents

runner = CliRunner()


class Gateway(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, Any, str]] = []
    polls = 0

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Gateway.requests.append(("POST", self.path, body, self.headers["Authorization"]))
        if body["collection"] == "missing":
            self._reply(404, {"error": {"code": "not_found", "message": "no collection"}})
            return
        docs = [
            {"id": d["id"], "status": "queued", "status_url": f"/v1/documents/{d['id']}"}
            for d in body["documents"]
        ]
        self._reply(202, {"collection": body["collection"], "documents": docs})

    def do_GET(self) -> None:
        Gateway.requests.append(("GET", self.path, None, self.headers["Authorization"]))
        Gateway.polls += 1
        doc_id = self.path.split("?")[0].removeprefix("/v1/documents/")
        status = "running" if Gateway.polls < 3 else "succeeded"
        if doc_id == "bad.md":
            status = "failed"
        self._reply(
            200,
            {"id": doc_id, "status": status, "chunks": 2, "error": "broken" * (status == "failed")},
        )

    def do_DELETE(self) -> None:
        Gateway.requests.append(("DELETE", self.path, None, self.headers["Authorization"]))
        self._reply(202, {"id": "a/b.md", "status": "deleting"})

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Gateway.requests, Gateway.polls = [], 0
    monkeypatch.setenv("KLOOP_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KLOOP_LOCAL_GATEWAY_HTTP_PORT", str(server.server_address[1]))
    monkeypatch.setenv("KLOOP_API_KEY", "secret-key")
    yield
    server.shutdown()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "guide").mkdir(parents=True)
    (root / "guide" / "intro.md").write_text("# Intro\n\nHello.")
    (root / "notes.txt").write_text("plain text")
    (root / "image.png").write_bytes(b"\x89PNG")
    return root


def test_missing_path_is_a_clear_error(gateway: None, tmp_path: Path) -> None:
    result = runner.invoke(app, ["docs", "add", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "no such file or directory" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert Gateway.requests == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.md", b"ok \xff", "not valid UTF-8 (byte offset 3)"),
        ("image.png", b"\x89PNG", "not a document"),
    ],
)
def test_bad_files_are_refused_before_sending(
    gateway: None, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    result = runner.invoke(app, ["docs", "add", str(tmp_path / name)])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output
    assert Gateway.requests == []


def test_empty_directory_and_gateway_errors(gateway: None, tmp_path: Path, tree: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["docs", "add", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no .md, .markdown, .txt files" in result.output
    result = runner.invoke(app, ["docs", "add", str(tree), "--collection", "missing"])
    assert result.exit_code == 1 and "404 not_found: no collection" in result.output


def test_add_a_directory_and_wait(gateway: None, tree: Path) -> None:
    result = runner.invoke(app, ["docs", "add", str(tree), "--wait"])
    assert result.exit_code == 0, result.output
    method, path, body, auth = Gateway.requests[0]
    assert (method, path, auth) == ("POST", "/v1/documents", "Bearer secret-key")
    assert body == {
        "collection": "docs",
        "documents": [
            {"id": "guide/intro.md", "source": "guide/intro.md", "text": "# Intro\n\nHello."},
            {"id": "notes.txt", "source": "notes.txt", "text": "plain text"},
        ],
    }
    assert "2 ingested (4 chunks), 0 failed" in result.output


def test_a_failed_document_makes_the_exit_non_zero(gateway: None, tmp_path: Path) -> None:
    (tmp_path / "bad.md").write_text("x")
    result = runner.invoke(app, ["docs", "add", str(tmp_path / "bad.md"), "--wait"])
    assert result.exit_code == 1 and "broken" in result.output


def test_status_and_rm(gateway: None) -> None:
    result = runner.invoke(app, ["docs", "status", "a/b.md", "--collection", "kb"])
    assert result.exit_code == 0 and "a/b.md" in result.output
    assert Gateway.requests[-1][1] == "/v1/documents/a/b.md?collection=kb"
    result = runner.invoke(app, ["docs", "rm", "a/b.md"])
    assert result.exit_code == 0 and "a/b.md: deleting" in result.output
    assert Gateway.requests[-1][:2] == ("DELETE", "/v1/documents/a/b.md?collection=docs")


def test_unreachable_gateway(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KLOOP_LOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KLOOP_LOCAL_GATEWAY_HTTP_PORT", "1")
    result = runner.invoke(app, ["docs", "status", "x"])
    assert result.exit_code == 1 and "gateway unreachable" in result.output


def test_ids_and_batches(tree: Path) -> None:
    assert [d.id for d in find_documents([tree])] == ["guide/intro.md", "notes.txt"]
    assert [d.id for d in find_documents([tree / "guide"])] == ["intro.md"]
    with pytest.raises(DocsError, match="given twice"):
        find_documents([tree, tree / "notes.txt"])
    many = [LocalDocument(f"d{i}", f"d{i}", "x" * 100_000) for i in range(40)]
    sizes = [len(b) for b in batches(many)]
    assert sum(sizes) == 40 and max(sizes) < 40
