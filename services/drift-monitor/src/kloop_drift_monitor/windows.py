"""Windows of prediction events per model version, and the version's whole monitoring
state. Pure functions over plain data; the consumer persists the state in Redis.

Windows are built from panes ("slides") of `slide_events` events: a window is the
last `window_events / slide_events` panes and is evaluated each time a pane closes
(tumbling windows when slide == window). A pane also closes, with fewer events, when
its first event is `max_seconds` old (event time, or the wall clock when the stream is
quiet). Each pane keeps histograms on the reference profile's fixed edges (the same
`kloop_model.profile.bin_counts`) and a bottom-k sample by hash of the event id: a
uniform sample of the window, the same after a replay, for Evidently reports.

Features per event: ``length`` (tokens; recomputed from the text when there is one,
else the gateway's ``tokens`` field), ``score``; and, for events with text and a
reference vocabulary, ``oov_rate`` and the token categories of `reference.Reference`.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kloop_drift_monitor.detector import Thresholds, WindowCounts, WindowResult, evaluate_window
from kloop_drift_monitor.events import FeedbackEvent, PredictionEvent
from kloop_drift_monitor.quality import Quality, add_feedback
from kloop_drift_monitor.reference import NUMERIC_FEATURES, Reference
from kloop_drift_monitor.trigger import TriggerRecord
from kloop_model.profile import FEATURE_EDGES, bin_counts

STATE_FORMAT = 1
Counts = npt.NDArray[np.int64]
# (hash key, length, score, oov_rate or None): one sampled event.
SampleRow = tuple[int, int, float, float | None]


@dataclass(frozen=True)
class MonitorConfig:
    window_events: int = 1000
    slide_events: int = 1000
    max_seconds: float | None = None
    min_events: int = 100
    reservoir_size: int = 500
    history: int = 20
    psi_threshold: float = 0.2
    ks_threshold: float = 0.2
    js_threshold: float = 0.1
    feedback_window: int = 1000
    positive_label: str = "positive"

    def __post_init__(self) -> None:
        if self.window_events < 1 or self.slide_events < 1:
            raise ValueError("window and slide sizes must be >= 1")
        if self.window_events % self.slide_events:
            raise ValueError(
                f"window_slide_events ({self.slide_events}) must divide window_events "
                f"({self.window_events})"
            )

    @property
    def panes(self) -> int:
        return self.window_events // self.slide_events

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.psi_threshold, self.ks_threshold, self.js_threshold)


def _zeros(size: int) -> Counts:
    return np.zeros(size, dtype=np.int64)


def empty_counts(token_categories: int) -> dict[str, Counts]:
    counts = {feature: _zeros(len(FEATURE_EDGES[feature]) - 1) for feature in NUMERIC_FEATURES}
    counts["tokens"] = _zeros(token_categories)
    return counts


@dataclass
class Pane:
    events: int = 0
    events_with_text: int = 0
    start_time: float | None = None
    end_time: float | None = None
    counts: dict[str, Counts] = field(default_factory=lambda: empty_counts(0))
    # Max-heap (negated keys) of the bottom-k rows by hash key.
    sample: list[SampleRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "events_with_text": self.events_with_text,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "counts": {k: v.tolist() for k, v in self.counts.items()},
            "sample": self.sample,  # tuples: JSON arrays
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pane:
        return cls(
            events=int(data["events"]),
            events_with_text=int(data["events_with_text"]),
            start_time=data["start_time"],
            end_time=data["end_time"],
            counts={k: np.asarray(v, dtype=np.int64) for k, v in data["counts"].items()},
            sample=[(int(k), int(n), float(s), o) for k, n, s, o in data["sample"]],
        )


@dataclass
class VersionState:
    """Everything the monitor knows about one model version; persisted as one value."""

    model: str
    version: str
    events: int = 0
    events_with_text: int = 0
    duplicates: int = 0
    pane: Pane = field(default_factory=Pane)
    closed: list[Pane] = field(default_factory=list)  # oldest first, < panes of them
    windows: int = 0  # sequence number of the last evaluated window
    streak: int = 0  # consecutive decided windows that drifted
    history: list[WindowResult] = field(default_factory=list)
    sample: list[SampleRow] = field(default_factory=list)  # of the last window, by key
    quality: Quality = field(default_factory=Quality)
    last_trigger: TriggerRecord | None = None
    last_event_time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "model": self.model,
            "version": self.version,
            "events": self.events,
            "events_with_text": self.events_with_text,
            "duplicates": self.duplicates,
            "pane": self.pane.to_dict(),
            "closed": [p.to_dict() for p in self.closed],
            "windows": self.windows,
            "streak": self.streak,
            "history": [w.to_dict() for w in self.history],
            "sample": self.sample,
            "quality": self.quality.to_dict(),
            "last_trigger": self.last_trigger.to_dict() if self.last_trigger else None,
            "last_event_time": self.last_event_time,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionState:
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown state format {data.get('format')!r}")
        trigger = data.get("last_trigger")
        return cls(
            model=str(data["model"]),
            version=str(data["version"]),
            events=int(data["events"]),
            events_with_text=int(data["events_with_text"]),
            duplicates=int(data["duplicates"]),
            pane=Pane.from_dict(data["pane"]),
            closed=[Pane.from_dict(p) for p in data["closed"]],
            windows=int(data["windows"]),
            streak=int(data["streak"]),
            history=[WindowResult.from_dict(w) for w in data["history"]],
            sample=[(int(k), int(n), float(s), o) for k, n, s, o in data["sample"]],
            quality=Quality.from_dict(data["quality"]),
            last_trigger=TriggerRecord.from_dict(trigger) if trigger else None,
            last_event_time=data.get("last_event_time"),
        )

    @property
    def last_window(self) -> WindowResult | None:
        return self.history[-1] if self.history else None

    def current_window_events(self) -> int:
        return self.pane.events + sum(p.events for p in self.closed)

    def report_sample(self) -> list[SampleRow]:
        """Rows for a report: the last window's sample, else the open window's so far."""
        if self.sample:
            return self.sample
        rows = [row for pane in (*self.closed, self.pane) for row in pane.sample]
        return sorted((-k, n, s, o) for k, n, s, o in rows)


# --- counting ----------------------------------------------------------------------------


def _add(
    pane: Pane, events: Sequence[PredictionEvent], reference: Reference | None, size: int
) -> int:
    """Count `events` (all belonging in this pane) into it; returns how many were
    counted with their text features."""
    if not events:
        return 0
    lengths = [event.tokens for event in events]
    row_oov: list[float | None] = [None] * len(events)
    oov_rates: npt.NDArray[np.float64] = np.zeros(0)
    if reference is not None and reference.vocab is not None:
        if len(pane.counts["tokens"]) != reference.token_categories:
            # The reference arrived after the pane opened; no text was counted before.
            pane.counts["tokens"] = _zeros(reference.token_categories)
        categories_of = reference.categories.categories
        out_of_vocab = reference.categories.out_of_vocabulary
        rates: list[float] = []
        categories: list[int] = []
        for i, event in enumerate(events):
            if event.text is None:
                continue
            found = categories_of(event.text)
            rate = found.count(out_of_vocab) / len(found) if found else 0.0
            categories += found
            lengths[i] = len(found)
            row_oov[i] = rate
            rates.append(rate)
        oov_rates = np.asarray(rates, dtype=np.float64)
        pane.counts["tokens"] += np.bincount(
            np.asarray(categories, dtype=np.int64), minlength=reference.token_categories
        )
    scores = [event.score for event in events]
    counts = pane.counts
    counts["length"] += bin_counts(lengths, FEATURE_EDGES["length"])
    counts["score"] += bin_counts(scores, FEATURE_EDGES["score"])
    if len(oov_rates):
        counts["oov_rate"] += bin_counts(oov_rates, FEATURE_EDGES["oov_rate"])
        pane.events_with_text += len(oov_rates)
    pane.events += len(events)
    times = [event.time for event in events]
    pane.start_time = min(times) if pane.start_time is None else min(pane.start_time, *times)
    pane.end_time = max(times) if pane.end_time is None else max(pane.end_time, *times)
    # Bottom-k by crc32 of the id: deterministic, so a replay samples the same rows.
    keys = [zlib.crc32(event.id.encode()) for event in events]
    heap = pane.sample
    for key, length, score, oov in zip(keys, lengths, scores, row_oov, strict=True):
        if len(heap) < size:
            heapq.heappush(heap, (-key, length, score, oov))
        elif -heap[0][0] > key:
            heapq.heapreplace(heap, (-key, length, score, oov))
    return len(oov_rates)


def _window_counts(panes: Sequence[Pane]) -> WindowCounts:
    counts = empty_counts(max(len(p.counts["tokens"]) for p in panes))
    for pane in panes:
        for feature, values in pane.counts.items():
            if len(values):  # a pane from before the reference arrived has no tokens
                counts[feature] += values
    starts = [p.start_time for p in panes if p.start_time is not None]
    ends = [p.end_time for p in panes if p.end_time is not None]
    return WindowCounts(
        events=sum(p.events for p in panes),
        events_with_text=sum(p.events_with_text for p in panes),
        start_time=min(starts) if starts else None,
        end_time=max(ends) if ends else None,
        counts=counts,
    )


def _close_pane(
    state: VersionState, reference: Reference | None, config: MonitorConfig
) -> WindowResult | None:
    """Close the open pane; evaluate the window when `panes` panes are closed."""
    state.closed.append(state.pane)
    state.pane = Pane(counts=empty_counts(reference.token_categories if reference else 0))
    if len(state.closed) < config.panes:
        return None
    panes = state.closed[-config.panes :]
    state.windows += 1
    result = evaluate_window(
        state.windows,
        _window_counts(panes),
        reference,
        min_events=config.min_events,
        thresholds=config.thresholds,
    )
    if result.decided:
        state.streak = state.streak + 1 if result.drifted else 0
    state.history = [*state.history, result][-config.history :]
    rows = [row for pane in panes for row in pane.sample]
    state.sample = sorted(((-k, n, s, o) for k, n, s, o in rows))[: config.reservoir_size]
    state.closed = state.closed[1:] if config.panes > 1 else []
    return result


def apply_predictions(
    state: VersionState,
    events: Sequence[PredictionEvent],
    reference: Reference | None,
    config: MonitorConfig,
) -> list[WindowResult]:
    """Count `events` (this version's, de-duplicated, in stream order) into the state;
    the windows evaluated on the way, oldest first."""
    results: list[WindowResult] = []
    i = 0
    while i < len(events):
        pane = state.pane
        chunk = events[i : i + config.slide_events - pane.events]
        expired = False
        if config.max_seconds is not None:
            start = pane.start_time if pane.start_time is not None else chunk[0].time
            cut = next(
                (j for j, e in enumerate(chunk) if e.time - start >= config.max_seconds), None
            )
            if cut is not None:
                chunk, expired = chunk[:cut], True
        state.events_with_text += _add(pane, chunk, reference, config.reservoir_size)
        i += len(chunk)
        if pane.events >= config.slide_events or (expired and pane.events):
            result = _close_pane(state, reference, config)
            if result is not None:
                results.append(result)
    state.events += len(events)
    if events:
        newest = max(e.time for e in events)
        state.last_event_time = (
            newest if state.last_event_time is None else max(state.last_event_time, newest)
        )
    return results


def pane_expired(state: VersionState, now: float, config: MonitorConfig) -> bool:
    """Is the open pane `max_seconds` old by the wall clock (a stream gone quiet)?"""
    start = state.pane.start_time
    return (
        config.max_seconds is not None and start is not None and now - start >= config.max_seconds
    )


def close_expired(
    state: VersionState, now: float, reference: Reference | None, config: MonitorConfig
) -> WindowResult | None:
    """Close the open pane of a quiet stream once it has expired."""
    return _close_pane(state, reference, config) if pane_expired(state, now, config) else None


def apply_feedback(
    state: VersionState, events: Sequence[FeedbackEvent], config: MonitorConfig
) -> None:
    add_feedback(
        state.quality, events, positive_label=config.positive_label, window=config.feedback_window
    )
