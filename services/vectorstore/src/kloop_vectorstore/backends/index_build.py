"""Child process of the embedded backend: build the HNSW index of a copied Edge shard.

Run as `python -m kloop_vectorstore.backends.index_build SHARD_DIR`. Out of process
because qdrant-edge-py holds the GIL while it optimizes (see embedded.py).
"""

from __future__ import annotations

import sys

import qdrant_edge as qe


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m kloop_vectorstore.backends.index_build SHARD_DIR", file=sys.stderr)
        return 2
    shard = qe.EdgeShard.load(argv[0])
    try:
        shard.optimize()
        shard.flush()
    finally:
        shard.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
