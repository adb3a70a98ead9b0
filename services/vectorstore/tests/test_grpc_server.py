"""The service through its gRPC API, over both backends, embedding via a stand-in OIP
server: collections, upsert, delete, dense / sparse / hybrid search, filters, errors."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from kloop.vectorstore.v1 import vectorstore_pb2 as pb

from .conftest import Service, ServiceFactory, embedding_models

DIM = embedding_models.DIM
MODEL = embedding_models.MODEL

# Keyword query "printer error E4021": only d3 contains the code, which the embedder
# does not know; d4/d6 ("laserjet fault", synonyms) are the dense favourites.
# Paraphrase query "fixing automobile": d1/d2 are about exactly that without sharing a
# word with it; d7 (a car wash) shares the literal "automobile", so BM25 prefers it.
CORPUS: list[tuple[str, str, dict[str, Any]]] = [
    ("d1", "how to repair the engine of a car", {"topic": "cars", "year": 2024, "public": True}),
    ("d2", "vehicle maintenance checklist", {"topic": "cars", "year": 2023, "public": True}),
    ("d3", "printer error E4021 paper jam", {"topic": "printers", "year": 2024, "public": True}),
    ("d4", "laserjet fault codes", {"topic": "printers", "year": 2022, "public": False}),
    ("d5", "baking bread at home", {"topic": "food", "year": 2024, "public": True}),
    ("d6", "laserjet fault guide", {"topic": "printers", "year": 2021, "public": True}),
    ("d7", "automobile wash prices downtown", {"topic": "cars", "year": 2020, "public": True}),
]


def struct(values: dict[str, Any]) -> Struct:
    s = Struct()
    s.update(values)
    return s


def create(stub: Any, name: str = "docs", model: str = MODEL, size: int = DIM) -> pb.Collection:
    return stub.CreateCollection(
        pb.CreateCollectionRequest(
            name=name, vector_size=size, distance=pb.COSINE, embedding_model=model
        ),
        timeout=10,
    )


def load_corpus(stub: Any, name: str = "docs") -> None:
    create(stub, name)
    docs = [pb.Document(id=i, text=t, metadata=struct(m)) for i, t, m in CORPUS]
    response = stub.Upsert(pb.UpsertRequest(collection=name, documents=docs), timeout=10)
    assert response.upserted == len(CORPUS)
    assert response.embedding_model_version == "7"


def search(stub: Any, name: str = "docs", **fields: Any) -> list[str]:
    return [h.id for h in stub.Search(pb.SearchRequest(collection=name, **fields), timeout=10).hits]


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# --- collections -------------------------------------------------------------------


def test_collections_create_get_list_delete(service: Service) -> None:
    stub = service.stub
    made = create(stub, "alpha")
    assert (made.name, made.vector_size, made.distance, made.embedding_model) == (
        "alpha",
        DIM,
        pb.COSINE,
        MODEL,
    )
    stub.CreateCollection(pb.CreateCollectionRequest(name="beta", vector_size=3, distance=pb.DOT))
    got = stub.GetCollection(pb.GetCollectionRequest(name="beta"))
    assert (got.vector_size, got.distance, got.embedding_model, got.documents) == (3, pb.DOT, "", 0)
    listed = stub.ListCollections(pb.ListCollectionsRequest()).collections
    assert [c.name for c in listed] == ["alpha", "beta"]
    assert stub.DeleteCollection(pb.DeleteCollectionRequest(name="alpha")).deleted
    assert [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections] == [
        "beta"
    ]
    code, _ = code_of(lambda: stub.GetCollection(pb.GetCollectionRequest(name="alpha")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_collection_errors(service: Service) -> None:
    stub = service.stub
    create(stub, "alpha")
    code, message = code_of(lambda: create(stub, "alpha"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "alpha" in message
    code, message = code_of(lambda: create(stub, "bad/name"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "collection name" in message
    code, message = code_of(lambda: create(stub, "zero", size=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "vector_size" in message
    for call in (
        lambda: stub.DeleteCollection(pb.DeleteCollectionRequest(name="nope")),
        lambda: stub.Upsert(
            pb.UpsertRequest(collection="nope", documents=[pb.Document(id="a", vector=[1.0])])
        ),
        lambda: stub.Search(pb.SearchRequest(collection="nope", text="x")),
        lambda: stub.Delete(pb.DeleteRequest(collection="nope", ids=["a"])),
    ):
        code, message = code_of(call)
        assert code == grpc.StatusCode.NOT_FOUND and "nope" in message


# --- upsert --------------------------------------------------------------------------


def test_upsert_with_vectors_then_search_by_vector(service: Service) -> None:
    stub = service.stub
    stub.CreateCollection(pb.CreateCollectionRequest(name="v", vector_size=3))
    docs = [
        pb.Document(id="x", text="first", vector=[1, 0, 0], metadata=struct({"n": 1})),
        pb.Document(id="y", text="second", vector=[0, 1, 0]),
        pb.Document(id="z", vector=[0.9, 0.1, 0]),
    ]
    response = stub.Upsert(pb.UpsertRequest(collection="v", documents=docs))
    assert response.upserted == 3 and response.embedding_model_version == ""
    hits = stub.Search(
        pb.SearchRequest(collection="v", vector=pb.VectorQuery(values=[1, 0, 0]), k=2)
    ).hits
    assert [h.id for h in hits] == ["x", "z"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].text == "first" and dict(hits[0].metadata) == {"n": 1.0}
    assert stub.GetCollection(pb.GetCollectionRequest(name="v")).documents == 3


def test_reupsert_replaces_text_vector_and_metadata(service: Service) -> None:
    stub = service.stub
    stub.CreateCollection(pb.CreateCollectionRequest(name="v", vector_size=2))
    first = pb.Document(id="a", text="old words", vector=[1, 0], metadata=struct({"v": 1}))
    stub.Upsert(pb.UpsertRequest(collection="v", documents=[first]))
    second = pb.Document(id="a", text="new text", vector=[0, 1], metadata=struct({"v": 2}))
    stub.Upsert(pb.UpsertRequest(collection="v", documents=[second]))
    assert stub.GetCollection(pb.GetCollectionRequest(name="v")).documents == 1
    hit = stub.Search(pb.SearchRequest(collection="v", vector=pb.VectorQuery(values=[0, 1]))).hits[
        0
    ]
    assert (hit.id, hit.text, dict(hit.metadata)) == ("a", "new text", {"v": 2.0})
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    assert search(stub, "v", text="old", mode=pb.SPARSE) == []
    assert search(stub, "v", text="new", mode=pb.SPARSE) == ["a"]


def test_texts_are_embedded_in_batches_through_inference(
    backend_kind: str, start: ServiceFactory, stand_in: tuple[Any, str]
) -> None:
    servicer, address = stand_in
    stub = start(backend_kind, address, embed_batch_size=3).stub
    load_corpus(stub)
    assert servicer.batches == [3, 3, 1]
    # A text query is embedded too (one more call of one text).
    result = stub.Search(pb.SearchRequest(collection="docs", text="bread loaf", mode=pb.DENSE))
    assert result.hits[0].id == "d5" and result.embedding_model_version == "7"
    assert servicer.batches[-1] == 1


def test_upsert_errors(service: Service) -> None:
    stub = service.stub
    stub.CreateCollection(pb.CreateCollectionRequest(name="v", vector_size=2))

    def upsert(*docs: pb.Document, collection: str = "v") -> Any:
        return stub.Upsert(pb.UpsertRequest(collection=collection, documents=docs))

    cases = [
        ((), "at least one document"),
        ((pb.Document(id="a", vector=[1, 0, 0]),), "3 dimensions; the collection has 2"),
        ((pb.Document(id="a", text="no vector here"),), "no embedding model"),
        ((pb.Document(id="", vector=[1, 0]),), "id"),
        ((pb.Document(id="a", vector=[1, 0]), pb.Document(id="a", vector=[0, 1])), "twice"),
        ((pb.Document(id="a", vector=[0, 0]),), "all zeros"),
        ((pb.Document(id="a", vector=[float("nan"), 1]),), "NaN"),
        ((pb.Document(id="a"),), "neither a vector nor text"),
    ]
    for docs, expected in cases:
        code, message = code_of(lambda docs=docs: upsert(*docs))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (docs, message)
        assert expected in message, message
    too_many = [pb.Document(id=str(i), vector=[1, 0]) for i in range(1001)]
    code, message = code_of(lambda: upsert(*too_many))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 1000" in message
    assert stub.GetCollection(pb.GetCollectionRequest(name="v")).documents == 0


def test_embedding_model_returning_the_wrong_size_is_refused(
    backend_kind: str, start: ServiceFactory, stand_in: tuple[Any, str]
) -> None:
    stub = start(backend_kind, stand_in[1]).stub
    create(stub, "wide", size=DIM + 1)
    code, message = code_of(
        lambda: stub.Upsert(
            pb.UpsertRequest(collection="wide", documents=[pb.Document(id="a", text="car")])
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"returns {DIM}-dimensional" in message
    create(stub, "unknown", model="no-such-model")
    code, message = code_of(
        lambda: stub.Upsert(
            pb.UpsertRequest(collection="unknown", documents=[pb.Document(id="a", text="car")])
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not served" in message


def test_inference_down_fails_fast_with_unavailable(
    backend_kind: str, start: ServiceFactory
) -> None:
    import socket

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    stub = start(backend_kind, dead, embed_timeout_seconds=5.0).stub
    create(stub)
    for call in (
        lambda: stub.Upsert(
            pb.UpsertRequest(collection="docs", documents=[pb.Document(id="a", text="car")]),
            timeout=20,
        ),
        lambda: stub.Search(pb.SearchRequest(collection="docs", text="car"), timeout=20),
    ):
        began = time.monotonic()
        code, message = code_of(call)
        assert code == grpc.StatusCode.UNAVAILABLE and "inference server" in message
        assert time.monotonic() - began < 3.0
    # Vector-only work does not need the inference server.
    stub.Upsert(
        pb.UpsertRequest(collection="docs", documents=[pb.Document(id="v", vector=[1.0] * DIM)])
    )


def test_hanging_inference_is_cut_by_the_embed_deadline(
    backend_kind: str, start: ServiceFactory
) -> None:
    servicer = embedding_models.StandInInference(delay_seconds=5.0)
    with embedding_models.serve_stand_in(servicer) as address:
        stub = start(backend_kind, address, embed_timeout_seconds=0.5, embed_attempts=1).stub
        create(stub)
        began = time.monotonic()
        code, _ = code_of(lambda: stub.Search(pb.SearchRequest(collection="docs", text="car")))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - began < 2.5


# --- search --------------------------------------------------------------------------


def test_hybrid_beats_dense_on_a_keyword_query(service: Service) -> None:
    stub = service.stub
    load_corpus(stub)
    query = "printer error E4021"
    dense = search(stub, text=query, mode=pb.DENSE, k=3)
    hybrid = search(stub, text=query, mode=pb.HYBRID, k=3)
    default = search(stub, text=query, k=3)
    assert dense[0] != "d3", dense  # the embedder cannot see the code
    assert hybrid[0] == "d3", hybrid
    assert default == hybrid  # a text query is hybrid unless told otherwise
    hits = stub.Search(pb.SearchRequest(collection="docs", text=query, k=3)).hits
    # RRF, k=60, ranks from 1: d3 is 1st for BM25 and 3rd for dense.
    assert hits[0].score == pytest.approx(1 / 61 + 1 / 63, rel=1e-5)


def test_dense_beats_sparse_on_a_paraphrase(service: Service) -> None:
    stub = service.stub
    load_corpus(stub)
    query = "fixing automobile"  # d1 says "repair ... car": no word in common
    dense = search(stub, text=query, mode=pb.DENSE, k=3)
    sparse = search(stub, text=query, mode=pb.SPARSE, k=3)
    # Both documents about car repair, neither sharing a word with the query...
    assert set(dense[:2]) == {"d1", "d2"}, dense
    # ... while BM25 finds only the literal match: a car wash.
    assert sparse == ["d7"], sparse


def test_sparse_scores_are_bm25(service: Service) -> None:
    from kloop_vectorstore.bm25 import bm25_scores

    stub = service.stub
    load_corpus(stub)
    query = "laserjet fault printer"
    expected = bm25_scores(query, [t for _, t, _ in CORPUS])
    hits = stub.Search(pb.SearchRequest(collection="docs", text=query, mode=pb.SPARSE, k=7)).hits
    by_id = {h.id: h.score for h in hits}
    for (doc_id, _, _), score in zip(CORPUS, expected, strict=True):
        assert by_id.get(doc_id, 0.0) == pytest.approx(score, rel=1e-4), doc_id


def test_filters_must_and_must_not(service: Service) -> None:
    stub = service.stub
    load_corpus(stub)

    def cond(key: str, **match: Any) -> pb.FieldCondition:
        return pb.FieldCondition(key=key, **match)

    only_cars = pb.Filter(must=[cond("topic", keyword="cars")])
    assert set(search(stub, text="printer error", k=10, filter=only_cars)) <= {"d1", "d2", "d7"}
    public_2024 = pb.Filter(must=[cond("year", integer=2024), cond("public", boolean=True)])
    assert set(search(stub, text="car printer bread", k=10, filter=public_2024, mode=pb.DENSE)) == {
        "d1",
        "d3",
        "d5",
    }
    not_printers = pb.Filter(must_not=[cond("topic", keyword="printers")])
    found = search(stub, text="laserjet fault printer", k=10, filter=not_printers)
    assert found and not {"d3", "d4", "d6"} & set(found)
    vector_filtered = stub.Search(
        pb.SearchRequest(
            collection="docs",
            vector=pb.VectorQuery(values=embedding_models.embed(["laserjet"])[0].tolist()),
            k=10,
            filter=pb.Filter(must=[cond("public", boolean=False)]),
        )
    ).hits
    assert [h.id for h in vector_filtered] == ["d4"]


def test_search_errors(service: Service) -> None:
    stub = service.stub
    create(stub)
    stub.CreateCollection(pb.CreateCollectionRequest(name="plain", vector_size=DIM))
    vector = pb.VectorQuery(values=[1.0] * DIM)
    cases = [
        (pb.SearchRequest(collection="docs", text="car", k=1001), "k must be between 1 and 1000"),
        (pb.SearchRequest(collection="docs"), "needs a query"),
        (pb.SearchRequest(collection="docs", text="   "), "empty"),
        (pb.SearchRequest(collection="docs", vector=pb.VectorQuery(values=[1.0])), "1 dimensions"),
        (pb.SearchRequest(collection="docs", vector=vector, mode=pb.HYBRID), "needs a text query"),
        (pb.SearchRequest(collection="plain", text="car"), "no embedding model"),
        (
            pb.SearchRequest(
                collection="docs",
                text="car",
                filter=pb.Filter(must=[pb.FieldCondition(key="topic")]),
            ),
            "no value to match",
        ),
        (
            pb.SearchRequest(
                collection="docs",
                text="car",
                filter=pb.Filter(must=[pb.FieldCondition(key="a[0]", keyword="x")]),
            ),
            "filter key",
        ),
    ]
    for request, expected in cases:
        code, message = code_of(lambda request=request: stub.Search(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (request, message)
        assert expected in message, message
    # A collection without a model is still searchable by BM25 and by vector.
    assert search(stub, "plain", text="car", mode=pb.SPARSE) == []
    assert search(stub, "plain", vector=vector) == []


# --- delete --------------------------------------------------------------------------


def test_delete_by_ids_and_by_filter(service: Service) -> None:
    stub = service.stub
    load_corpus(stub)
    deleted = stub.Delete(pb.DeleteRequest(collection="docs", ids=["d1", "d2", "missing"]))
    assert deleted.deleted == 2
    by_filter = pb.Filter(must=[pb.FieldCondition(key="topic", keyword="printers")])
    assert stub.Delete(pb.DeleteRequest(collection="docs", filter=by_filter)).deleted == 3
    assert stub.GetCollection(pb.GetCollectionRequest(name="docs")).documents == 2
    assert set(search(stub, text="printer error laserjet car", k=10)) == {"d5", "d7"}
    assert search(stub, text="E4021", mode=pb.SPARSE) == []
    for request, expected in [
        (pb.DeleteRequest(collection="docs"), "needs ids or a filter"),
        (pb.DeleteRequest(collection="docs", filter=pb.Filter()), "needs ids or a filter"),
        (pb.DeleteRequest(collection="docs", ids=["d5"], filter=by_filter), "not both"),
    ]:
        code, message = code_of(lambda request=request: stub.Delete(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in message
    assert stub.GetCollection(pb.GetCollectionRequest(name="docs")).documents == 2


# --- observability -------------------------------------------------------------------


def test_metrics_and_readiness(service: Service) -> None:
    stub = service.stub
    load_corpus(stub)
    search(stub, text="car")
    code_of(lambda: stub.GetCollection(pb.GetCollectionRequest(name="nope")))
    with urllib.request.urlopen(f"{service.http}/metrics", timeout=5) as response:  # noqa: S310 - http on loopback
        text = response.read().decode()
    assert 'kloop_vectorstore_documents{collection="docs"} 7.0' in text
    assert "kloop_vectorstore_search_duration_seconds_bucket" in text
    assert "kloop_vectorstore_upsert_duration_seconds_bucket" in text
    assert f'kloop_vectorstore_embedding_requests_total{{model="{MODEL}",outcome="ok"}}' in text
    assert (
        'kloop_grpc_server_requests_total{code="NOT_FOUND",'
        'method="kloop.vectorstore.v1.VectorStoreService/GetCollection",service="vectorstore"}'
    ) in text
    deadline = time.monotonic() + 5
    while not service.running.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    with urllib.request.urlopen(f"{service.http}/readyz", timeout=5) as response:  # noqa: S310 - http on loopback
        assert response.status == 200


def test_embed_and_retrieve_spans(service: Service, span_exporter: Any) -> None:
    stub = service.stub
    load_corpus(stub)
    span_exporter.clear()
    search(stub, text="printer error", k=2)
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    embed = spans[f"embeddings {MODEL}"]
    assert embed.attributes["gen_ai.operation.name"] == "embeddings"
    assert embed.attributes["gen_ai.request.model"] == MODEL
    assert embed.attributes["gen_ai.embeddings.dimension.count"] == DIM
    retrieve = spans["retrieve docs"]
    assert retrieve.attributes["gen_ai.operation.name"] == "retrieve"
    assert retrieve.attributes["gen_ai.data_source.id"] == "docs"
    assert retrieve.attributes["kloop.search.mode"] == "hybrid"
    assert retrieve.attributes["kloop.search.hits"] == 2
    assert embed.context.trace_id == retrieve.context.trace_id
