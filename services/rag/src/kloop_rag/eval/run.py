"""The evaluation run: index kloop's docs into a vector store collection, ask the golden
questions, report recall@k and MRR (document level) and, with an Anthropic API key,
LLM-judged groundedness of generated answers.

    python -m kloop_rag.eval [--k 5] [--collection kloop-docs-eval] [--no-ingest]

Needs the platform's vector store (`kloop up`); says so clearly when it is not there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kloop.vectorstore.v1 import vectorstore_pb2 as pb
from kloop.vectorstore.v1 import vectorstore_pb2_grpc as pb_grpc
from kloop_rag.eval.metrics import (
    mean,
    parse_groundedness,
    recall_at_k,
    reciprocal_rank,
    unique_in_order,
)
from kloop_rag.retrieval import chunk_from_hit

GOLDEN = Path(__file__).with_name("golden.jsonl")
DOC_GLOBS = ("README.md", "docs/**/*.md", "*/README.md", "services/*/README.md", "libs/*/README.md")
JUDGE_SYSTEM = """\
You grade answers for groundedness. Given CONTEXT documents and an ANSWER, decide what
share of the ANSWER's factual statements is supported by the CONTEXT. An answer that
says it does not know is fully grounded. Reply with JSON only:
{"grounded": <number from 0 to 1>, "unsupported": ["<statement>", ...]}"""


@dataclass(frozen=True)
class GoldenItem:
    question: str
    sources: list[str]


def load_golden(path: Path = GOLDEN) -> list[GoldenItem]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        raw = json.loads(line)
        if not raw.get("question") or not raw.get("sources"):
            raise ValueError(f"{path}:{number}: needs 'question' and 'sources'")
        items.append(GoldenItem(raw["question"], list(raw["sources"])))
    return items


def chunk_markdown(text: str, max_chars: int = 1000) -> list[str]:
    """Paragraph-aligned chunks of at most max_chars (a longer paragraph is split)."""
    chunks: list[str] = []
    current = ""
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if not paragraph:
            continue
        while len(paragraph) > max_chars:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(paragraph[:max_chars])
            paragraph = paragraph[max_chars:]
        if current and len(current) + 2 + len(paragraph) > max_chars:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        chunks.append(current)
    return chunks


def find_docs(root: Path) -> list[Path]:
    found: dict[Path, None] = {}
    for pattern in DOC_GLOBS:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and ".venv" not in path.parts and "node_modules" not in path.parts:
                found.setdefault(path, None)
    return list(found)


def repo_root() -> Path:
    here = Path.cwd()
    for candidate in (here, *here.parents):
        if (candidate / "protos").is_dir() and (candidate / "services").is_dir():
            return candidate
    return here


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def check_reachable(channel: grpc.Channel, addr: str) -> None:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.RpcError:
        _fail(
            f"The vector store at {addr} is not reachable.\n"
            "Start the platform first with `kloop up` (or `make up`), or point "
            "KLOOP_RAG_VECTORSTORE_ADDR at a running vector store."
        )


def ingest(
    stub: pb_grpc.VectorStoreServiceStub,
    root: Path,
    collection: str,
    embedding_model: str,
    vector_size: int,
) -> int:
    try:
        stub.GetCollection(pb.GetCollectionRequest(name=collection), timeout=10)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        stub.CreateCollection(
            pb.CreateCollectionRequest(
                name=collection, vector_size=vector_size, embedding_model=embedding_model
            ),
            timeout=30,
        )
    total = 0
    for path in find_docs(root):
        source = path.relative_to(root).as_posix()
        documents = []
        for index, text in enumerate(chunk_markdown(path.read_text(encoding="utf-8"))):
            metadata = Struct()
            metadata.update({"source": source, "document_id": source, "chunk": index})
            documents.append(pb.Document(id=f"{source}#{index}", text=text, metadata=metadata))
        same_document = pb.Filter(must=[pb.FieldCondition(key="document_id", keyword=source)])
        stub.Delete(pb.DeleteRequest(collection=collection, filter=same_document), timeout=30)
        for start in range(0, len(documents), 32):
            batch = documents[start : start + 32]
            stub.Upsert(pb.UpsertRequest(collection=collection, documents=batch), timeout=120)
        total += len(documents)
    return total


async def groundedness(items: list[tuple[str, list[Any]]]) -> list[float | None]:
    from kloop_rag.llm import ClaudeClient
    from kloop_rag.prompt import build_prompt
    from kloop_rag.settings import RagSettings

    settings = RagSettings()
    client = ClaudeClient(settings)
    scores: list[float | None] = []
    try:
        for question, chunks in items:
            prompt = build_prompt(question, chunks, settings.context_token_budget)
            answer = (await client.generate(prompt)).text
            reply = await client.complete(
                JUDGE_SYSTEM, f"CONTEXT:\n{prompt.user}\n\nANSWER:\n{answer}", max_tokens=400
            )
            scores.append(parse_groundedness(reply))
    finally:
        await client.close()
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--vectorstore-addr",
        default=os.environ.get("KLOOP_RAG_VECTORSTORE_ADDR", "127.0.0.1:50157"),
    )
    parser.add_argument("--collection", default="kloop-docs-eval")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--golden", type=Path, default=GOLDEN)
    parser.add_argument("--root", type=Path, default=None, help="repository root (docs)")
    parser.add_argument("--no-ingest", action="store_true", help="use the collection as is")
    parser.add_argument(
        # kloop up serves the exported embedder under this name (make embedder).
        "--embedding-model",
        default=os.environ.get("KLOOP_EVAL_EMBEDDING_MODEL", "embedder"),
    )
    parser.add_argument("--vector-size", type=int, default=384)
    parser.add_argument("--min-recall", type=float, default=0.0, help="exit 1 below this")
    args = parser.parse_args(argv)

    golden = load_golden(args.golden)
    root = args.root or repo_root()
    channel = grpc.insecure_channel(args.vectorstore_addr)
    check_reachable(channel, args.vectorstore_addr)
    stub = pb_grpc.VectorStoreServiceStub(channel)
    if not args.no_ingest:
        count = ingest(stub, root, args.collection, args.embedding_model, args.vector_size)
        print(f"indexed {count} chunks of kloop's docs into {args.collection!r}")

    recalls, ranks, retrieved = [], [], []
    print(f"\n{'recall@' + str(args.k):>9} {'RR':>5}  question")
    for item in golden:
        try:
            response = stub.Search(
                pb.SearchRequest(
                    collection=args.collection, text=item.question, k=args.k, mode=pb.HYBRID
                ),
                timeout=30,
            )
        except grpc.RpcError as error:
            _fail(f"search failed: {error.code().name}: {error.details()}")
        chunks = [chunk_from_hit(hit) for hit in response.hits]
        ranked = unique_in_order(c.source for c in chunks)
        recall = recall_at_k(ranked, item.sources, args.k)
        rr = reciprocal_rank(ranked, item.sources)
        recalls.append(recall)
        ranks.append(rr)
        retrieved.append((item.question, chunks))
        print(f"{recall:>9.2f} {rr:>5.2f}  {item.question}")
    print(
        f"\nretrieval over {len(golden)} questions: recall@{args.k} {mean(recalls):.3f}, "
        f"MRR {mean(ranks):.3f}"
    )

    if os.environ.get("KLOOP_RAG_ANTHROPIC_API_KEY", "").strip():
        scores = asyncio.run(groundedness(retrieved))
        judged = [s for s in scores if s is not None]
        print(f"groundedness (LLM-judged, {len(judged)}/{len(scores)} judged): {mean(judged):.3f}")
    else:
        print("groundedness: skipped (set KLOOP_RAG_ANTHROPIC_API_KEY to judge answers)")
    return 1 if mean(recalls) < args.min_recall else 0


if __name__ == "__main__":
    raise SystemExit(main())
