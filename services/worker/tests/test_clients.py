"""Clients at the edges: the drift monitor's report endpoint (a real HTTP server
answering as the monitor does) and paged stream reads on a real Redis."""

from __future__ import annotations

import pytest
import redis

from kloop_core.errors import NotFound, Unavailable
from kloop_worker.clients import read_stream, request_drift_report

from .conftest import Monitor, RedisServer


def test_drift_report(monitor_url: str) -> None:
    stored = request_drift_report(monitor_url + "/", "sentiment", "3", fmt="html", timeout=5)
    assert stored == {"artifact_uri": "runs:/r1/reports/drift.html", "run_id": "r1", "bytes": "19"}
    assert Monitor.seen[-1] == "/v1/reports/sentiment/3?format=html"
    with pytest.raises(NotFound, match="404"):
        request_drift_report(monitor_url, "unknown", "1", fmt="json", timeout=5)
    with pytest.raises(Unavailable):
        request_drift_report(monitor_url, "down", "1", fmt="json", timeout=5)
    with pytest.raises(Unavailable, match="unreachable"):
        request_drift_report("http://127.0.0.1:1", "m", "1", fmt="html", timeout=1)


def test_read_stream_pages_both_ways(redis_server: RedisServer, r: redis.Redis) -> None:
    ids = [r.xadd("s", {"n": str(i)}) for i in range(2500)]
    client = redis.Redis.from_url(redis_server.url)
    oldest = [f["n"] for _, f in read_stream(client, "s", limit=10_000)]
    assert oldest == [str(i) for i in range(2500)]
    after = [f["n"] for _, f in read_stream(client, "s", after=ids[1999], limit=10_000)]
    assert after == [str(i) for i in range(2000, 2500)]
    newest = [f["n"] for _, f in read_stream(client, "s", limit=1500, newest_first=True)]
    assert newest == [str(i) for i in range(2499, 999, -1)]
    assert list(read_stream(client, "missing", limit=10)) == []
