"""The Redis stream consumer: prediction and feedback events in, windows, drift and
retrain triggers out.

One loop per process, in a consumer group shared by every replica:

1. on (re)connect: create the groups if needed, then re-read this consumer's own
   pending entries (a crash left them counted nowhere: see store.py);
2. every `claim_interval_seconds`: XAUTOCLAIM entries a dead consumer left pending for
   `claim_idle_seconds`;
3. XREADGROUP a batch from both streams, parse (malformed entries are dead-lettered),
   drop ids already counted, count the rest into their version's windows and commit
   states + seen ids + dead letters + XACK in one transaction (store.py);
4. after the commit: Prometheus gauges, and a retrain request for a version whose
   drift held for `trigger_windows` windows.

An entry delivered more than `max_deliveries` times is dead-lettered unread, and a
batch that fails for any reason other than Redis is split and retried entry by entry,
the failing entry dead-lettered: one bad event never stops the monitor. Redis errors
end the iteration; the loop reconnects with capped exponential backoff and resumes
from step 1.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from kloop_core.errors import KloopError
from kloop_core.logging import get_logger
from kloop_drift_monitor import metrics
from kloop_drift_monitor.detector import WindowResult
from kloop_drift_monitor.events import (
    FeedbackEvent,
    MalformedEvent,
    PredictionEvent,
    parse_feedback,
    parse_prediction,
)
from kloop_drift_monitor.reference import Reference, ReferenceCache
from kloop_drift_monitor.retrain import RetrainRequester
from kloop_drift_monitor.settings import DriftMonitorSettings
from kloop_drift_monitor.store import StateStore, Transaction, VersionKey
from kloop_drift_monitor.trigger import (
    FAILED,
    SENT,
    TriggerRecord,
    build_evidence,
    trigger_due,
)
from kloop_drift_monitor.windows import (
    VersionState,
    apply_feedback,
    apply_predictions,
    close_expired,
    pane_expired,
)

log = get_logger(__name__)

PREDICTION, FEEDBACK = "prediction", "feedback"
TRIGGER_AUDIT_MAXLEN = 10_000
# Redis < 7 does not report a group's lag; above this many entries it is not counted.
LAG_COUNT_CAP = 10_000
# (stream, entry id, fields); fields are empty for an entry deleted from the stream.
Entry = tuple[str, bytes, Mapping[bytes, bytes]]


@dataclass
class Batch:
    predictions: dict[VersionKey, list[PredictionEvent]] = field(
        default_factory=lambda: defaultdict(list)
    )
    feedback: dict[VersionKey, list[FeedbackEvent]] = field(
        default_factory=lambda: defaultdict(list)
    )
    dead: list[tuple[Entry, str, str]] = field(default_factory=list)  # entry, reason, message
    acks: list[Entry] = field(default_factory=list)  # every entry of the batch

    def keys(self) -> set[VersionKey]:
        return set(self.predictions) | set(self.feedback)


@dataclass
class Applied:
    states: dict[VersionKey, VersionState]
    windows: dict[VersionKey, list[WindowResult]]
    predictions: int = 0
    feedback: int = 0
    duplicates: dict[str, int] = field(default_factory=lambda: {PREDICTION: 0, FEEDBACK: 0})


@dataclass
class ConsumerStats:
    """Since this process started (GetStatus' ConsumerStatus)."""

    connected: bool = False
    predictions: int = 0
    feedback: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    lag: int = 0
    pending: int = 0


class Consumer:
    def __init__(
        self,
        settings: DriftMonitorSettings,
        client: redis.Redis,
        references: ReferenceCache,
        requester: RetrainRequester | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.client = client
        self.references = references
        self.requester = requester
        self.clock = clock
        self.config = settings.monitor_config()
        self.store = StateStore(
            client,
            prefix=settings.key_prefix,
            group=settings.consumer_group,
            dead_maxlen=settings.dead_letter_maxlen,
        )
        self.kinds = {settings.events_stream: PREDICTION, settings.feedback_stream: FEEDBACK}
        self.stats = ConsumerStats()
        self._next_claim = 0.0
        self._next_quiet_check = 0.0

    # --- setup and recovery -------------------------------------------------------------

    def start(self) -> None:
        """Groups, gauges from the stored states, then this consumer's own pending
        entries. Called again after every reconnect."""
        for stream in self.kinds:
            try:
                self.client.xgroup_create(
                    stream,
                    self.settings.consumer_group,
                    id=self.settings.group_start_id,
                    mkstream=True,
                )
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        for state in self.store.load_all():
            metrics.export_state(state)
        recovered = self.recover()
        self.stats.connected = True
        log.info("consumer started", consumer=self.settings.consumer_name, recovered=recovered)

    def recover(self) -> int:
        """Process this consumer's own pending entries (delivered, never acknowledged)."""
        total = 0
        for stream in self.kinds:
            start: bytes = b"0"
            while True:
                reply: Any = self.client.xreadgroup(
                    self.settings.consumer_group,
                    self.settings.consumer_name,
                    {stream: start},
                    count=self.settings.batch_size,
                )
                items = reply[0][1] if reply else []
                if not items:
                    break
                entries = [(stream, entry_id, fields or {}) for entry_id, fields in items]
                self.process(entries, self._deliveries(stream, entries))
                total += len(entries)
                start = items[-1][0]
        return total

    def claim_stale(self) -> int:
        """XAUTOCLAIM what dead consumers left pending for claim_idle_seconds."""
        total = 0
        idle_ms = int(self.settings.claim_idle_seconds * 1000)
        for stream in self.kinds:
            cursor: bytes | str = "0-0"
            while True:
                reply: Any = self.client.xautoclaim(
                    stream,
                    self.settings.consumer_group,
                    self.settings.consumer_name,
                    idle_ms,
                    start_id=cursor,
                    count=self.settings.batch_size,
                )
                cursor, items = reply[0], reply[1]
                entries = [(stream, entry_id, fields or {}) for entry_id, fields in items]
                if entries:
                    log.info("claimed stale entries", stream=stream, count=len(entries))
                    self.process(entries, self._deliveries(stream, entries))
                    total += len(entries)
                if cursor in (b"0-0", "0-0"):
                    break
        return total

    def _deliveries(self, stream: str, entries: Sequence[Entry]) -> dict[bytes, int]:
        """How many times each entry has been delivered (this delivery included)."""
        pending: Any = self.client.xpending_range(
            stream,
            self.settings.consumer_group,
            min=entries[0][1],
            max=entries[-1][1],
            count=len(entries),
            consumername=self.settings.consumer_name,
        )
        return {p["message_id"]: int(p["times_delivered"]) for p in pending}

    # --- the loop -------------------------------------------------------------------------

    def poll(self) -> int:
        """One XREADGROUP of new entries (blocking up to block_ms), processed."""
        reply: Any = self.client.xreadgroup(
            self.settings.consumer_group,
            self.settings.consumer_name,
            dict.fromkeys(self.kinds, ">"),
            count=self.settings.batch_size,
            block=self.settings.block_ms,
        )
        entries = []
        for stream, items in reply or []:
            name = _text(stream)
            entries += [(name, entry_id, fields or {}) for entry_id, fields in items]
        if entries:
            self.process(entries)
        return len(entries)

    def step(self) -> int:
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self.settings.claim_interval_seconds
            self.claim_stale()
            self.update_lag()
        count = self.poll()
        if self.config.max_seconds is not None and now >= self._next_quiet_check:
            self._next_quiet_check = now + min(1.0, self.config.max_seconds / 10)
            self.close_quiet_windows()
        return count

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: start, then step; on any failure back off and restart."""
        delay = 0.1
        started = False
        while not stop.is_set():
            try:
                if not started:
                    self.start()
                    started = True
                self.step()
                delay = 0.1
            except Exception as e:
                # Redis down or restarting, the registry unreachable, the group deleted
                # (NOGROUP), or a bug: the thread never dies; it starts over after a backoff.
                started = False
                self.stats.connected = False
                expected = isinstance(e, redis.RedisError | KloopError)
                report = log.warning if expected else log.exception
                report(
                    "consumer interrupted; retrying", error=repr(e), delay_seconds=round(delay, 2)
                )
                stop.wait(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.settings.reconnect_max_seconds)

    # --- processing -----------------------------------------------------------------------

    def process(
        self, entries: Sequence[Entry], deliveries: Mapping[bytes, int] | None = None
    ) -> None:
        """Count a batch exactly once (see store.py), then export and trigger."""
        batch = self._parse(entries, deliveries or {})
        references = {key: self.references.get(*key) for key in batch.predictions}
        try:
            applied = self.store.commit(
                batch.keys(), lambda txn: self._apply(txn, batch, references)
            )
        except redis.RedisError:
            raise  # infrastructure, not the data: the loop backs off and retries
        except Exception as e:
            if len(entries) > 1:
                log.warning(
                    "batch failed; retrying entry by entry", error=repr(e), size=len(entries)
                )
                for entry in entries:
                    self.process([entry], deliveries)
                return
            log.exception("entry failed; dead-lettering it", entry_id=_text(entries[0][1]))
            self._dead_letter_only(entries[0], "processing_error", f"{type(e).__name__}: {e}")
            return
        self._after_commit(batch, applied)

    def _parse(self, entries: Sequence[Entry], deliveries: Mapping[bytes, int]) -> Batch:
        batch = Batch(acks=list(entries))
        predictions, feedback, dead = batch.predictions, batch.feedback, batch.dead
        events_stream = self.settings.events_stream
        for entry in entries:
            stream, entry_id, fields = entry
            if not fields:
                continue  # trimmed from the stream while pending: nothing left to count
            delivered = deliveries.get(entry_id, 1) if deliveries else 1
            if delivered > self.settings.max_deliveries:
                dead.append((entry, "too_many_deliveries", f"delivered {delivered} times"))
                continue
            try:
                if stream == events_stream:
                    event = parse_prediction(fields)
                    predictions[(event.model, event.version)].append(event)
                else:
                    label = parse_feedback(fields)
                    feedback[(label.model, label.version)].append(label)
            except MalformedEvent as e:
                dead.append((entry, e.reason, e.message))
        return batch

    def _fresh(
        self, txn: Transaction, kind: str, key: VersionKey, generation: int, ids: Sequence[str]
    ) -> list[bool]:
        """Which ids are new: not seen in this batch, nor in the last two generations."""
        set_keys = [
            self.store.seen_key(kind, key, g) for g in (generation, generation - 1) if g >= 0
        ]
        seen = txn.seen(set_keys, ids)
        in_batch: set[str] = set()
        fresh = []
        for event_id, already in zip(ids, seen, strict=True):
            fresh.append(not already and event_id not in in_batch)
            in_batch.add(event_id)
        return fresh

    def _remember(
        self, txn: Transaction, kind: str, key: VersionKey, before: int, after: int, ids: list[str]
    ) -> None:
        """Queue the counted ids into the current generation; drop aged-out ones."""
        if ids:
            txn.seen_adds.setdefault(self.store.seen_key(kind, key, after), []).extend(ids)
        txn.seen_drops += [
            self.store.seen_key(kind, key, g) for g in range(max(0, before - 1), after - 1)
        ]

    def _apply(
        self, txn: Transaction, batch: Batch, references: Mapping[VersionKey, Reference | None]
    ) -> Applied:
        applied = Applied(states=txn.states, windows={})
        per_generation = self.settings.dedupe_events
        for key, events in batch.predictions.items():
            state = txn.state(key)
            before = state.events // per_generation
            flags = self._fresh(txn, "p", key, before, [e.id for e in events])
            fresh = [e for e, new in zip(events, flags, strict=True) if new]
            state.duplicates += len(events) - len(fresh)
            applied.duplicates[PREDICTION] += len(events) - len(fresh)
            applied.windows[key] = apply_predictions(state, fresh, references[key], self.config)
            applied.predictions += len(fresh)
            self._remember(
                txn, "p", key, before, state.events // per_generation, [e.id for e in fresh]
            )
        for key, labels in batch.feedback.items():
            state = txn.state(key)
            before = state.quality.labeled_total // per_generation
            flags = self._fresh(txn, "f", key, before, [e.prediction_id for e in labels])
            fresh_labels = [e for e, new in zip(labels, flags, strict=True) if new]
            applied.duplicates[FEEDBACK] += len(labels) - len(fresh_labels)
            apply_feedback(state, fresh_labels, self.config)
            applied.feedback += len(fresh_labels)
            after = state.quality.labeled_total // per_generation
            self._remember(txn, "f", key, before, after, [e.prediction_id for e in fresh_labels])
        for entry, reason, message in batch.dead:
            txn.dead.append(
                (entry[0] + self.settings.dead_letter_suffix, _dead_fields(entry, reason, message))
            )
        for stream, entry_id, _ in batch.acks:
            txn.acks.setdefault(stream, []).append(entry_id)
        return applied

    def _dead_letter_only(self, entry: Entry, reason: str, message: str) -> None:
        def write(txn: Transaction) -> None:
            txn.dead.append(
                (entry[0] + self.settings.dead_letter_suffix, _dead_fields(entry, reason, message))
            )
            txn.acks[entry[0]] = [entry[1]]

        self.store.commit([], write)
        metrics.DEAD_LETTERED.labels(self.kinds[entry[0]], reason).inc()
        self.stats.dead_lettered += 1

    def _after_commit(self, batch: Batch, applied: Applied) -> None:
        metrics.EVENTS_PROCESSED.labels(PREDICTION).inc(applied.predictions)
        metrics.EVENTS_PROCESSED.labels(FEEDBACK).inc(applied.feedback)
        for kind, count in applied.duplicates.items():
            metrics.DUPLICATES.labels(kind).inc(count)
        for entry, reason, message in batch.dead:
            metrics.DEAD_LETTERED.labels(self.kinds[entry[0]], reason).inc()
            log.warning(
                "event dead-lettered",
                stream=entry[0],
                entry_id=_text(entry[1]),
                reason=reason,
                error=message,
            )
        self.stats.predictions += applied.predictions
        self.stats.feedback += applied.feedback
        self.stats.dead_lettered += len(batch.dead)
        self.stats.duplicates += sum(applied.duplicates.values())
        for key, state in applied.states.items():
            metrics.export_state(state)
            for window in applied.windows.get(key, []):
                outcome = (
                    "undecided" if not window.decided else "drifted" if window.drifted else "ok"
                )
                metrics.WINDOWS.labels(key[0], key[1], outcome).inc()
            if applied.windows.get(key) and trigger_due(
                state.streak, self.settings.trigger_windows
            ):
                self.trigger(state)

    # --- windows of quiet streams, lag ---------------------------------------------------------

    def close_quiet_windows(self) -> None:
        """Close panes older than window_max_seconds on streams that went quiet."""
        now = self.clock()
        for state in self.store.load_all():
            if not pane_expired(state, now, self.config):
                continue
            key = (state.model, state.version)

            def close(txn: Transaction, key: VersionKey = key) -> Applied:
                fresh = txn.state(key)
                result = close_expired(fresh, now, self.references.loaded(*key), self.config)
                return Applied(states=txn.states, windows={key: [result] if result else []})

            self._after_commit(Batch(), self.store.commit([key], close))

    def update_lag(self) -> None:
        for stream in self.kinds:
            groups: Any = self.client.xinfo_groups(stream)
            group = next(
                (g for g in groups if _text(g["name"]) == self.settings.consumer_group), None
            )
            if group is None:
                continue
            pending = int(group.get("pending") or 0)
            undelivered = group.get("lag")
            if undelivered is None:  # Redis < 7 (or after some trims): count them
                undelivered = self._undelivered(stream, group["last-delivered-id"])
            metrics.CONSUMER_PENDING.labels(stream).set(pending)
            metrics.CONSUMER_LAG.labels(stream).set(int(undelivered) + pending)
            if self.kinds[stream] == PREDICTION:
                self.stats.lag, self.stats.pending = int(undelivered) + pending, pending

    def _undelivered(self, stream: str, last_delivered: bytes | str) -> int:
        """Entries after the group's last delivered id, counted up to LAG_COUNT_CAP."""
        entries: Any = self.client.xrange(
            stream, min=b"(" + _text(last_delivered).encode(), count=LAG_COUNT_CAP
        )
        return len(entries)

    # --- retrain trigger ----------------------------------------------------------------------

    def trigger(self, state: VersionState) -> None:
        """Ask for a retrain once per cooldown per model (claimed in Redis first)."""
        if not self.settings.trigger_enabled or self.requester is None:
            return
        now = self.clock()
        evidence = build_evidence(
            state.model,
            state.version,
            state.history,
            streak=state.streak,
            windows_needed=self.settings.trigger_windows,
            thresholds=self.config.thresholds,
            now=now,
        )
        trigger_id = str(evidence["trigger_id"])
        key = self.store.trigger_key(state.model)
        claim = json.dumps({"trigger_id": trigger_id, "status": "claimed", "time": now})
        if not self.client.set(
            key, claim, nx=True, px=int(self.settings.trigger_claim_seconds * 1000)
        ):
            metrics.RETRAIN_SUPPRESSED.labels(state.model).inc()
            log.info(
                "retrain trigger suppressed",
                model=state.model,
                version=state.version,
                trigger_id=trigger_id,
                holder=_text(self.client.get(key) or b""),
            )
            return
        try:
            task_id = self.requester.request_retrain(state.model, evidence)
        except Exception as e:
            self.client.delete(key)  # let the next drifted window try again
            metrics.RETRAIN_FAILURES.labels(state.model).inc()
            log.warning(
                "retrain request failed", model=state.model, trigger_id=trigger_id, error=repr(e)
            )
            record = TriggerRecord(trigger_id, now, FAILED, "", state.streak, repr(e)[:300])
        else:
            sent = json.dumps(
                {"trigger_id": trigger_id, "status": "sent", "task_id": task_id, "time": now}
            )
            self.client.set(key, sent, px=int(self.settings.trigger_cooldown_seconds * 1000))
            self.client.xadd(
                self.store.triggers_stream,
                {
                    "trigger_id": trigger_id,
                    "model": state.model,
                    "version": state.version,
                    "task_id": task_id,
                    "evidence": json.dumps(evidence),
                },
                maxlen=TRIGGER_AUDIT_MAXLEN,
                approximate=True,
            )
            metrics.RETRAIN_REQUESTS.labels(state.model).inc()
            log.info(
                "retrain requested",
                model=state.model,
                version=state.version,
                trigger_id=trigger_id,
                task_id=task_id,
            )
            record = TriggerRecord(trigger_id, now, SENT, task_id, state.streak)

        def save(txn: Transaction) -> None:
            fresh = txn.state((state.model, state.version))
            fresh.last_trigger = record
            if record.outcome == SENT:
                fresh.streak = 0  # the next request needs fresh evidence

        self.store.commit([(state.model, state.version)], save)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _dead_fields(entry: Entry, reason: str, message: str) -> dict[Any, Any]:
    stream, entry_id, fields = entry
    return {
        **fields,
        b"dead_reason": reason,
        b"dead_message": message[:500],
        b"dead_source_stream": stream,
        b"dead_source_id": entry_id,
    }
