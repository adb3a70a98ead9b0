"""`kloop models import`: bring your own ONNX model to the registry.

The file is checked here first (exists, parses as ONNX, has a graph; the tokenizer is a
`tokenizers` JSON file) so that a wrong path or file fails in a second with a clear
message, before ~90 MB are streamed. The registry checks everything again with
onnxruntime and stores the signature it reads from the graph. Mounted by cli.py as
`models_app.command("import")(import_model)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import onnx
import typer
from rich.console import Console
from rich.table import Table

from kloop_client.platform import Endpoints, LocalPlatformSettings
from kloop_client.sdk import KloopClient, KloopError

console = Console()
err = Console(stderr=True)

# The registry's rules (kloop_registry.service), checked here to fail before uploading.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_RESERVED_ALIAS_RE = re.compile(r"^(latest|v\d+)$")
USAGE_ERROR = 2


class ImportFileError(ValueError):
    """A file given to `kloop models import` that cannot be imported."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: list[int | str]


@dataclass(frozen=True)
class OnnxSummary:
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int


def _tensors(values: Any, skip: set[str]) -> list[TensorInfo]:
    found = []
    for value in values:
        if value.name in skip:
            continue
        tensor = value.type.tensor_type
        datatype = onnx.TensorProto.DataType.Name(tensor.elem_type)
        shape: list[int | str] = [
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")
            for dim in tensor.shape.dim
        ]
        found.append(TensorInfo(value.name, datatype, shape))
    return found


def describe_onnx(path: Path) -> OnnxSummary:
    """The graph's inputs and outputs; ImportFileError when `path` is not an ONNX model."""
    if not path.exists():
        raise ImportFileError(f"no such file: {path}")
    if not path.is_file():
        raise ImportFileError(f"not a file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf/onnx raise several types for garbage
        raise ImportFileError(f"{path} is not an ONNX model ({type(error).__name__})") from None
    graph = model.graph
    if not model.ir_version or not graph.node or not graph.output:
        # An empty or unrelated protobuf parses as an empty ModelProto.
        raise ImportFileError(f"{path} is not an ONNX model (no graph in it)")
    initializers = {init.name for init in graph.initializer}
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxSummary(_tensors(graph.input, initializers), _tensors(graph.output, set()), opset)


def check_tokenizer(path: Path) -> None:
    if not path.is_file():
        raise ImportFileError(f"no such tokenizer file: {path}")
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise ImportFileError(f"{path} is not JSON (a tokenizer.json is expected)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise ImportFileError(f"{path} is not a Hugging Face tokenizers file (no 'model')")


def check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ImportFileError(
            f"invalid model name {name!r}: letters, digits, '.', '_', '-' (max 128), "
            "starting with a letter or digit"
        )


def check_alias(alias: str) -> None:
    if not _ALIAS_RE.match(alias) or _RESERVED_ALIAS_RE.match(alias):
        raise ImportFileError(
            f"invalid alias {alias!r}: production, canary, challenger or any "
            "[a-z][a-z0-9_-]*, except 'latest' and 'v<number>'"
        )


def _registry_addr(explicit: str | None) -> str:
    if explicit:
        return explicit
    settings = LocalPlatformSettings()
    endpoints = Endpoints.load(settings.home.resolve()) or Endpoints.from_settings(settings)
    return endpoints.registry_addr


@contextmanager
def _registry(addr: str) -> Iterator[KloopClient]:
    # Only the registry is used; the training address is never dialled.
    client = KloopClient(addr, addr)
    try:
        yield client
    except KloopError as e:
        err.print(f"[red]error[/] {e.code}: {e.message}")
        if e.code == "UNAVAILABLE":
            err.print(f"is the registry up at {addr}? try: kloop up (or --registry)")
        raise typer.Exit(1) from None
    finally:
        client.close()


def _signature_table(title: str, tensors: list[dict[str, Any]]) -> Table:
    table = Table("name", "datatype", "shape", title=title)
    for t in tensors:
        shape = t.get("shape")
        table.add_row(str(t["name"]), str(t["datatype"]), "any" if shape is None else str(shape))
    return table


def import_model(
    file: Annotated[Path, typer.Argument(help="The ONNX model file.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Registered model name.")],
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="A tokenizers tokenizer.json: makes it a text-embedding model (text in).",
            show_default=False,
        ),
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option(help="Point this alias (e.g. production) at the new version; no gate."),
    ] = None,
    description: Annotated[str, typer.Option(help="Version description.")] = "",
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit trail).")] = "",
    registry: Annotated[
        str | None,
        typer.Option(
            "--registry",
            envvar="KLOOP_REGISTRY_ADDR",
            help="Registry gRPC address (default: the local platform's).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Register your own ONNX model (signature read from the graph; not gated)."""
    try:
        check_name(name)
        if alias is not None:
            check_alias(alias)
        summary = describe_onnx(file)
        if tokenizer is not None:
            check_tokenizer(tokenizer)
    except ImportFileError as e:
        err.print(f"[red]error[/]: {e}")
        raise typer.Exit(USAGE_ERROR) from None
    size_mb = file.stat().st_size / 1e6
    console.print(
        f"importing {file} ({size_mb:.1f} MB, opset {summary.opset}, "
        f"{len(summary.inputs)} inputs, {len(summary.outputs)} outputs) as {name!r}"
    )
    with _registry(_registry_addr(registry)) as client:
        response = client.import_model(
            name,
            file,
            tokenizer_path=tokenizer,
            alias=alias or "",
            description=description,
            reason=reason,
        )
    version = response.version
    signature = json.loads(response.signature_json or "{}")
    state = "registered" if response.created else "already registered (same files)"
    console.print(
        f"{name} v{version.version} {state}: {signature.get('task', '?')} model, "
        f"sha256 {version.sha256}"
    )
    if signature.get("serving_inputs"):
        console.print(_signature_table("served inputs", signature["serving_inputs"]))
    console.print(_signature_table("graph inputs", signature.get("inputs", [])))
    console.print(_signature_table("outputs", signature.get("outputs", [])))
    if response.HasField("change"):
        change = response.change
        console.print(
            f"{name}@{change.alias}: v{change.previous_version or '-'} → v{change.version}"
        )
    console.print("[dim]imported models are not gated against a holdout (audit trail says so)[/]")
