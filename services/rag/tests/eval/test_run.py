"""The evaluation run against the vector store stand-in, on the repository's real docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kloop_rag.eval.run import chunk_markdown, find_docs, load_golden, main
from kloop_rag.testing.vectorstore import InMemoryVectorStore, VectorStoreServer

ROOT = Path(__file__).resolve().parents[4]


def test_golden_set_names_documents_that_exist() -> None:
    golden = load_golden()
    assert len(golden) >= 10
    docs = {p.relative_to(ROOT).as_posix() for p in find_docs(ROOT)}
    for item in golden:
        assert set(item.sources) <= docs, item


def test_chunks_are_bounded_and_keep_the_text() -> None:
    text = "\n\n".join(["short para"] * 50 + ["x" * 2500])
    chunks = chunk_markdown(text, max_chars=300)
    assert all(len(c) <= 300 for c in chunks)
    assert "".join(c.replace("\n\n", "") for c in chunks) == text.replace("\n\n", "")


def test_run_reports_recall_and_mrr(capsys, monkeypatch) -> None:
    monkeypatch.delenv("KLOOP_RAG_ANTHROPIC_API_KEY", raising=False)
    server = VectorStoreServer(InMemoryVectorStore())
    try:
        code = main(["--vectorstore-addr", server.addr, "--root", str(ROOT), "--min-recall", "0.8"])
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "recall@5" in out and "MRR" in out
    assert "groundedness: skipped" in out


def test_platform_down_is_a_clear_message(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--vectorstore-addr", "127.0.0.1:1"])
    assert exited.value.code == 2
    assert "kloop up" in capsys.readouterr().err


def test_groundedness_is_judged_by_the_llm(fake_llm, monkeypatch) -> None:
    import asyncio

    from kloop_rag.chunks import Chunk
    from kloop_rag.eval.run import JUDGE_SYSTEM, groundedness

    from ..conftest import API_KEY

    def respond(body):
        system = body["system"] if isinstance(body["system"], str) else body["system"][0]["text"]
        return '{"grounded": 0.75, "unsupported": []}' if system == JUDGE_SYSTEM else "X [1]."

    fake_llm.respond = respond
    monkeypatch.setenv("KLOOP_RAG_ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("KLOOP_RAG_ANTHROPIC_BASE_URL", fake_llm.url)
    scores = asyncio.run(groundedness([("q?", [Chunk("a", "X is so.", 1.0)])]))
    assert scores == [0.75]
    assert len(fake_llm.requests) == 2  # the answer, then the judge
