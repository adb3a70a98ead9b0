"""Loaded models and the table of what is served.

`load_model` turns ONNX bytes into a warm `LoadedModel` (session, signature, batcher).
`ModelManager` maps (model name, alias or version) to loaded models, swaps an alias to a
new version atomically (requests already running finish on the old one, which is then
drained and dropped) and says when the server is ready. Lookups are plain dict reads:
they run on every request.
"""

from __future__ import annotations

import asyncio
import enum
import statistics
import time
from collections.abc import Callable, KeysView
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from kloop_core.errors import NotFound, Unavailable
from kloop_core.logging import get_logger
from kloop_inference.batching import BatchObserver, DynamicBatcher, Feed
from kloop_inference.settings import DEFAULT_ALIAS, InferenceSettings
from kloop_inference.tensors import (
    DATATYPES,
    InferRequest,
    Tensor,
    TensorError,
    TensorSpec,
    match_inputs,
    select_outputs,
)
from kloop_inference.text_embedding import TEXT_INPUT, TextEncoder, TokenizerError

log = get_logger(__name__)

PLATFORM = "onnxruntime_onnx"

# onnxruntime type strings -> OIP datatypes.
_ORT_DATATYPES = {
    "tensor(string)": "BYTES",
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}
_WARMUP_TEXT = "kloop warm-up request"
_WARMUP_RUNS = 3


class ModelLoadError(Exception):
    """ONNX bytes that onnxruntime cannot serve."""


@dataclass(frozen=True, slots=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batchable(self) -> bool:
        """Every input and output has a variable first dimension: rows can be stacked."""
        return all(
            spec.shape is not None and len(spec.shape) >= 1 and spec.shape[0] == -1
            for spec in (*self.inputs, *self.outputs)
        )


def session_signature(session: ort.InferenceSession) -> ModelSignature:
    def specs(nodes: list[Any], side: str) -> tuple[TensorSpec, ...]:
        result = []
        for node in nodes:
            datatype = _ORT_DATATYPES.get(node.type)
            if datatype is None:
                raise ModelLoadError(f"{side} {node.name!r} has unsupported type {node.type}")
            shape = node.shape
            dims = None if shape is None else tuple(d if isinstance(d, int) else -1 for d in shape)
            result.append(TensorSpec(node.name, datatype, dims))
        return tuple(result)

    return ModelSignature(
        specs(session.get_inputs(), "input"), specs(session.get_outputs(), "output")
    )


def warmup_feed(signature: ModelSignature, rows: int) -> Feed:
    """A request built from the signature: `rows` rows, other variable dimensions 1,
    short text for strings and zeros for numbers."""
    feed: Feed = {}
    for spec in signature.inputs:
        declared = spec.shape if spec.shape is not None else (-1,)
        shape = tuple(
            (rows if index == 0 else 1) if dim == -1 else dim for index, dim in enumerate(declared)
        )
        if spec.datatype == "BYTES":
            feed[spec.name] = np.full(shape, _WARMUP_TEXT, dtype=object)
        else:
            feed[spec.name] = np.zeros(shape, dtype=DATATYPES[spec.datatype])
    return feed


@dataclass(frozen=True, slots=True)
class CostModel:
    """Execution time as fixed + per_row * rows, measured during warm-up."""

    fixed_us: float
    per_row_us: float

    def estimate_us(self, rows: int) -> float:
        return self.fixed_us + self.per_row_us * rows


def _median_run_us(run: Callable[[Feed], object], feed: Feed) -> float:
    timings = []
    for _ in range(_WARMUP_RUNS):
        started = time.perf_counter()
        run(feed)
        timings.append((time.perf_counter() - started) * 1e6)
    return statistics.median(timings)


def warm_up(run: Callable[[Feed], object], signature: ModelSignature, probe_rows: int) -> CostModel:
    """Run requests built from the (served) signature through `run`, the whole path a
    request takes (the first runs of a session allocate and are slow), and time them."""
    one_row = _median_run_us(run, warmup_feed(signature, 1))
    if not signature.batchable or probe_rows <= 1:
        return CostModel(one_row, 0.0)
    many_rows = _median_run_us(run, warmup_feed(signature, probe_rows))
    per_row = max(0.0, (many_rows - one_row) / (probe_rows - 1))
    return CostModel(max(0.0, one_row - per_row), per_row)


def create_session(model_bytes: bytes, intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Threads idle between requests instead of spinning on a core the event loop needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"onnxruntime cannot load the model: {error}") from error


@dataclass(eq=False)
class LoadedModel:
    """One version of one model, warm and ready to run. `signature` is what clients
    send and get; with an `encoder` (a text-embedding model) the graph itself takes the
    encoder's token tensors instead of `text`."""

    name: str
    version: str
    sha256: str
    signature: ModelSignature
    session: ort.InferenceSession
    cost: CostModel
    encoder: TextEncoder | None = None
    batcher: DynamicBatcher = field(init=False, repr=False)

    @property
    def task(self) -> str:
        return "text-embedding" if self.encoder is not None else "onnx"

    def execute(self, feed: Feed) -> Feed:
        graph_feed = self.encoder.encode(feed) if self.encoder is not None else feed
        try:
            outputs = self.session.run(None, graph_feed)
        except OrtInvalidArgument as error:
            raise TensorError(f"model '{self.name}' rejected the inputs: {error}") from None
        return {
            spec.name: value for spec, value in zip(self.signature.outputs, outputs, strict=True)
        }

    async def infer(self, request: InferRequest) -> list[Tensor]:
        feed = match_inputs(self.name, request.inputs, self.signature.inputs)
        selected = select_outputs(self.name, request.outputs, self.signature.outputs)
        outputs = await self.batcher.infer(feed)
        return [Tensor(spec.name, spec.datatype, outputs[spec.name]) for spec in selected]

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": versions,
            "platform": PLATFORM,
            "inputs": [spec.to_dict() for spec in self.signature.inputs],
            "outputs": [spec.to_dict() for spec in self.signature.outputs],
        }


def load_model(
    name: str,
    version: str,
    sha256: str,
    model_bytes: bytes,
    *,
    settings: InferenceSettings,
    executor: Executor,
    observer: BatchObserver,
    tokenizer_json: bytes | None = None,
) -> LoadedModel:
    """Create the session, read its signature, warm it up and give it a batcher. With a
    tokenizer the model is a text-embedding model (`text` in). Blocking (hundreds of ms,
    seconds for an embedder): call it from a thread."""
    session = create_session(model_bytes, settings.intra_op_threads)
    graph = session_signature(session)
    encoder = None
    signature = graph
    if tokenizer_json is not None:
        try:
            encoder = TextEncoder(tokenizer_json, graph.inputs, settings.embedding_max_tokens)
        except TokenizerError as error:
            raise ModelLoadError(str(error)) from error
        signature = ModelSignature((TEXT_INPUT,), graph.outputs)
    model = LoadedModel(name, version, sha256, signature, session, CostModel(0.0, 0.0), encoder)
    try:
        model.cost = warm_up(model.execute, signature, min(settings.max_batch_size, 64))
    except Exception as error:
        raise ModelLoadError(f"warm-up request failed: {error}") from error
    cost = model.cost
    inline_limit = settings.inline_max_cost_us
    model.batcher = DynamicBatcher(
        model.execute,
        observer=observer,
        batchable=signature.batchable,
        max_batch_size=settings.max_batch_size,
        max_queue_delay=settings.max_queue_delay_ms / 1000,
        max_concurrent=settings.max_concurrent_batches,
        executor=executor,
        run_inline=lambda rows: cost.estimate_us(rows) <= inline_limit,
    )
    log.info(
        "model loaded",
        model=name,
        version=version,
        sha256=sha256,
        task=model.task,
        batchable=signature.batchable,
        fixed_us=round(cost.fixed_us, 1),
        per_row_us=round(cost.per_row_us, 2),
    )
    return model


class AliasState(enum.Enum):
    LOADING = "loading"  # first load not finished yet
    READY = "ready"
    ABSENT = "absent"  # the registry has no version under this alias
    FAILED = "failed"  # the load failed and nothing older serves it


@dataclass(slots=True)
class _AliasEntry:
    state: AliasState = AliasState.LOADING
    model: LoadedModel | None = None
    error: str = ""


class ModelManager:
    """What is served: (name, alias) -> model, (name, version) -> model."""

    def __init__(
        self,
        models: dict[str, list[str]],
        *,
        on_change: Callable[[], None] | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        self._configured = {name: list(aliases) for name, aliases in models.items()}
        self._aliases: dict[tuple[str, str], _AliasEntry] = {
            (name, alias): _AliasEntry() for name, aliases in models.items() for alias in aliases
        }
        # The fast path: (name, alias or version) -> model, rebuilt on every change.
        self._lookup: dict[tuple[str, str], LoadedModel] = {}
        self._on_change = on_change
        self._drain_timeout = drain_timeout
        self._changed = asyncio.Event()
        self._draining: set[asyncio.Task[None]] = set()

    # --- reading (every request) -----------------------------------------------------

    def get(self, name: str, version: str) -> LoadedModel | None:
        return self._lookup.get((name, version or DEFAULT_ALIAS))

    async def resolve(self, name: str, version: str, wait: float) -> LoadedModel:
        """The model serving `name` at `version` (a version number or an alias; empty
        means production). Waits up to `wait` seconds while it is still loading."""
        model = self._lookup.get((name, version or DEFAULT_ALIAS))
        if model is not None:
            return model
        deadline = time.monotonic() + wait
        while True:
            model = self._lookup.get((name, version or DEFAULT_ALIAS))
            if model is not None:
                return model
            error = self._why_unavailable(name, version or DEFAULT_ALIAS)
            remaining = deadline - time.monotonic()
            if not isinstance(error, Unavailable) or remaining <= 0:
                raise error
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                raise error from None

    def _why_unavailable(self, name: str, version: str) -> NotFound | Unavailable:
        aliases = self._configured.get(name)
        if aliases is None:
            served = ", ".join(sorted(self._configured))
            return NotFound(f"model '{name}' is not served here; served models: {served}")
        entry = self._aliases.get((name, version))
        if entry is not None:
            if entry.state is AliasState.LOADING:
                return Unavailable(f"model '{name}' ({version}) is still loading")
            if entry.state is AliasState.FAILED:
                return Unavailable(f"model '{name}' ({version}) failed to load: {entry.error}")
            return NotFound(f"model '{name}' has no version under alias '{version}'")
        if any(self._aliases[(name, alias)].state is AliasState.LOADING for alias in aliases):
            return Unavailable(f"model '{name}' is still loading")
        loaded = self._served_versions(name)
        listing = ", ".join(loaded) if loaded else "none"
        return NotFound(
            f"version '{version}' of model '{name}' is not served; served versions: {listing}; "
            f"aliases: {', '.join(aliases)}"
        )

    def _served_versions(self, name: str) -> list[str]:
        """Loaded versions of `name`, each with the aliases that point at it."""
        by_version: dict[str, list[str]] = {}
        for alias in self._configured.get(name, []):
            model = self._aliases[(name, alias)].model
            if model is not None:
                by_version.setdefault(model.version, []).append(alias)
        return [
            f"{version} ({', '.join(aliases)})" for version, aliases in sorted(by_version.items())
        ]

    def versions(self, name: str) -> list[str]:
        return sorted(
            {
                entry.model.version
                for (model_name, _), entry in self._aliases.items()
                if model_name == name and entry.model is not None
            }
        )

    def loaded(self) -> list[tuple[str, str, LoadedModel]]:
        """(name, alias, model) for every alias that has a model."""
        return [
            (name, alias, entry.model)
            for (name, alias), entry in self._aliases.items()
            if entry.model is not None
        ]

    @property
    def configured(self) -> dict[str, list[str]]:
        return self._configured

    @property
    def alias_keys(self) -> KeysView[tuple[str, str]]:
        return self._aliases.keys()

    @property
    def ready(self) -> bool:
        """Every model's production alias is loaded and warm, and no alias is still on
        its first load. (A canary that failed to load does not take production down.)"""
        for (_, alias), entry in self._aliases.items():
            if entry.state is AliasState.LOADING:
                return False
            if alias == DEFAULT_ALIAS and entry.state is not AliasState.READY:
                return False
        return True

    def alias_state(self, name: str, alias: str) -> AliasState:
        return self._aliases[(name, alias)].state

    def current(self, name: str, alias: str) -> LoadedModel | None:
        return self._aliases[(name, alias)].model

    def find_version(self, name: str, version: str, sha256: str) -> LoadedModel | None:
        """An already loaded model with this version and digest (to share between aliases)."""
        for (model_name, _), entry in self._aliases.items():
            model = entry.model
            if (
                model_name == name
                and model is not None
                and model.version == version
                and model.sha256 == sha256
            ):
                return model
        return None

    # --- changing (the sync task) ----------------------------------------------------

    def install(self, name: str, alias: str, model: LoadedModel) -> None:
        """Point `alias` at `model` (already warm). New requests see it at once; the
        replaced version finishes what it has and is dropped when no alias uses it."""
        entry = self._aliases[(name, alias)]
        previous = entry.model
        entry.model, entry.state, entry.error = model, AliasState.READY, ""
        self._publish()
        if previous is not None and previous is not model:
            self._release(previous)

    def mark_absent(self, name: str, alias: str) -> None:
        entry = self._aliases[(name, alias)]
        previous = entry.model
        entry.model, entry.state, entry.error = None, AliasState.ABSENT, ""
        self._publish()
        if previous is not None:
            self._release(previous)

    def mark_failed(self, name: str, alias: str, error: str) -> None:
        """A load failed: keep serving the previous version if there is one."""
        entry = self._aliases[(name, alias)]
        if entry.model is None:
            entry.state, entry.error = AliasState.FAILED, error
            self._publish()

    def _publish(self) -> None:
        lookup: dict[tuple[str, str], LoadedModel] = {}
        for (name, alias), entry in self._aliases.items():
            if entry.model is not None:
                lookup[(name, alias)] = entry.model
                # A version number resolves to the model too; aliases win on a clash.
                lookup.setdefault((name, entry.model.version), entry.model)
        self._lookup = lookup  # one reference swap: readers see the old or the new table
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self._on_change is not None:
            self._on_change()

    def _release(self, model: LoadedModel) -> None:
        if any(entry.model is model for entry in self._aliases.values()):
            return
        task = asyncio.get_running_loop().create_task(self._drain(model))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain(self, model: LoadedModel) -> None:
        drained = True
        try:
            async with asyncio.timeout(self._drain_timeout):
                await model.batcher.drained()
        except TimeoutError:
            drained = False
        log.info(
            "model version retired",
            model=model.name,
            version=model.version,
            drained=drained,
        )

    async def wait_drained(self) -> None:
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
