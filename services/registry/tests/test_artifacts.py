from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from kloop_registry.artifacts import (
    CHUNK_SIZE,
    ArtifactCache,
    ArtifactSource,
    DigestMismatch,
    file_digest,
    iter_chunks,
)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_put_get_round_trip_and_source_index(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    data = b"onnx bytes" * 1000
    sha = hashlib.sha256(data).hexdigest()
    src = ArtifactSource("m", "3", "model.onnx")
    put = cache.put(write(tmp_path / "f", data), expected_sha256=sha, source=src)
    got = cache.get(sha)
    assert got == put and got.size == len(data) and got.path.read_bytes() == data
    assert cache.source_of(sha) == src
    # A fresh cache object over the same directory (a restart) finds both again.
    again = ArtifactCache(tmp_path / "cache")
    assert again.get(sha) == put and again.source_of(sha) == src


def test_mismatches_are_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    src = write(tmp_path / "f", b"abc")
    with pytest.raises(DigestMismatch, match="sha256"):
        cache.put(src, expected_sha256="0" * 64)
    with pytest.raises(DigestMismatch, match="size is 3 bytes, expected 4"):
        cache.put(src, expected_size=4)
    assert cache.get(hashlib.sha256(b"abc").hexdigest()) is None


def test_a_corrupted_blob_is_dropped(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    put = cache.put(write(tmp_path / "f", b"good"))
    put.path.write_bytes(b"evil")
    assert cache.get(put.sha256) is None
    assert not put.path.exists()


def test_digests_are_checked_before_becoming_file_names(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="not a sha256"):
        cache.get("../../etc/passwd")
    assert cache.source_of("../index") is None


def test_chunks_are_one_mib_and_reassemble(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK_SIZE // 256 * 2 + 3)
    path = write(tmp_path / "big", data)
    chunks = list(iter_chunks(path))
    assert [len(c) for c in chunks[:2]] == [CHUNK_SIZE, CHUNK_SIZE]
    assert b"".join(chunks) == data
    assert file_digest(path) == (hashlib.sha256(data).hexdigest(), len(data))


def test_concurrent_puts_of_one_digest_are_harmless(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    data = b"x" * (3 * CHUNK_SIZE)
    sources = [write(tmp_path / f"s{i}", data) for i in range(4)]
    threads = [threading.Thread(target=cache.put, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = cache.get(hashlib.sha256(data).hexdigest())
    assert got is not None and got.path.read_bytes() == data
