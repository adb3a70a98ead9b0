"""Benchmark a training run, step by step: the built-in dataset and 100k generated texts.

Runs `kloop_training.pipeline.run_pipeline` against a real MLflow server (started in a
temporary directory with `kloop_client.local.start_mlflow`) and times each stage from
the progress reports. Registration is replaced by a stand-in (the registry's own
benchmark covers RegisterVersion). Prints figures only; no assertions.

Run: ``uv run --no-sync python services/training/benchmarks/bench_training.py [--quick]``
(``--quick``: 10k generated texts instead of 100k).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from kloop_client.local import free_port, start_mlflow
from kloop_core.logging import configure_logging
from kloop_model.dataset import Dataset, builtin_dataset, dump_dataset, generate_dataset
from kloop_model.onnx_export import export_onnx
from kloop_training.pipeline import (
    STAGE_PROGRESS,
    DatasetRef,
    PipelineConfig,
    RunParams,
    RunSpec,
    VersionRequest,
    fit,
    run_pipeline,
    split_dataset,
)
from kloop_training.tracking import MlflowTracker, configure_mlflow_client

PARAMS = RunParams(
    seed=42, test_fraction=0.2, learning_rate=0.5, epochs=200, l2=1e-3, max_vocab=5000,
    min_count=1,
)  # fmt: skip


class NoRegistry:
    def register_version(self, request: VersionRequest) -> str:
        return "0"


def time_run(
    name: str, ref: DatasetRef, tracker: MlflowTracker, config: PipelineConfig
) -> dict[str, float]:
    """Seconds per stage of one whole run, plus the total."""
    marks: list[tuple[str, float]] = []

    def report(stage: str, message: str, *, mlflow_run_id: str = "") -> None:
        if not marks or marks[-1][0] != stage:
            marks.append((stage, time.perf_counter()))

    started = time.perf_counter()
    run_pipeline(
        f"bench-{name}",
        RunSpec(f"bench-{name}", ref, PARAMS),
        expected_digest="",
        config=config,
        tracker=tracker,
        registrar=NoRegistry(),
        report=report,
    )
    ended = time.perf_counter()
    ends = [t for _, t in marks[1:]] + [ended]
    times = {stage: end - begin for (stage, begin), end in zip(marks, ends, strict=True)}
    times["total"] = ended - started
    return times


def export_only(dataset: Dataset) -> float:
    """The ONNX graph build alone (the export stage also runs the parity check)."""
    train, _ = split_dataset(dataset, PARAMS)
    model = fit(train, PARAMS)
    started = time.perf_counter()
    export_onnx(model).SerializeToString()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k generated texts, not 100k")
    args = parser.parse_args()
    configure_logging("training-bench", "WARNING", "console")  # figures only on stdout
    n_generated = 10_000 if args.quick else 100_000
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, params {PARAMS}")

    with tempfile.TemporaryDirectory(prefix="kloop-bench-") as tmp:
        state = Path(tmp)
        started = time.perf_counter()
        port = free_port()
        mlflow = start_mlflow(port, state)
        print(f"MLflow server up in {time.perf_counter() - started:.1f} s")
        try:
            configure_mlflow_client(timeout_seconds=30, max_retries=0)
            tracker = MlflowTracker(f"http://127.0.0.1:{port}")
            config = PipelineConfig(
                experiment_prefix="kloop-bench",
                dataset_roots=[],
                max_dataset_bytes=200 * 1024 * 1024,
                parity_texts=10_000,
                parity_tolerance=1e-5,
            )
            generated = generate_dataset(n_generated, seed=7)
            path = state / f"generated-{n_generated}.jsonl"
            path.write_bytes(dump_dataset(generated, "jsonl"))
            cases = {
                "builtin (50 rows)": (DatasetRef(), builtin_dataset()),
                f"generated ({n_generated} rows, JSONL file)": (
                    DatasetRef(uri=str(path)),
                    generated,
                ),
            }
            results = {}
            for label, (ref, dataset) in cases.items():
                times = time_run(label.split()[0], ref, tracker, config)
                times["  of which ONNX build"] = export_only(dataset)
                results[label] = times
        finally:
            mlflow.stop()

    labels = list(results)
    rows = [*STAGE_PROGRESS, "  of which ONNX build", "total"]
    width = max(len(label) for label in labels)
    print(f"\n{'stage':<22}" + "".join(f"{label:>{width + 2}}" for label in labels))
    for row in rows:
        cells = "".join(
            f"{results[label].get(row, float('nan')):>{width + 2}.3f}" for label in labels
        )
        print(f"{row:<22}{cells}")
    print(
        "\nseconds per stage of one run_pipeline call; 'export' = ONNX build + parity over "
        "10,000 generated texts and the holdout; 'track' = MLflow run, params, metrics, "
        "dataset input and the five artifacts; 'register' = a stand-in registrar plus "
        "tagging and ending the MLflow run."
    )


if __name__ == "__main__":
    main()
