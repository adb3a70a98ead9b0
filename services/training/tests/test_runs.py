"""Run records, the run index and progress events, in the real Redis."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kloop_training.pipeline import DatasetRef, RunParams, RunSpec
from kloop_training.runs import InvalidPageToken, RunState, RunStore


def test_create_and_get_round_trip(store: RunStore, builtin_spec: RunSpec) -> None:
    record, created = store.create(builtin_spec, dataset_digest="d" * 64, now=1000.5)
    assert created
    assert record.state is RunState.QUEUED
    assert store.get(record.run_id) == record
    assert store.get("nope") is None
    (event,) = store.events(record.run_id)
    assert (event.state, event.stage, event.message) == (RunState.QUEUED, "queued", "queued")


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
    uri=st.text(min_size=0, max_size=40),
    tags=st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4),
    l2=st.floats(0, 100),
    seed=st.integers(0, 2**63 - 1),
)
def test_any_spec_survives_the_round_trip(
    store: RunStore, model: str, uri: str, tags: dict[str, str], l2: float, seed: int
) -> None:
    spec = RunSpec(
        model, DatasetRef(uri=uri, format="csv"), RunParams(seed, 0.2, 0.5, 3, l2, 10, 1), tags
    )
    record, _ = store.create(spec, dataset_digest="")
    assert store.get(record.run_id) == record


def test_same_idempotency_key_returns_the_first_run(store: RunStore, builtin_spec: RunSpec) -> None:
    first, created = store.create(builtin_spec, dataset_digest="", idempotency_key="k1")
    again, created_again = store.create(builtin_spec, dataset_digest="", idempotency_key="k1")
    assert created and not created_again
    assert again.run_id == first.run_id
    assert store.find_by_idempotency_key("k1") == first
    assert store.find_by_idempotency_key("other") is None


def test_concurrent_submits_with_one_key_make_one_run(
    store: RunStore, builtin_spec: RunSpec
) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: store.create(builtin_spec, dataset_digest="", idempotency_key="race"),
                range(16),
            )
        )
    assert len({record.run_id for record, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert store.active_count() == 1


def test_record_updates_the_run_and_appends_an_event(
    store: RunStore, builtin_spec: RunSpec
) -> None:
    record, _ = store.create(builtin_spec, dataset_digest="")
    store.record(
        record.run_id, state=RunState.RUNNING, stage="fit", progress=0.1, message="fitting",
        started_at=2000.0, attempts=1,
    )  # fmt: skip
    store.record(
        record.run_id, state=RunState.SUCCEEDED, stage="done", progress=1.0, message="ok",
        finished_at=2001.0, mlflow_run_id="abc", model_version="3", metrics={"f1": 0.9},
    )  # fmt: skip
    got = store.get(record.run_id)
    assert got is not None
    assert (got.state, got.stage, got.progress) == (RunState.SUCCEEDED, "done", 1.0)
    assert (got.started_at, got.finished_at, got.attempts) == (2000.0, 2001.0, 1)
    assert (got.mlflow_run_id, got.model_version, dict(got.metrics)) == ("abc", "3", {"f1": 0.9})
    events = store.events(record.run_id)
    assert [e.stage for e in events] == ["queued", "fit", "done"]
    assert [e.state for e in events][-1] is RunState.SUCCEEDED
    assert store.events(record.run_id, after=events[1].event_id) == events[2:]
    # A finished run leaves the active set; its events expire, its record stays.
    assert store.active_run_ids() == []
    ttl = store._r.ttl(store._events_key(record.run_id))
    assert 0 < ttl <= 7 * 24 * 3600
    assert store._r.ttl(store._run_key(record.run_id)) == -1


def test_unknown_fields_are_refused(store: RunStore, builtin_spec: RunSpec) -> None:
    record, _ = store.create(builtin_spec, dataset_digest="")
    with pytest.raises(TypeError, match="no field 'colour'"):
        store.record(
            record.run_id, state=RunState.RUNNING, stage="x", progress=0, message="", colour="red"
        )


def test_active_runs_are_listed_oldest_first(store: RunStore, builtin_spec: RunSpec) -> None:
    ids = [
        store.create(builtin_spec, dataset_digest="", now=t)[0].run_id for t in (30.0, 10.0, 20.0)
    ]
    assert store.active_run_ids() == [ids[1], ids[2], ids[0]]


def test_list_is_newest_first_paged_and_filtered(
    store: RunStore, builtin_spec: RunSpec, default_params: RunParams
) -> None:
    other = RunSpec("other-model", DatasetRef(), default_params)
    ids = []
    for i in range(7):
        spec = other if i % 3 == 0 else builtin_spec
        # Two runs share each millisecond: the cursor must still be exact.
        ids.append(store.create(spec, dataset_digest="", now=100 + i // 2)[0].run_id)
    seen, token, pages = [], "", 0
    while True:
        page, token = store.list_runs(page_size=3, page_token=token)
        seen += [r.run_id for r in page]
        pages += 1
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)
    created = [store.get(i).created_at for i in seen]  # type: ignore[union-attr]
    assert created == sorted(created, reverse=True)
    only_other, token = store.list_runs(model_name="other-model", page_size=10)
    assert token == ""
    assert {r.run_id for r in only_other} == {ids[0], ids[3], ids[6]}
    assert store.list_runs(model_name="no-such-model", page_size=10) == ([], "")


@pytest.mark.parametrize("token", ["garbage!", "bm9wZQ", "MTIzOmFi"])
def test_bad_page_tokens_are_refused(store: RunStore, token: str) -> None:
    with pytest.raises(InvalidPageToken):
        store.list_runs(page_size=5, page_token=token)


def test_blocking_read_waits_then_wakes_on_a_new_event(
    store: RunStore, builtin_spec: RunSpec
) -> None:
    record, _ = store.create(builtin_spec, dataset_digest="")
    (first,) = store.events(record.run_id)
    started = time.monotonic()
    assert store.events(record.run_id, after=first.event_id, block_seconds=0.3) == []
    assert 0.25 < time.monotonic() - started < 2.0

    def later() -> None:
        time.sleep(0.2)
        store.record(record.run_id, state=RunState.RUNNING, stage="fit", progress=0.1, message="go")

    threading.Thread(target=later).start()
    started = time.monotonic()
    (event,) = store.events(record.run_id, after=first.event_id, block_seconds=5)
    assert event.stage == "fit"
    assert time.monotonic() - started < 2.0
