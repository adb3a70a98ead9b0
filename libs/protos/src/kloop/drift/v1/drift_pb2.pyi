import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("versions", "consumer")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    consumer: ConsumerStatus
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ..., consumer: _Optional[_Union[ConsumerStatus, _Mapping]] = ...) -> None: ...

class ConsumerStatus(_message.Message):
    __slots__ = ("consumer_group", "consumer_name", "connected", "predictions_processed", "feedback_processed", "dead_lettered", "duplicates", "lag", "pending")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    consumer_name: str
    connected: bool
    predictions_processed: int
    feedback_processed: int
    dead_lettered: int
    duplicates: int
    lag: int
    pending: int
    def __init__(self, consumer_group: _Optional[str] = ..., consumer_name: _Optional[str] = ..., connected: _Optional[bool] = ..., predictions_processed: _Optional[int] = ..., feedback_processed: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., duplicates: _Optional[int] = ..., lag: _Optional[int] = ..., pending: _Optional[int] = ...) -> None: ...

class FeatureDrift(_message.Message):
    __slots__ = ("feature", "metric", "value", "threshold", "drifted")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    feature: str
    metric: str
    value: float
    threshold: float
    drifted: bool
    def __init__(self, feature: _Optional[str] = ..., metric: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., drifted: _Optional[bool] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("sequence", "events", "events_with_text", "start_time", "end_time", "drift", "decided", "drifted", "note")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_WITH_TEXT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    events: int
    events_with_text: int
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    drift: _containers.RepeatedCompositeFieldContainer[FeatureDrift]
    decided: bool
    drifted: bool
    note: str
    def __init__(self, sequence: _Optional[int] = ..., events: _Optional[int] = ..., events_with_text: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., drift: _Optional[_Iterable[_Union[FeatureDrift, _Mapping]]] = ..., decided: _Optional[bool] = ..., drifted: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...

class LiveQuality(_message.Message):
    __slots__ = ("labeled", "accuracy", "f1", "window", "labeled_total", "accuracy_total")
    LABELED_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    LABELED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    labeled: int
    accuracy: float
    f1: float
    window: int
    labeled_total: int
    accuracy_total: float
    def __init__(self, labeled: _Optional[int] = ..., accuracy: _Optional[float] = ..., f1: _Optional[float] = ..., window: _Optional[int] = ..., labeled_total: _Optional[int] = ..., accuracy_total: _Optional[float] = ...) -> None: ...

class Trigger(_message.Message):
    __slots__ = ("trigger_id", "time", "outcome", "task_id", "windows", "detail")
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    trigger_id: str
    time: _timestamp_pb2.Timestamp
    outcome: str
    task_id: str
    windows: int
    detail: str
    def __init__(self, trigger_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[str] = ..., task_id: _Optional[str] = ..., windows: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class VersionStatus(_message.Message):
    __slots__ = ("model", "version", "events_processed", "events_with_text", "duplicates_skipped", "window_events", "window_slide_events", "current_window_events", "last_window", "consecutive_drifted_windows", "drift_detected", "live", "last_trigger", "features", "coverage", "reference_loaded", "last_event_time", "lag_seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_WITH_TEXT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_EVENTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SLIDE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_WINDOW_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_WINDOW_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_DRIFTED_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_DETECTED_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_TRIGGER_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_LOADED_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    events_processed: int
    events_with_text: int
    duplicates_skipped: int
    window_events: int
    window_slide_events: int
    current_window_events: int
    last_window: Window
    consecutive_drifted_windows: int
    drift_detected: bool
    live: LiveQuality
    last_trigger: Trigger
    features: _containers.RepeatedScalarFieldContainer[str]
    coverage: str
    reference_loaded: bool
    last_event_time: _timestamp_pb2.Timestamp
    lag_seconds: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., events_processed: _Optional[int] = ..., events_with_text: _Optional[int] = ..., duplicates_skipped: _Optional[int] = ..., window_events: _Optional[int] = ..., window_slide_events: _Optional[int] = ..., current_window_events: _Optional[int] = ..., last_window: _Optional[_Union[Window, _Mapping]] = ..., consecutive_drifted_windows: _Optional[int] = ..., drift_detected: _Optional[bool] = ..., live: _Optional[_Union[LiveQuality, _Mapping]] = ..., last_trigger: _Optional[_Union[Trigger, _Mapping]] = ..., features: _Optional[_Iterable[str]] = ..., coverage: _Optional[str] = ..., reference_loaded: _Optional[bool] = ..., last_event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lag_seconds: _Optional[float] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("model", "version", "format", "include_content")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CONTENT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    format: str
    include_content: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., format: _Optional[str] = ..., include_content: _Optional[bool] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("model", "version", "format", "run_id", "artifact_path", "artifact_uri", "size_bytes", "created_at", "current_rows", "reference_rows", "window_sequence", "content")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PATH_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROWS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ROWS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    format: str
    run_id: str
    artifact_path: str
    artifact_uri: str
    size_bytes: int
    created_at: _timestamp_pb2.Timestamp
    current_rows: int
    reference_rows: int
    window_sequence: int
    content: bytes
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., format: _Optional[str] = ..., run_id: _Optional[str] = ..., artifact_path: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., current_rows: _Optional[int] = ..., reference_rows: _Optional[int] = ..., window_sequence: _Optional[int] = ..., content: _Optional[bytes] = ...) -> None: ...
