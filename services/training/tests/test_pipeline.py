"""The pipeline's pure steps, and one whole run against the real MLflow server."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow import MlflowClient

from kloop_core.errors import (
    FailedPrecondition,
    InvalidArgument,
    PayloadTooLarge,
    PermissionDenied,
)
from kloop_model.dataset import Dataset, builtin_dataset, dataset_digest, generate_dataset
from kloop_training.pipeline import (
    STAGE_PROGRESS,
    DatasetRef,
    ParityError,
    PipelineConfig,
    RunParams,
    RunSpec,
    check_model_name,
    check_tags,
    export_checked,
    fit,
    holdout_jsonl,
    load_run_dataset,
    resolve_params,
    run_pipeline,
    split_dataset,
    train,
)
from kloop_training.tracking import MlflowTracker

if TYPE_CHECKING:
    from conftest import RecordingRegistrar

ARTIFACTS = {
    "model.onnx",
    "model.json",
    "reference_profile.json",
    "signature.json",
    "holdout.jsonl",
}


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sentiment", "a", "Model_1.2-x", "9lives", "x" * 128])
def test_valid_model_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "has space", "a/b", "x" * 129, "é"])
def test_invalid_model_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="model_name"):
        check_model_name(name)


def test_unset_params_take_the_defaults(default_params: RunParams) -> None:
    assert resolve_params({}, default_params) == default_params


def test_zero_means_default_only_where_zero_is_invalid(default_params: RunParams) -> None:
    zeros = {name: 0 for name in default_params.as_dict()}
    resolved = resolve_params(zeros, default_params)
    # l2 = 0 (no regularisation) and seed = 0 are real choices; the rest fall back.
    assert resolved.l2 == 0.0
    assert resolved.seed == 0
    assert resolved.epochs == default_params.epochs
    assert resolved.learning_rate == default_params.learning_rate
    assert resolved.test_fraction == default_params.test_fraction


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("test_fraction", 0.95),
        ("test_fraction", -0.1),
        ("learning_rate", -1.0),
        ("learning_rate", math.inf),
        ("learning_rate", math.nan),
        ("epochs", -3),
        ("epochs", 1_000_000),
        ("l2", -0.5),
        ("max_vocab", -1),
        ("min_count", -2),
        ("seed", -1),
    ],
)
def test_out_of_range_params_are_rejected(
    default_params: RunParams, name: str, value: float
) -> None:
    with pytest.raises(InvalidArgument, match=name):
        resolve_params({name: value}, default_params)


@given(
    epochs=st.integers(1, 100_000),
    l2=st.floats(0, 100),
    test_fraction=st.floats(0.01, 0.9),
    seed=st.integers(0, 2**63 - 1),
)
def test_in_range_params_pass_through(
    epochs: int, l2: float, test_fraction: float, seed: int
) -> None:
    defaults = RunParams(42, 0.2, 0.5, 200, 1e-3, 5000, 1)
    given_params = {"epochs": epochs, "l2": l2, "test_fraction": test_fraction, "seed": seed}
    resolved = resolve_params(given_params, defaults)
    for name, value in given_params.items():
        if value or name in ("l2", "seed"):
            assert getattr(resolved, name) == value


def test_reserved_and_malformed_tags_are_rejected() -> None:
    assert check_tags({"team": "nlp", "ticket id": "ML-1"}) == {"team": "nlp", "ticket id": "ML-1"}
    with pytest.raises(InvalidArgument, match="reserved"):
        check_tags({"kloop.run_id": "x"})
    with pytest.raises(InvalidArgument, match="reserved"):
        check_tags({"mlflow.user": "x"})
    with pytest.raises(InvalidArgument, match="invalid tag key"):
        check_tags({"bad\nkey": "x"})
    with pytest.raises(InvalidArgument, match="longer than"):
        check_tags({"k": "v" * 5001})


def test_fingerprint_tells_requests_apart(builtin_spec: RunSpec) -> None:
    same = RunSpec(
        builtin_spec.model_name, DatasetRef(), builtin_spec.params, dict(builtin_spec.tags)
    )
    other = RunSpec(builtin_spec.model_name, DatasetRef(uri="/x.csv"), builtin_spec.params)
    assert same.fingerprint() == builtin_spec.fingerprint()
    assert other.fingerprint() != builtin_spec.fingerprint()


# --- datasets -------------------------------------------------------------------------


def _load(path: Path | str, fmt: str = "", **kwargs: object) -> Dataset:
    options = {"roots": [], "max_bytes": 1024 * 1024, **kwargs}
    return load_run_dataset(DatasetRef(uri=str(path), format=fmt), **options)  # type: ignore[arg-type]


def test_builtin_dataset_needs_no_file() -> None:
    assert load_run_dataset(DatasetRef(), roots=["/nowhere"], max_bytes=1) == builtin_dataset()


def test_csv_jsonl_and_file_uris_load_the_same_rows(write_file: Callable[..., Path]) -> None:
    csv_path = write_file("d.csv", "text,label\ngood stuff,1\nbad stuff,0\n")
    jsonl_path = write_file(
        "d.data", '{"text": "good stuff", "label": 1}\n{"text": "bad stuff", "label": 0}\n'
    )
    from_csv = _load(csv_path)
    assert from_csv.texts == ["good stuff", "bad stuff"]
    assert _load(jsonl_path, "jsonl") == from_csv
    assert _load(csv_path.as_uri()) == from_csv
    assert dataset_digest(_load(jsonl_path, "jsonl")) == dataset_digest(from_csv)


# (file name, content, what the message must say besides the path) -> InvalidArgument
BAD_DATASETS = [
    ("missing.csv", "words,label\nhi,1\n", ["missing column", "'text'", "row 1"]),
    ("label.csv", "text,label\ngood,1\nbad,2\n", ["row 3", "not binary"]),
    ("empty.csv", "", ["file is empty"]),
    ("utf8.csv", b"text,label\ngood,1\n\xff\xfe bad,0\n", ["invalid UTF-8", "row 3"]),
    ("json.jsonl", '{"text": "a", "label": 1}\n{"text": \n', ["row 2", "malformed JSON"]),
    ("one.csv", "text,label\ngood,1\ngreat,1\n", ["both classes"]),
    ("blank.jsonl", '{"text": "  ", "label": 1}\n', ["row 1", "text is empty"]),
    ("data.txt", "text,label\n", ["cannot infer the format"]),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_DATASETS)
def test_bad_datasets_name_the_problem_and_row(
    write_file: Callable[..., Path], name: str, content: str | bytes, expected: list[str]
) -> None:
    path = write_file(name, content)
    with pytest.raises(InvalidArgument) as caught:
        _load(path)
    assert type(caught.value) is InvalidArgument
    for part in [str(path), *expected]:
        assert part in caught.value.message


def test_oversized_file_is_rejected_before_reading(write_file: Callable[..., Path]) -> None:
    path = write_file("big.csv", "text,label\n" + "good,1\nbad,0\n" * 100)
    with pytest.raises(PayloadTooLarge, match="over the limit of 100 bytes"):
        _load(path, max_bytes=100)


def test_missing_file_is_a_failed_precondition(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="no such file"):
        _load(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("relative/data.csv", "must be absolute"),
        ("http://example.com/data.csv", "unsupported dataset URI scheme 'http'"),
        ("s3://bucket/data.csv", "unsupported dataset URI scheme 's3'"),
        ("file://otherhost/data.csv", "remote host"),
    ],
)
def test_unsupported_locations(uri: str, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected):
        _load(uri)


def test_unknown_format_is_rejected(write_file: Callable[..., Path]) -> None:
    path = write_file("d.csv", "text,label\ngood,1\nbad,0\n")
    with pytest.raises(InvalidArgument, match="unknown dataset format 'parquet'"):
        _load(path, "parquet")


def test_dataset_roots_confine_paths_even_through_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    content = "text,label\ngood,1\nbad,0\n"
    (root / "ok.csv").write_text(content)
    (outside / "secret.csv").write_text(content)
    (root / "link.csv").symlink_to(outside / "secret.csv")
    assert len(_load(root / "ok.csv", roots=[str(root)])) == 2
    for path in (outside / "secret.csv", root / "link.csv", root / ".." / "outside" / "secret.csv"):
        with pytest.raises(PermissionDenied, match="outside the allowed dataset roots"):
            _load(path, roots=[str(root)])


def test_a_dataset_too_small_to_split_is_refused(default_params: RunParams) -> None:
    tiny = Dataset(["good", "great", "bad"], [1, 1, 0])  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition, match="dataset too small"):
        split_dataset(tiny, default_params)


def test_split_is_seeded_and_stratified(default_params: RunParams) -> None:
    dataset = generate_dataset(500, seed=1)
    train_a, holdout_a = split_dataset(dataset, default_params)
    train_b, holdout_b = split_dataset(dataset, default_params)
    assert (train_a, holdout_a) == (train_b, holdout_b)
    assert len(holdout_a) == pytest.approx(100, abs=2)
    share = dataset.positive_count / len(dataset)
    assert holdout_a.positive_count / len(holdout_a) == pytest.approx(share, abs=0.02)


# --- compute steps ----------------------------------------------------------------------


def test_train_runs_every_step_in_order(builtin_spec: RunSpec) -> None:
    stages: list[str] = []
    trained = train(
        builtin_spec,
        builtin_dataset(),
        parity_texts=2000,
        parity_tolerance=1e-5,
        step=lambda stage, _message: stages.append(stage),
    )
    assert stages == ["split", "fit", "evaluate", "export", "profile"]
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"):
        assert 0.0 <= trained.metrics[name] < math.inf
    assert trained.metrics["onnx_parity_max_abs_diff"] <= 1e-5
    assert trained.metrics["vocab_size"] == trained.model.vocab_size
    assert trained.train_rows + len(trained.holdout) == len(builtin_dataset())
    assert trained.profile["sample_count"] == len(trained.holdout)


def test_training_is_deterministic(builtin_spec: RunSpec) -> None:
    runs = [
        train(builtin_spec, builtin_dataset(), parity_texts=10, parity_tolerance=1e-5) for _ in "ab"
    ]
    assert runs[0].onnx_sha256 == runs[1].onnx_sha256
    assert runs[0].metrics == runs[1].metrics


def test_parity_failure_is_reported_with_the_difference(default_params: RunParams) -> None:
    model = fit(builtin_dataset(), default_params)
    with pytest.raises(ParityError, match=r"max \|P_onnx - P_numpy\| = .* exceeds 1e-15"):
        export_checked(model, model_name="m", parity_texts=builtin_dataset().texts, tolerance=1e-15)


def test_holdout_jsonl_is_ascii_one_row_per_line() -> None:
    texts = ["line\u2028separator", "café 😀", 'quote " and \n newline']
    holdout = Dataset(texts, [1, 0, 1])  # type: ignore[arg-type]
    content = holdout_jsonl(holdout)
    lines = content.decode("ascii").splitlines()  # what the registry's parser does
    assert [json.loads(line) for line in lines] == [
        {"text": t, "label": y} for t, y in zip(texts, [1, 0, 1], strict=True)
    ]


def test_write_artifacts_writes_the_five_files(builtin_spec: RunSpec, tmp_path: Path) -> None:
    trained = train(builtin_spec, builtin_dataset(), parity_texts=10, parity_tolerance=1e-5)
    trained.write_artifacts(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == ARTIFACTS
    assert hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest() == trained.onnx_sha256
    signature = json.loads((tmp_path / "signature.json").read_text())
    assert signature["inputs"][0]["name"] == "text"


# --- a whole run, against the real MLflow server -------------------------------------------


def test_run_pipeline_logs_and_registers(
    builtin_spec: RunSpec,
    tracker: MlflowTracker,
    pipeline_config: PipelineConfig,
    mlflow_uri: str,
    make_registrar: type[RecordingRegistrar],
) -> None:
    registrar = make_registrar()
    reported: list[tuple[str, str]] = []

    def report(stage: str, message: str, *, mlflow_run_id: str = "") -> None:
        reported.append((stage, mlflow_run_id))

    result = run_pipeline(
        "run-1",
        builtin_spec,
        expected_digest=dataset_digest(builtin_dataset()),
        config=pipeline_config,
        tracker=tracker,
        registrar=registrar,
        report=report,
    )
    stages = [stage for stage, _ in reported]
    assert sorted(set(stages), key=stages.index) == list(STAGE_PROGRESS)
    assert ("track", result.mlflow_run_id) in reported
    assert result.model_version == "7"
    (request,) = registrar.requests
    assert request.mlflow_run_id == result.mlflow_run_id
    assert request.artifact_path == "model"
    assert request.tags["kloop.run_id"] == "run-1"
    assert request.tags["team"] == "tests"
    run = MlflowClient(mlflow_uri).get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["kloop.model_version"] == "7"


def test_a_failed_registration_fails_the_mlflow_run(
    builtin_spec: RunSpec,
    tracker: MlflowTracker,
    pipeline_config: PipelineConfig,
    mlflow_uri: str,
    make_registrar: type[RecordingRegistrar],
) -> None:
    started: list[str] = []

    def report(stage: str, message: str, *, mlflow_run_id: str = "") -> None:
        if mlflow_run_id:
            started.append(mlflow_run_id)

    with pytest.raises(RuntimeError, match="registry down"):
        run_pipeline(
            "run-2",
            builtin_spec,
            expected_digest="",
            config=pipeline_config,
            tracker=tracker,
            registrar=make_registrar(fail_with=RuntimeError("registry down")),
            report=report,
        )
    assert MlflowClient(mlflow_uri).get_run(started[0]).info.status == "FAILED"


def test_a_dataset_changed_since_submission_fails(
    builtin_spec: RunSpec,
    tracker: MlflowTracker,
    pipeline_config: PipelineConfig,
    make_registrar: type[RecordingRegistrar],
) -> None:
    with pytest.raises(FailedPrecondition, match="dataset changed since the run was submitted"):
        run_pipeline(
            "run-3",
            builtin_spec,
            expected_digest="0" * 64,
            config=pipeline_config,
            tracker=tracker,
            registrar=make_registrar(),
            report=lambda stage, message, **_: None,
        )
