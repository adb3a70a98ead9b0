"""A content-addressed local cache of artifact files, verified by sha256.

Files live at `<root>/blobs/<sha256>`; `<root>/index/<sha256>.json` remembers which
version file a digest came from so it can be fetched again if the blob is evicted or
corrupted. Writes go to a temp file and are renamed into place, so concurrent writers
of the same digest are harmless and readers never see half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

CHUNK_SIZE = 1 << 20
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DigestMismatch(ValueError):
    """A file's sha256 or size is not what it was declared to be."""


@dataclass(frozen=True)
class CachedArtifact:
    sha256: str
    size: int
    path: Path


@dataclass(frozen=True)
class ArtifactSource:
    """Which version file a digest was downloaded from."""

    name: str
    version: str
    path: str


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes), reading in chunks so big models fit in memory."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def iter_chunks(path: Path, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


def check_digest(
    path: Path, expected_sha256: str | None, expected_size: int | None = None
) -> tuple[str, int]:
    sha, size = file_digest(path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise DigestMismatch(f"sha256 is {sha}, expected {expected_sha256}")
    if expected_size is not None and size != expected_size:
        raise DigestMismatch(f"size is {size} bytes, expected {expected_size}")
    return sha, size


class ArtifactCache:
    def __init__(self, root: Path) -> None:
        self._blobs = root / "blobs"
        self._index = root / "index"
        self._tmp = root / "tmp"
        for d in (self._blobs, self._index, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    def get(self, sha256: str) -> CachedArtifact | None:
        """The cached file for `sha256`, re-verified; a corrupted blob is dropped."""
        path = self._blobs / _checked(sha256)
        if not path.is_file():
            return None
        sha, size = file_digest(path)
        if sha != sha256:
            path.unlink(missing_ok=True)
            return None
        return CachedArtifact(sha, size, path)

    def put(
        self,
        src: Path,
        *,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        source: ArtifactSource | None = None,
    ) -> CachedArtifact:
        """Copy `src` into the cache under its digest (checked against the expectations)."""
        sha, size = check_digest(src, expected_sha256, expected_size)
        dst = self._blobs / sha
        if not dst.is_file():
            fd, tmp = tempfile.mkstemp(dir=self._tmp)
            with os.fdopen(fd, "wb") as out:
                for chunk in iter_chunks(src):
                    out.write(chunk)
            os.replace(tmp, dst)
        if source is not None:
            self.remember(sha, source)
        return CachedArtifact(sha, size, dst)

    def remember(self, sha256: str, source: ArtifactSource) -> None:
        """Record where `sha256` came from, to fetch it again if its blob goes missing."""
        self._write_json(self._index / f"{_checked(sha256)}.json", asdict(source))

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private temporary directory on the cache's file system, for downloads."""
        with tempfile.TemporaryDirectory(dir=self._tmp) as d:
            yield Path(d)

    def source_of(self, sha256: str) -> ArtifactSource | None:
        try:
            data = json.loads((self._index / f"{_checked(sha256)}.json").read_text())
            return ArtifactSource(str(data["name"]), str(data["version"]), str(data["path"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_json(self, path: Path, data: dict[str, str]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        os.replace(tmp, path)


def _checked(sha256: str) -> str:
    # The digest becomes a file name: never let a caller's string escape the cache.
    if not SHA256_RE.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256
