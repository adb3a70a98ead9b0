"""The embedded (qdrant-edge) backend: persistence across restart, the out-of-process
index build with writes during it, boolean filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf.struct_pb2 import Struct

from kloop.vectorstore.v1 import vectorstore_pb2 as pb
from kloop_core.grpc_server import start_service
from kloop_vectorstore import bm25
from kloop_vectorstore.backends.embedded import SHARD_DIR, EmbeddedBackend, bool_tree
from kloop_vectorstore.main import build_app
from kloop_vectorstore.types import CollectionSpec, Condition, DenseQuery, Filter, Point

from ..conftest import Service, make_settings


def _point(doc_id: str, vector: list[float], text: str = "", **metadata: object) -> Point:
    return Point(doc_id, vector, bm25.document_vector(text), text, dict(metadata))


def test_survives_a_restart_through_the_api(tmp_path: Path) -> None:
    settings = make_settings("127.0.0.1:1", data_dir=tmp_path)
    service = Service(start_service(build_app(settings)))
    stub = service.stub
    stub.CreateCollection(pb.CreateCollectionRequest(name="kept", vector_size=2, distance=pb.DOT))
    meta = Struct()
    meta.update({"lang": "en"})
    docs = [
        pb.Document(id="a", text="alpha words", vector=[1, 0], metadata=meta),
        pb.Document(id="b", text="beta words", vector=[0, 1]),
    ]
    stub.Upsert(pb.UpsertRequest(collection="kept", documents=docs))
    stub.Delete(pb.DeleteRequest(collection="kept", ids=["b"]))
    service.stop()

    service = Service(start_service(build_app(settings)))
    try:
        got = service.stub.GetCollection(pb.GetCollectionRequest(name="kept"))
        assert (got.vector_size, got.distance, got.documents) == (2, pb.DOT, 1)
        hits = service.stub.Search(
            pb.SearchRequest(collection="kept", text="alpha", mode=pb.SPARSE)
        ).hits
        assert [(h.id, h.text, dict(h.metadata)) for h in hits] == [
            ("a", "alpha words", {"lang": "en"})
        ]
    finally:
        service.stop()


def test_boolean_conditions_match_json_booleans(tmp_path: Path) -> None:
    assert bool_tree({"a": True, "b": 1, "c": {"d": False, "e": "x"}, "f": [True, 2]}) == {
        "a": "true",
        "c": {"d": "false"},
        "f": ["true"],
    }
    backend = EmbeddedBackend(tmp_path, index_threshold=0)
    backend.create_collection(CollectionSpec("c", 2))
    backend.upsert(
        "c",
        [
            _point("yes", [1, 0], public=True, nested={"ok": True}),
            _point("no", [1, 0], public=False, nested={"ok": False}),
            _point("one", [1, 0], public=1),
        ],
    )

    def ids(flt: Filter) -> set[str]:
        return {h.doc_id for h in backend.search("c", [DenseQuery([1, 0])], 10, flt)[0]}

    assert ids(Filter(must=(Condition("public", True),))) == {"yes"}
    assert ids(Filter(must=(Condition("public", False),))) == {"no"}
    assert ids(Filter(must=(Condition("public", 1),))) == {"one"}
    assert ids(Filter(must=(Condition("nested.ok", True),))) == {"yes"}
    assert ids(Filter(must_not=(Condition("public", True),))) == {"no", "one"}
    backend.close()


@pytest.mark.slow
def test_index_is_built_out_of_process_without_losing_concurrent_writes(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n, dim = 11_000, 384
    vectors = rng.standard_normal((n + 300, dim)).astype(np.float32)
    backend = EmbeddedBackend(tmp_path, index_threshold=10_000)
    backend.create_collection(CollectionSpec("big", dim))
    for start in range(0, n, 1000):
        backend.upsert(
            "big",
            [
                _point(str(i), vectors[i].tolist(), f"doc {i}", i=i)
                for i in range(start, start + 1000)
            ],
        )
    collection = backend._collections["big"]
    assert collection.building  # started by the upsert that crossed the threshold
    written = 0
    while collection.building and written < 300:  # writes and deletes during the build
        i = n + written
        backend.upsert("big", [_point(str(i), vectors[i].tolist(), "late", i=i)])
        written += 1
    assert backend.delete_ids("big", ["0", "1"]) == 2
    backend.wait_indexed(timeout=300)
    assert not collection.building
    assert collection.shard.info().indexed_vectors_count > 0
    assert backend.count("big") == n + written - 2
    assert not (tmp_path / "collections" / "big" / "shard.next").exists()
    assert (tmp_path / "collections" / "big" / SHARD_DIR).is_dir()
    last = n + written - 1
    hit = backend.search("big", [DenseQuery(vectors[last].tolist())], 1, None)[0][0]
    assert hit.doc_id == str(last) and hit.text == "late"
    assert backend.delete_ids("big", ["0"]) == 0
    backend.close()

    reopened = EmbeddedBackend(tmp_path, index_threshold=0)
    assert reopened.count("big") == n + written - 2
    reopened.close()
