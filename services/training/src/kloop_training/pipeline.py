"""A training run as plain steps: validate -> dataset -> split -> fit -> evaluate ->
export + parity -> reference profile -> MLflow run -> registered version.

No gRPC, Redis or MLflow here: tracking and registration arrive as the `Tracker` and
`Registrar` protocols, progress leaves through a `Reporter` callback. Errors raised for
bad input are `kloop_core.errors` classes, so the gRPC edge maps them to status codes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from kloop_core.errors import (
    FailedPrecondition,
    InvalidArgument,
    KloopError,
    PayloadTooLarge,
    PermissionDenied,
)
from kloop_core.logging import get_logger
from kloop_model.classifier import SentimentClassifier
from kloop_model.classifier import TrainingParams as ModelParams
from kloop_model.dataset import (
    Dataset,
    DatasetError,
    builtin_dataset,
    dataset_digest,
    generate_texts,
    load_dataset,
    stratified_split,
)
from kloop_model.metrics import evaluate
from kloop_model.onnx_export import export_onnx, parity, signature
from kloop_model.profile import build_reference_profile

log = get_logger(__name__)

# Same alphabet and length as the registry accepts for model names.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# MLflow's tag-key alphabet; kloop.* and mlflow.* keys are written by the platform.
TAG_KEY_RE = re.compile(r"[A-Za-z0-9_.\-/ ]{1,250}")
RESERVED_TAG_PREFIXES = ("kloop.", "mlflow.")
MAX_TAG_VALUE_CHARS = 5000
MAX_TAGS = 50

ARTIFACT_PATH = "model"
BUILTIN_SOURCE = "kloop:builtin"

# Where each stage starts on the 0..1 progress scale (fit and parity dominate).
STAGE_PROGRESS: dict[str, float] = {
    "dataset": 0.0,
    "split": 0.05,
    "fit": 0.1,
    "evaluate": 0.45,
    "export": 0.5,
    "profile": 0.75,
    "track": 0.8,
    "register": 0.9,
}


# --- what a run is ----------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetRef:
    """The submitted dataset: a file path or file:// URI, or "" for the built-in one."""

    uri: str = ""
    format: str = ""

    @property
    def builtin(self) -> bool:
        return not self.uri


@dataclass(frozen=True)
class RunParams:
    seed: int
    test_fraction: float
    learning_rate: float
    epochs: int
    l2: float
    max_vocab: int
    min_count: int

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)

    def model_params(self) -> ModelParams:
        return ModelParams(
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            l2=self.l2,
            max_vocab=self.max_vocab,
            min_count=self.min_count,
            seed=self.seed,
        )


@dataclass(frozen=True)
class RunSpec:
    model_name: str
    dataset: DatasetRef
    params: RunParams
    tags: Mapping[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Identifies the request, to tell a retry from an idempotency key reused for
        something else."""
        doc = {
            "model_name": self.model_name,
            "dataset": asdict(self.dataset),
            "params": self.params.as_dict(),
            "tags": dict(self.tags),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class DatasetInfo:
    """What the tracker logs as the run's input."""

    name: str
    source_uri: str
    digest: str
    num_rows: int
    num_positive: int


# --- validation (synchronous, at submit time) --------------------------------------------

# (name, minimum, maximum, zero means default) per parameter.
_PARAM_RANGES: dict[str, tuple[float, float, bool]] = {
    "seed": (0, 2**63 - 1, False),
    "test_fraction": (0.01, 0.9, True),
    "learning_rate": (1e-6, 100.0, True),
    "epochs": (1, 100_000, True),
    "l2": (0.0, 100.0, False),
    "max_vocab": (1, 1_000_000, True),
    "min_count": (1, 1_000_000, True),
}


def check_model_name(name: str) -> str:
    if not name:
        raise InvalidArgument("model_name is required")
    if not MODEL_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid model_name {name!r}: start with a letter or digit, then letters, "
            "digits, '.', '_' or '-' (at most 128 characters)"
        )
    return name


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise InvalidArgument(f"at most {MAX_TAGS} tags, got {len(tags)}")
    for key, value in tags.items():
        if not TAG_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"invalid tag key {key!r}: 1-250 letters, digits, '_', '-', '.', '/' or spaces"
            )
        if key.startswith(RESERVED_TAG_PREFIXES):
            raise InvalidArgument(f"tag key {key!r} uses a reserved prefix (kloop., mlflow.)")
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise InvalidArgument(f"tag {key!r} is longer than {MAX_TAG_VALUE_CHARS} characters")
    return dict(tags)


def resolve_params(given: Mapping[str, float | int], defaults: RunParams) -> RunParams:
    """Fill unset parameters from `defaults` and check every value's range.

    `given` holds only the parameters the caller set; a zero counts as unset where zero
    is not a valid value (the proto's old "zero means default" convention).
    """
    values = defaults.as_dict()
    for name, value in given.items():
        low, high, zero_is_default = _PARAM_RANGES[name]
        if value == 0 and zero_is_default:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"{name} must be a finite number, got {value}")
        if not low <= value <= high:
            raise InvalidArgument(f"{name} must be between {low:g} and {high:g}, got {value:g}")
        values[name] = value
    return RunParams(**values)  # type: ignore[arg-type]


def _dataset_path(uri: str, roots: list[str]) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidArgument(f"file URI {uri!r} names a remote host; only local files")
        raw = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # "C:" style drive letters are paths
        raise InvalidArgument(
            f"unsupported dataset URI scheme {parsed.scheme!r}: use a local path or file:// URI"
        )
    else:
        raw = uri
    path = Path(raw)
    if not path.is_absolute():
        raise InvalidArgument(f"dataset path {raw!r} must be absolute")
    if roots:
        # Symlinks and '..' are resolved first: the real file must be under a root.
        real = path.resolve()
        if not any(real.is_relative_to(Path(root).resolve()) for root in roots):
            raise PermissionDenied(f"dataset path {raw!r} is outside the allowed dataset roots")
    return path


def load_run_dataset(ref: DatasetRef, *, roots: list[str], max_bytes: int) -> Dataset:
    """The dataset a run trains on, fully validated. Raises InvalidArgument (bad content,
    format or URI), PayloadTooLarge, FailedPrecondition (no such file) or PermissionDenied
    (outside `roots`); messages name the file, the row and the problem."""
    if ref.builtin:
        return builtin_dataset()
    if ref.format not in ("", "csv", "jsonl"):
        raise InvalidArgument(f"unknown dataset format {ref.format!r}: use csv, jsonl or ''")
    path = _dataset_path(ref.uri, roots)
    try:
        return load_dataset(path, ref.format or None, max_bytes=max_bytes)
    except DatasetError as e:
        error: type[KloopError] = {
            "not_found": FailedPrecondition,
            "too_large": PayloadTooLarge,
        }.get(e.kind, InvalidArgument)
        raise error(f"dataset {e}", details={"kind": e.kind, "row": e.row}) from e


def split_dataset(dataset: Dataset, params: RunParams) -> tuple[Dataset, Dataset]:
    """Seeded stratified (train, holdout); FailedPrecondition if either side would lack
    a class (too few rows to train and evaluate)."""
    train, holdout = stratified_split(dataset, params.test_fraction, params.seed)
    for side, part in (("training", train), ("holdout", holdout)):
        if part.positive_count == 0 or part.negative_count == 0:
            raise FailedPrecondition(
                f"dataset too small: the {side} split of {len(dataset)} rows "
                f"({dataset.positive_count} positive, {dataset.negative_count} negative) at "
                f"test_fraction {params.test_fraction:g} lacks a class; each class needs "
                "at least 2 rows"
            )
    return train, holdout


def dataset_info(ref: DatasetRef, dataset: Dataset, digest: str) -> DatasetInfo:
    if ref.builtin:
        name, source = "builtin", BUILTIN_SOURCE
    else:
        parsed = urlparse(ref.uri)
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else ref.uri)
        name, source = path.stem or "dataset", path.as_uri()
    return DatasetInfo(name, source, digest, len(dataset), dataset.positive_count)


# --- the compute steps ---------------------------------------------------------------------


class StepError(RuntimeError):
    """A step failed for a reason its message explains in full (no traceback needed)."""


class ParityError(StepError):
    """The ONNX graph does not reproduce the NumPy model."""


def fit(train: Dataset, params: RunParams) -> SentimentClassifier:
    return SentimentClassifier(params=params.model_params()).fit(train.texts, train.labels)


def evaluate_holdout(model: SentimentClassifier, holdout: Dataset) -> dict[str, float]:
    """accuracy, precision, recall, f1, roc_auc, log_loss on the held-out split."""
    return evaluate(holdout.labels, model.predict_proba(holdout.texts))


def export_checked(
    model: SentimentClassifier,
    *,
    model_name: str,
    parity_texts: list[str],
    tolerance: float,
) -> tuple[bytes, float]:
    """The ONNX graph's bytes and its max |P_onnx - P_numpy| over `parity_texts`;
    ParityError above `tolerance`."""
    onnx_bytes = export_onnx(model, model_name=model_name).SerializeToString()
    worst = parity(model, onnx_bytes, parity_texts)
    if not worst <= tolerance:  # also catches NaN
        raise ParityError(
            f"ONNX parity check failed: max |P_onnx - P_numpy| = {worst:.3g} over "
            f"{len(parity_texts)} texts exceeds {tolerance:g}"
        )
    return onnx_bytes, worst


def holdout_jsonl(holdout: Dataset) -> bytes:
    """The holdout as JSON lines {"text", "label"}; ASCII-escaped so that no line
    separator hides inside a text (the registry re-scores this file)."""
    return "".join(
        json.dumps({"text": ex.text, "label": ex.label}, ensure_ascii=True) + "\n" for ex in holdout
    ).encode("ascii")


@dataclass(frozen=True)
class Trained:
    """Everything the compute steps produce, ready to log and register."""

    model: SentimentClassifier
    holdout: Dataset
    metrics: dict[str, float]
    onnx_bytes: bytes
    profile: dict[str, Any]
    train_rows: int

    @property
    def onnx_sha256(self) -> str:
        return hashlib.sha256(self.onnx_bytes).hexdigest()

    @property
    def holdout_bytes(self) -> bytes:
        return holdout_jsonl(self.holdout)

    def write_artifacts(self, directory: Path) -> None:
        """model.onnx, model.json, reference_profile.json, signature.json, holdout.jsonl."""
        (directory / "model.onnx").write_bytes(self.onnx_bytes)
        self.model.save(directory / "model.json")
        (directory / "reference_profile.json").write_text(json.dumps(self.profile, indent=2))
        (directory / "signature.json").write_text(json.dumps(signature(self.onnx_bytes), indent=2))
        (directory / "holdout.jsonl").write_bytes(self.holdout_bytes)


# --- the run ------------------------------------------------------------------------------


class Reporter(Protocol):
    def __call__(self, stage: str, message: str, /, *, mlflow_run_id: str = "") -> None: ...


class Tracker(Protocol):
    def start_run(self, experiment: str, run_name: str, tags: Mapping[str, str]) -> str: ...

    def log_run(
        self,
        run_id: str,
        *,
        params: Mapping[str, str | int | float],
        metrics: Mapping[str, float],
        dataset: DatasetInfo,
    ) -> None: ...

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None: ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def end_run(self, run_id: str, status: str) -> None: ...


@dataclass(frozen=True)
class VersionRequest:
    name: str
    mlflow_run_id: str
    artifact_path: str
    sha256: str
    size_bytes: int
    dataset_digest: str
    tags: Mapping[str, str]


class Registrar(Protocol):
    def register_version(self, request: VersionRequest) -> str:
        """Register the run's artifacts as a new model version; returns the version."""
        ...


class RunInterrupted(Exception):
    """The service is shutting down; the run stops between two steps."""


@dataclass(frozen=True)
class PipelineConfig:
    experiment_prefix: str
    dataset_roots: list[str]
    max_dataset_bytes: int
    parity_texts: int
    parity_tolerance: float


@dataclass(frozen=True)
class RunResult:
    mlflow_run_id: str
    model_version: str
    dataset_digest: str
    metrics: dict[str, float]


def train(
    spec: RunSpec,
    dataset: Dataset,
    *,
    parity_texts: int,
    parity_tolerance: float,
    step: Callable[[str, str], None] = lambda stage, message: None,
) -> Trained:
    """The compute steps, on a loaded dataset: split, fit, evaluate, export + parity,
    reference profile. `step(stage, message)` is called as each one begins."""
    step("split", f"stratified split, test_fraction {spec.params.test_fraction:g}")
    train_set, holdout = split_dataset(dataset, spec.params)
    step("fit", f"fitting on {len(train_set)} rows, {spec.params.epochs} epochs")
    model = fit(train_set, spec.params)
    step("evaluate", f"evaluating on {len(holdout)} held-out rows")
    metrics = evaluate_holdout(model, holdout)
    step("export", f"ONNX export and parity check over {parity_texts} texts")
    # Generated texts stress the tokenizer; the holdout adds the real vocabulary.
    texts = generate_texts(parity_texts, spec.params.seed) + holdout.texts
    onnx_bytes, worst = export_checked(
        model, model_name=spec.model_name, parity_texts=texts, tolerance=parity_tolerance
    )
    metrics["onnx_parity_max_abs_diff"] = worst
    metrics["vocab_size"] = float(model.vocab_size)
    if model.loss_history:
        metrics["train_loss"] = model.loss_history[-1]
    step("profile", "building the drift reference profile on the holdout")
    profile = build_reference_profile(model, holdout.texts, model.predict_proba(holdout.texts))
    return Trained(model, holdout, metrics, onnx_bytes, profile, len(train_set))


def run_pipeline(
    run_id: str,
    spec: RunSpec,
    *,
    expected_digest: str,
    config: PipelineConfig,
    tracker: Tracker,
    registrar: Registrar,
    report: Reporter,
    should_stop: Callable[[], bool] = lambda: False,
) -> RunResult:
    """One whole run. Raises on any failure; an MLflow run it started is ended FAILED
    (or KILLED when interrupted) before the error propagates."""

    def step(stage: str, message: str) -> None:
        if should_stop():
            raise RunInterrupted(f"interrupted before {stage}")
        log.info("run step", run_id=run_id, stage=stage)
        report(stage, message)

    step("dataset", "loading and hashing the dataset")
    dataset = load_run_dataset(
        spec.dataset, roots=config.dataset_roots, max_bytes=config.max_dataset_bytes
    )
    digest = dataset_digest(dataset)
    if expected_digest and digest != expected_digest:
        raise FailedPrecondition(
            f"dataset changed since the run was submitted: content hash is now "
            f"{digest[:12]}, was {expected_digest[:12]}"
        )
    trained = train(
        spec,
        dataset,
        parity_texts=config.parity_texts,
        parity_tolerance=config.parity_tolerance,
        step=step,
    )

    step("track", "logging the run to MLflow")
    info = dataset_info(spec.dataset, dataset, digest)
    holdout_digest = hashlib.sha256(trained.holdout_bytes).hexdigest()
    kloop_tags = {
        "kloop.run_id": run_id,
        "kloop.dataset_digest": digest,
        "kloop.holdout_digest": holdout_digest,
    }
    mlflow_run_id = tracker.start_run(
        f"{config.experiment_prefix}/{spec.model_name}",
        run_name=f"{spec.model_name}-{run_id[:8]}",
        tags={**spec.tags, **kloop_tags},
    )
    report("track", f"MLflow run {mlflow_run_id} started", mlflow_run_id=mlflow_run_id)
    try:
        tracker.log_run(
            mlflow_run_id,
            params={
                **spec.params.as_dict(),
                "dataset_source": info.source_uri,
                "dataset_rows": len(dataset),
                "train_rows": trained.train_rows,
                "holdout_rows": len(trained.holdout),
            },
            metrics=trained.metrics,
            dataset=info,
        )
        with tempfile.TemporaryDirectory(prefix="kloop-run-") as tmp:
            trained.write_artifacts(Path(tmp))
            tracker.log_artifacts(mlflow_run_id, Path(tmp), ARTIFACT_PATH)

        step("register", f"registering a new version of {spec.model_name}")
        version = registrar.register_version(
            VersionRequest(
                name=spec.model_name,
                mlflow_run_id=mlflow_run_id,
                artifact_path=ARTIFACT_PATH,
                sha256=trained.onnx_sha256,
                size_bytes=len(trained.onnx_bytes),
                dataset_digest=digest,
                tags={**spec.tags, **kloop_tags},
            )
        )
        tracker.set_tags(mlflow_run_id, {"kloop.model_version": version})
        tracker.end_run(mlflow_run_id, "FINISHED")
    except BaseException as e:
        _end_quietly(
            tracker, mlflow_run_id, "KILLED" if isinstance(e, RunInterrupted) else "FAILED"
        )
        raise
    return RunResult(mlflow_run_id, version, digest, trained.metrics)


def _end_quietly(tracker: Tracker, mlflow_run_id: str, status: str) -> None:
    # Best effort: MLflow being down is often why we are here; the original error matters.
    try:
        tracker.end_run(mlflow_run_id, status)
    except Exception as e:
        log.warning("could not end MLflow run", mlflow_run_id=mlflow_run_id, error=str(e))
