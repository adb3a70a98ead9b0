"""Status messages, the trigger's evidence, live quality and settings validation."""

from __future__ import annotations

import pytest

from kloop_core.settings import load_settings
from kloop_drift_monitor.detector import FeatureDrift, Thresholds, WindowResult
from kloop_drift_monitor.events import FeedbackEvent, parse_prediction
from kloop_drift_monitor.quality import Quality, accuracy_f1, add_feedback
from kloop_drift_monitor.reference import build_reference
from kloop_drift_monitor.reports import current_rows, reference_rows
from kloop_drift_monitor.settings import DriftMonitorSettings
from kloop_drift_monitor.status import version_status
from kloop_drift_monitor.trigger import build_evidence
from kloop_drift_monitor.windows import MonitorConfig, VersionState, apply_predictions
from kloop_model.classifier import SentimentClassifier
from kloop_model.dataset import builtin_dataset, shifted_dataset

from .helpers import reference_documents, stream_of


def window(sequence: int, value: float, *, decided: bool = True) -> WindowResult:
    drift = (FeatureDrift("score", "psi", value, 0.2),)
    return WindowResult(sequence, 200, 0, 1.0, 2.0, drift, decided)


def test_evidence_carries_the_drifted_windows_values_and_thresholds() -> None:
    history = [window(1, 0.05), window(2, 0.5), window(3, 0.1, decided=False), window(4, 0.7)]
    evidence = build_evidence(
        "sentiment", "3", history, streak=2, windows_needed=2, thresholds=Thresholds(), now=9.0
    )
    assert evidence["trigger_id"] == "sentiment:3:4"
    assert [w["sequence"] for w in evidence["windows"]] == [2, 4]  # undecided ones skipped
    assert evidence["windows"][1]["values"] == [
        {"feature": "score", "metric": "psi", "value": 0.7, "threshold": 0.2, "drifted": True}
    ]
    assert evidence["thresholds"] == {"psi": 0.2, "ks": 0.2, "js": 0.1}


def test_accuracy_and_f1() -> None:
    quality = Quality()
    events = [
        FeedbackEvent(str(i), 0.0, "m", "1", true, predicted)
        for i, (true, predicted) in enumerate(
            [("positive", "positive"), ("negative", "positive"), ("positive", "negative")]
            + [("negative", "negative")] * 2
        )
    ]
    add_feedback(quality, events, positive_label="positive", window=4)
    assert quality.labeled_total == 5 and len(quality.recent) == 4
    assert accuracy_f1(quality.totals) == pytest.approx((3 / 5, 2 / 4))
    assert accuracy_f1({}) == (0.0, 0.0)


def test_status_says_which_features_the_events_allow(builtin_model: SentimentClassifier) -> None:
    profile, document = reference_documents(builtin_model, builtin_dataset().texts)
    reference = build_reference("sentiment", "1", profile, document)
    config = MonitorConfig(window_events=200, slide_events=200)
    plain = stream_of(builtin_model, shifted_dataset().texts, 250, include_text=False)
    state = VersionState("sentiment", "1")
    apply_predictions(
        state,
        [parse_prediction({k.encode(): v.encode() for k, v in f.items()}) for f in plain],
        reference,
        config,
    )
    message = version_status(
        state, config, reference=reference, problem=None, now=state.last_event_time or 0
    )
    assert list(message.features) == ["length", "score"]
    assert (
        "events carry no text" in message.coverage
        and "KLOOP_GATEWAY_EVENT_INCLUDE_TEXT" in message.coverage
    )
    assert (message.events_processed, message.current_window_events) == (250, 50)
    assert message.last_window.sequence == 1 and message.drift_detected
    missing = version_status(state, config, reference=None, problem="not found", now=0)
    assert not missing.reference_loaded and "no reference profile (not found)" in missing.coverage


def test_report_rows_come_from_the_holdout_and_the_window_sample(
    builtin_model: SentimentClassifier,
) -> None:
    rows = reference_rows(builtin_model.to_dict(), builtin_dataset().texts)
    assert len(rows["score"]) == len(rows["length"]) == len(rows["oov_rate"]) == 50
    assert set(rows["oov_rate"]) == {0.0}  # its own holdout: every token is known
    with_text = current_rows([(1, 5, 0.9, 0.2), (2, 3, 0.1, 0.0)])
    assert with_text == {"length": [5.0, 3.0], "score": [0.9, 0.1], "oov_rate": [0.2, 0.0]}
    assert "oov_rate" not in current_rows([(1, 5, 0.9, None), (2, 3, 0.1, 0.0)])


def test_settings_refuse_a_slide_that_does_not_divide_the_window(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KLOOP_DRIFT_MONITOR_WINDOW_EVENTS", "1000")
    monkeypatch.setenv("KLOOP_DRIFT_MONITOR_WINDOW_SLIDE_EVENTS", "300")
    with pytest.raises(SystemExit) as info:
        load_settings(DriftMonitorSettings)
    assert info.value.code == 2
    assert "must divide window_events" in capsys.readouterr().err
    monkeypatch.setenv("KLOOP_DRIFT_MONITOR_WINDOW_SLIDE_EVENTS", "250")
    assert load_settings(DriftMonitorSettings).monitor_config().panes == 4
