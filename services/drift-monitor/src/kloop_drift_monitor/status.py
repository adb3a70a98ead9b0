"""GetStatus / /v1/status content: a version's state as a `kloop.drift.v1` message.
Pure functions; the HTTP API renders the same messages as JSON."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from kloop.drift.v1 import drift_pb2 as pb
from kloop_drift_monitor.detector import WindowResult
from kloop_drift_monitor.quality import accuracy_f1, recent_counts
from kloop_drift_monitor.reference import Reference
from kloop_drift_monitor.trigger import TriggerRecord
from kloop_drift_monitor.windows import MonitorConfig, VersionState


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(round(seconds * 1e9))
    return stamp


def window_message(window: WindowResult) -> pb.Window:
    return pb.Window(
        sequence=window.sequence,
        events=window.events,
        events_with_text=window.events_with_text,
        start_time=_timestamp(window.start_time),
        end_time=_timestamp(window.end_time),
        drift=[
            pb.FeatureDrift(
                feature=d.feature,
                metric=d.metric,
                value=d.value,
                threshold=d.threshold,
                drifted=d.drifted,
            )
            for d in window.drift
        ],
        decided=window.decided,
        drifted=window.drifted,
        note=window.note,
    )


def trigger_message(record: TriggerRecord) -> pb.Trigger:
    return pb.Trigger(
        trigger_id=record.trigger_id,
        time=_timestamp(record.time),
        outcome=record.outcome,
        task_id=record.task_id,
        windows=record.windows,
        detail=record.detail,
    )


def coverage(
    state: VersionState, reference: Reference | None, problem: str | None
) -> tuple[list[str], str]:
    """(features compared, why the others are not)."""
    if reference is None:
        why = problem or "not loaded yet"
        return [], f"no reference profile ({why}): events are counted, drift is not computed"
    if not reference.has_text_features:
        return ["length", "score"], (
            "the version has no model.json vocabulary: only score and length drift are computed"
        )
    if state.events and not state.events_with_text:
        return ["length", "score"], (
            "events carry no text (the gateway's KLOOP_GATEWAY_EVENT_INCLUDE_TEXT is off): "
            "only score and length drift are computed"
        )
    share = state.events_with_text / state.events if state.events else 0.0
    return ["length", "score", "oov_rate", "tokens"], (
        f"{share:.0%} of events carry their text: length, score, oov_rate and tokens "
        "are compared (oov_rate and tokens on the events with text)"
    )


def version_status(
    state: VersionState,
    config: MonitorConfig,
    *,
    reference: Reference | None,
    problem: str | None,
    now: float,
) -> pb.VersionStatus:
    features, why = coverage(state, reference, problem)
    recent = recent_counts(state.quality)
    accuracy, f1 = accuracy_f1(recent)
    accuracy_total, _ = accuracy_f1(state.quality.totals)
    last = state.last_window
    decided = [w for w in state.history if w.decided]
    return pb.VersionStatus(
        model=state.model,
        version=state.version,
        events_processed=state.events,
        events_with_text=state.events_with_text,
        duplicates_skipped=state.duplicates,
        window_events=config.window_events,
        window_slide_events=config.slide_events,
        current_window_events=state.current_window_events(),
        last_window=window_message(last) if last is not None else None,
        consecutive_drifted_windows=state.streak,
        drift_detected=bool(decided and decided[-1].drifted),
        live=pb.LiveQuality(
            labeled=len(state.quality.recent),
            accuracy=accuracy,
            f1=f1,
            window=config.feedback_window,
            labeled_total=state.quality.labeled_total,
            accuracy_total=accuracy_total,
        ),
        last_trigger=trigger_message(state.last_trigger) if state.last_trigger else None,
        features=features,
        coverage=why,
        reference_loaded=reference is not None,
        last_event_time=_timestamp(state.last_event_time),
        lag_seconds=max(0.0, now - state.last_event_time) if state.last_event_time else 0.0,
    )
