from __future__ import annotations

from kloop_rag.cache import answer_key, document_key
from kloop_rag.chunks import Chunk

A = Chunk("d#0", "alpha", 1.0, {"document_id": "d"})
B = Chunk("d#1", "beta", 0.5, {"document_id": "d"})


def test_key_depends_on_question_chunks_content_and_model() -> None:
    key = answer_key("What is X?", [A, B], "m")
    assert key.startswith("kloop:rag:answer:")
    assert answer_key("  what IS x? ", [A, B], "m") == key
    assert answer_key("What is Y?", [A, B], "m") != key
    assert answer_key("What is X?", [A], "m") != key
    assert answer_key("What is X?", [B, A], "m") != key
    assert answer_key("What is X?", [A, B], "other") != key
    edited = Chunk("d#0", "alpha v2", 1.0, {"document_id": "d"})
    assert answer_key("What is X?", [edited, B], "m") != key


def test_document_key() -> None:
    assert document_key("docs/a.md") == "kloop:rag:doc:docs/a.md"


def test_cache_module_imports_without_fastapi() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import kloop_rag.cache; "
        "assert 'fastapi' not in sys.modules and 'grpc' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('fastapi', 'grpc')))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
