"""Benchmark the sentiment model: training time, and NumPy vs ONNX (onnxruntime) latency.

Run: ``uv run --no-sync python benchmarks/bench_model.py [--quick]``. Prints figures only;
no assertions. ``--quick`` uses 10k texts and fewer repetitions.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import onnxruntime as ort

from kloop_model.classifier import SentimentClassifier, TrainingParams
from kloop_model.dataset import (
    builtin_dataset,
    generate_dataset,
    generate_texts,
    shifted_dataset,
)
from kloop_model.metrics import accuracy
from kloop_model.onnx_export import create_session, export_onnx, parity, predict_onnx
from kloop_model.text import tokenize_many


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def latency(
    action: Callable[[], object], repetitions: int, warmup: int = 20
) -> tuple[float, float]:
    """(median, p99) in milliseconds."""
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(repetitions):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), float(np.percentile(samples, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k texts, fewer repetitions")
    args = parser.parse_args()
    n_large = 10_000 if args.quick else 100_000
    repetitions = {1: 300 if args.quick else 2000, 1000: 30 if args.quick else 200}

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"onnxruntime {ort.__version__}, {os.cpu_count()} CPUs"
    )

    print("\n== training (defaults: lr 0.5, 200 epochs, l2 1e-3, max_vocab 5000) ==")
    builtin = builtin_dataset()
    times = [
        seconds(lambda: SentimentClassifier().fit(builtin.texts, builtin.labels)) for _ in range(5)
    ]
    print(f"builtin (50 texts):         median {statistics.median(times) * 1e3:8.1f} ms of 5 fits")

    generation = time.perf_counter()
    large = generate_dataset(n_large, seed=1)
    generation = time.perf_counter() - generation
    tokens = sum(len(t) for t in tokenize_many(large.texts))
    model = SentimentClassifier(TrainingParams())
    fit_time = seconds(lambda: model.fit(large.texts, large.labels))
    holdout = generate_dataset(5_000, seed=2)
    holdout_accuracy = accuracy(holdout.labels, model.predict(holdout.texts))
    print(
        f"generated ({n_large:,} texts, {tokens:,} tokens): fit {fit_time:6.2f} s "
        f"(generation {generation:.2f} s), vocab {model.vocab_size}, "
        f"holdout accuracy {holdout_accuracy:.4f}"
    )
    one_epoch = SentimentClassifier(TrainingParams(epochs=1))
    print(
        f"  of which tokenize+vocab+encode (1-epoch fit): "
        f"{seconds(lambda: one_epoch.fit(large.texts, large.labels)):.2f} s"
    )

    print("\n== export + parity ==")
    onnx_model = export_onnx(model)
    onnx_bytes = onnx_model.SerializeToString()
    parity_texts = generate_texts(10_000, seed=3)
    parity_time = time.perf_counter()
    worst = parity(model, onnx_bytes, parity_texts)
    parity_time = time.perf_counter() - parity_time
    print(
        f"onnx size {len(onnx_bytes) / 1024:.0f} KiB, {len(onnx_model.graph.node)} top-level "
        f"nodes; parity over 10,000 generated texts: max |diff| {worst:.2e} ({parity_time:.2f} s)"
    )

    print("\n== predict latency, ms (median / p99) ==")
    sessions = {
        "onnx 1 thread": create_session(onnx_bytes, intra_op_num_threads=1),
        "onnx default": create_session(onnx_bytes),
    }
    generated = generate_dataset(1000, seed=4).texts  # punctuation-heavy, mixed case
    restaurant = (shifted_dataset().texts * 5)[:1000]  # ordinary review punctuation
    workloads = [
        ("1 generated", generated[:1], repetitions[1]),
        ("1000 generated", generated, repetitions[1000]),
        ("1000 restaurant", restaurant, repetitions[1000]),
    ]
    for label, batch, count in workloads:
        runs: dict[str, Callable[[], object]] = {"numpy": partial(model.predict_proba, batch)}
        for name, session in sessions.items():
            runs[name] = partial(predict_onnx, session, batch)
        for name, run in runs.items():
            median, p99 = latency(run, count)
            print(f"{label:<16} {name:<14} {median:8.3f} / {p99:8.3f}   ({count} runs)")


if __name__ == "__main__":
    main()
