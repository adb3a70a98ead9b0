"""The registry's use cases, over the MLflow store, the Redis lock/stream and the cache.

Consistency rules (why the code is ordered the way it is):
- Every mutation of a model (alias moves, promotions, registrations) runs under a Redis
  lock per model name, so replicas serialize and each audit entry's previous_version is
  what the alias really pointed at. Redis down -> the lock cannot be taken -> UNAVAILABLE
  before anything changes.
- Under the lock: move the alias in MLflow, then append the audit entry, then publish
  the event. A failure after the move is reported as UNAVAILABLE with what did happen,
  never swallowed; retrying the same SetAlias re-publishes the event (a no-op move
  writes no audit entry), and a retried RegisterVersion returns the version and
  re-publishes too. A move whose audit entry could not be written makes Rollback refuse
  (the trail no longer matches the alias) rather than guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import redis
import redis.exceptions
from redis.lock import Lock

from kloop_core.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from kloop_core.logging import get_logger
from kloop_core.redis import redis_ping
from kloop_model.metrics import evaluate
from kloop_registry import audit, gate
from kloop_registry.artifacts import (
    SHA256_RE,
    ArtifactCache,
    ArtifactSource,
    CachedArtifact,
    DigestMismatch,
)
from kloop_registry.audit import Action, AuditEntry
from kloop_registry.events import STREAM_ID_RE, EventKind, EventStream, ModelEvent
from kloop_registry.imports import (
    MODEL_FILE,
    NOT_GATED,
    TAG_TOKENIZER_SHA256,
    TOKENIZER_FILE,
    FilePart,
    ImportCommand,
    check_files,
    import_tags,
    is_imported,
    read_signature,
    receive_files,
)
from kloop_registry.scoring import ScoringError, predict_proba, signature_names
from kloop_registry.settings import RegistrySettings
from kloop_registry.store import (
    TAG_ARTIFACT_PATH,
    TAG_DATASET,
    TAG_HOLDOUT,
    TAG_METRICS,
    TAG_SHA256,
    TAG_SIZE,
    MlflowStore,
    ModelRecord,
    VersionRecord,
)

log = get_logger(__name__)

HOLDOUT_FILE = "holdout.jsonl"
SIGNATURE_FILE = "signature.json"
DEFAULT_ARTIFACT_PATH = "model"
DEFAULT_ALIAS = "production"
UNKNOWN_ACTOR = "unknown"
_LOCK_PREFIX = "kloop:registry:lock:"

# Names end up in Redis keys, MLflow filter strings and models:/ URIs: keep them plain.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
# MLflow reserves "latest" and "v<digits>" (they mean versions in models:/ URIs).
_RESERVED_ALIAS_RE = re.compile(r"^(latest|v\d+)$")
_VERSION_RE = re.compile(r"^[1-9]\d{0,9}$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# --- validation (pure) ---------------------------------------------------------------


def check_name(name: str) -> str:
    if not name:
        raise InvalidArgument("model name is required")
    if not _NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid model name {name!r}: letters, digits, '.', '_', '-' (max 128)"
        )
    return name


def check_alias(alias: str, *, default: str | None = None) -> str:
    alias = alias or (default or "")
    if not alias:
        raise InvalidArgument("alias is required")
    if not _ALIAS_RE.match(alias) or _RESERVED_ALIAS_RE.match(alias):
        raise InvalidArgument(
            f"invalid alias {alias!r}: production, canary, challenger or any "
            "[a-z][a-z0-9_-]* up to 63 characters, except 'latest' and 'v<number>'"
        )
    return alias


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise InvalidArgument(f"invalid version {version!r}: a positive integer")
    return version


def check_relative_path(path: str, *, default: str) -> str:
    """A path inside a version's artifact directory ('..' and absolute paths refused)."""
    path = path or default
    parts = PurePosixPath(path).parts
    if path.startswith("/") or "\\" in path or not parts or ".." in parts:
        raise InvalidArgument(f"invalid artifact path {path!r}: must be relative, without '..'")
    return "/".join(parts)


def check_sha256(sha256: str) -> str:
    sha256 = sha256.lower()
    if not SHA256_RE.match(sha256):
        raise InvalidArgument(f"invalid sha256 {sha256!r}: 64 hex digits")
    return sha256


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AliasChange:
    name: str
    alias: str
    version: str  # empty when deleted
    previous_version: str
    entry: AuditEntry | None  # None for a no-op move (nothing to record)


@dataclass(frozen=True)
class Promotion:
    result: gate.GateResult
    name: str
    candidate_version: str
    baseline_version: str
    holdout_digest: str
    holdout_size: int
    candidate_metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    change: AliasChange | None


@dataclass(frozen=True)
class RegisterCommand:
    name: str
    run_id: str
    sha256: str
    size_bytes: int = 0
    artifact_path: str = DEFAULT_ARTIFACT_PATH
    dataset_digest: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class ImportResult:
    version: VersionRecord
    created: bool  # False: the same files were imported under this name before
    change: AliasChange | None
    signature: dict[str, object]


@dataclass(frozen=True)
class Artifact:
    file: CachedArtifact
    path: str  # file name inside the version's artifact directory


# --- the service ---------------------------------------------------------------------------


class Registry:
    def __init__(
        self,
        settings: RegistrySettings,
        *,
        store: MlflowStore,
        redis_client: redis.Redis,
        watch_client: redis.Redis,
        cache: ArtifactCache,
    ) -> None:
        """`watch_client` serves WatchModels' blocking reads: its socket timeout must
        exceed `watch_block_seconds`, and its pool keeps watchers from starving the lock
        and publish commands of connections."""
        self._settings = settings
        self._store = store
        self._redis = redis_client
        self._events = EventStream(redis_client, settings.events_stream, settings.events_maxlen)
        self._watch_events = EventStream(
            watch_client, settings.events_stream, settings.events_maxlen
        )
        self._cache = cache

    # -- reads --

    def ready(self) -> bool:
        """MLflow and Redis both answer (raises when MLflow does not: not ready)."""
        self._store.ping()
        return redis_ping(self._redis)

    def list_models(self) -> list[ModelRecord]:
        return self._store.list_models()

    def get_model(self, name: str) -> ModelRecord:
        return self._store.get_model(check_name(name))

    def list_versions(self, name: str) -> list[VersionRecord]:
        return self._store.list_versions(check_name(name))

    def get_version(self, name: str, version: str) -> VersionRecord:
        return self._store.get_version(check_name(name), check_version(version))

    def resolve_alias(self, name: str, alias: str) -> VersionRecord:
        return self._store.version_by_alias(check_name(name), check_alias(alias))

    def history(self, name: str, limit: int = 0) -> list[AuditEntry]:
        if limit < 0:
            raise InvalidArgument("limit must be >= 0")
        entries = audit.entries_from_tags(self.get_model(name).tags)
        return entries[-limit:] if limit else entries

    # -- alias changes --

    def set_alias(
        self, name: str, alias: str, version: str, *, actor: str = "", reason: str = ""
    ) -> AliasChange:
        name, alias, version = check_name(name), check_alias(alias), check_version(version)
        with self._model_lock(name):
            target = self._store.get_version(name, version)
            return self._set_alias_locked(name, alias, target, actor=actor, reason=reason)

    def _set_alias_locked(
        self,
        name: str,
        alias: str,
        target: VersionRecord,
        *,
        actor: str,
        reason: str,
        details: dict[str, str] | None = None,
    ) -> AliasChange:
        version = target.version
        model = self._store.get_model(name)
        previous = model.aliases.get(alias, "")
        if previous == version:
            # Nothing moves and nothing is recorded, but the event is sent again: the
            # retry of a call whose publish failed repairs what watchers missed.
            self._publish(EventKind.ALIAS_SET, name, alias, target, previous, actor, reason)
            return AliasChange(name, alias, version, previous, None)
        self._store.set_alias(name, alias, version)
        entry = self._record(
            model, Action.ALIAS_SET, alias, version, previous, actor, reason, details or {}
        )
        self._publish(EventKind.ALIAS_SET, name, alias, target, previous, actor, reason)
        return AliasChange(name, alias, version, previous, entry)

    def delete_alias(
        self, name: str, alias: str, *, actor: str = "", reason: str = ""
    ) -> AliasChange:
        name, alias = check_name(name), check_alias(alias)
        with self._model_lock(name):
            model = self._store.get_model(name)
            previous = model.aliases.get(alias, "")
            if not previous:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            self._store.delete_alias(name, alias)
            entry = self._record(
                model, Action.ALIAS_DELETED, alias, "", previous, actor, reason, {}
            )
            self._publish(EventKind.ALIAS_DELETED, name, alias, None, previous, actor, reason)
            return AliasChange(name, alias, "", previous, entry)

    def rollback(self, name: str, alias: str, *, actor: str = "", reason: str = "") -> AliasChange:
        name, alias = check_name(name), check_alias(alias)
        with self._model_lock(name):
            model = self._store.get_model(name)
            current = model.aliases.get(alias, "")
            try:
                target_version = audit.rollback_target(
                    audit.entries_from_tags(model.tags), alias, current
                )
            except audit.RollbackImpossible as e:
                raise FailedPrecondition(str(e)) from e
            try:
                target = self._store.get_version(name, target_version)
            except NotFound as e:
                raise FailedPrecondition(
                    f"cannot roll {alias!r} back to v{target_version}: that version is gone"
                ) from e
            self._store.set_alias(name, alias, target_version)
            entry = self._record(
                model, Action.ROLLBACK, alias, target_version, current, actor, reason, {}
            )
            self._publish(EventKind.ALIAS_SET, name, alias, target, current, actor, reason)
            return AliasChange(name, alias, target_version, current, entry)

    # -- promotion --

    def promote(
        self,
        name: str,
        version: str,
        *,
        target_alias: str = "",
        baseline_alias: str = "",
        actor: str = "",
        reason: str = "",
        dry_run: bool = False,
    ) -> Promotion:
        name, version = check_name(name), check_version(version)
        target_alias = check_alias(target_alias, default=DEFAULT_ALIAS)
        baseline_alias = check_alias(baseline_alias, default=DEFAULT_ALIAS)
        candidate = self._store.get_version(name, version)
        if is_imported(candidate.tags):
            raise FailedPrecondition(
                f"{name} v{version} is an imported model: it has no holdout, so it cannot be "
                "gated; point an alias at it with SetAlias (kloop alias set) instead"
            )
        # Fetch the candidate's files before taking the lock: it is held only for the
        # decision itself (baseline files are usually cached already).
        holdout = self._holdout(candidate)
        self._model_file(candidate)
        metric, margin = self._settings.promotion_metric, self._settings.promotion_margin
        with self._model_lock(name):
            model = self._store.get_model(name)
            previous = model.aliases.get(target_alias, "")
            baseline_version = model.aliases.get(baseline_alias)
            baseline = self._store.get_version(name, baseline_version) if baseline_version else None
            cand_metrics = self._score(candidate, holdout)
            base_metrics = self._score(baseline, holdout) if baseline else None
            result = gate.decide(
                metric=metric,
                margin=margin,
                candidate_version=version,
                candidate_metrics=cand_metrics,
                baseline_alias=baseline_alias,
                baseline_version=baseline_version,
                baseline_metrics=base_metrics,
            )
            applied = result.approved and not dry_run
            details = _decision_details(
                result,
                target_alias=target_alias,
                baseline_alias=baseline_alias,
                baseline_version=baseline_version or "",
                holdout=holdout,
                candidate=candidate,
                baseline=baseline,
                candidate_metrics=cand_metrics,
                baseline_metrics=base_metrics or {},
                dry_run=dry_run,
                applied=applied,
            )
            if applied:
                self._store.set_alias(name, target_alias, version)
            action = Action.PROMOTION_APPROVED if result.approved else Action.PROMOTION_REJECTED
            entry = self._record(
                model, action, target_alias, version, previous, actor, reason, details
            )
            change = None
            if applied:
                self._publish(
                    EventKind.ALIAS_SET, name, target_alias, candidate, previous, actor, reason
                )
                change = AliasChange(name, target_alias, version, previous, entry)
            log.info(
                "promotion decided",
                model=name,
                version=version,
                approved=result.approved,
                applied=applied,
                metric=metric,
                candidate_value=result.candidate_value,
                baseline_value=result.baseline_value,
            )
            return Promotion(
                result=result,
                name=name,
                candidate_version=version,
                baseline_version=baseline_version or "",
                holdout_digest=holdout.digest,
                holdout_size=len(holdout),
                candidate_metrics=cand_metrics,
                baseline_metrics=base_metrics or {},
                change=change,
            )

    # -- registration --

    def register_version(self, cmd: RegisterCommand) -> VersionRecord:
        name = check_name(cmd.name)
        if not _RUN_ID_RE.match(cmd.run_id):
            raise InvalidArgument(f"invalid run_id {cmd.run_id!r}")
        if not cmd.sha256:
            raise InvalidArgument(f"sha256 of {MODEL_FILE} is required")
        sha256 = check_sha256(cmd.sha256)
        if cmd.size_bytes < 0:
            raise InvalidArgument("size_bytes must be >= 0")
        artifact_path = check_relative_path(cmd.artifact_path, default=DEFAULT_ARTIFACT_PATH)
        if any(key.startswith(audit.TAG_PREFIX) for key in cmd.tags):
            raise InvalidArgument(f"tags starting with {audit.TAG_PREFIX!r} are reserved")
        with self._model_lock(name):
            existing = self._store.version_for_run(name, cmd.run_id)
            if existing is not None:
                if existing.sha256 and existing.sha256 != sha256:
                    raise AlreadyExists(
                        f"run {cmd.run_id} is already {name} v{existing.version} with sha256 "
                        f"{existing.sha256}, not {sha256}"
                    )
                self._publish(EventKind.VERSION_REGISTERED, name, "", existing, "", "", "")
                return existing
            run = self._store.get_run(cmd.run_id)
            with self._cache.scratch() as tmp:
                model_file = self._store.download_run_file(
                    cmd.run_id, f"{artifact_path}/{MODEL_FILE}", tmp
                )
                try:
                    cached = self._cache.put(
                        model_file, expected_sha256=sha256, expected_size=cmd.size_bytes or None
                    )
                except DigestMismatch as e:
                    raise InvalidArgument(
                        f"{artifact_path}/{MODEL_FILE} of run {cmd.run_id} does not match the "
                        f"request: {e}"
                    ) from e
                holdout_digest = self._run_holdout_digest(cmd.run_id, artifact_path, tmp)
            tags = {
                **cmd.tags,
                TAG_SHA256: cached.sha256,
                TAG_SIZE: str(cached.size),
                TAG_DATASET: cmd.dataset_digest,
                TAG_HOLDOUT: holdout_digest,
                TAG_ARTIFACT_PATH: artifact_path,
                TAG_METRICS: _metrics_json(run.metrics),
            }
            record = self._store.create_version(
                name=name,
                source=f"{run.artifact_uri}/{artifact_path}",
                run_id=cmd.run_id,
                tags={k: v for k, v in tags.items() if v},
                description=cmd.description,
            )
            self._cache.remember(cached.sha256, ArtifactSource(name, record.version, MODEL_FILE))
            log.info("version registered", model=name, version=record.version, run_id=cmd.run_id)
            self._publish(EventKind.VERSION_REGISTERED, name, "", record, "", "", "")
            return record

    # -- imported ("bring your own") models --

    def check_import(self, cmd: ImportCommand) -> ImportCommand:
        """The header, validated before any byte is received."""
        files = check_files(cmd.files, self._settings.import_max_file_bytes)
        if cmd.alias:
            check_alias(cmd.alias)
        if any(key.startswith(("kloop.", audit.TAG_PREFIX)) for key in cmd.tags):
            raise InvalidArgument("tags starting with 'kloop.' are reserved")
        return ImportCommand(
            name=check_name(cmd.name),
            files=files,
            alias=cmd.alias,
            description=cmd.description,
            tags=dict(cmd.tags),
            actor=cmd.actor,
            reason=cmd.reason,
        )

    def import_model(self, cmd: ImportCommand, parts: Iterator[FilePart]) -> ImportResult:
        """Receive the files, check them, store them as an MLflow run like training's
        output (`model/`), create a version and optionally point an alias at it.

        The upload to MLflow happens before the model lock is taken (it can take seconds
        for a big model); the lock covers only the idempotency check and the version."""
        cmd = self.check_import(cmd)
        name = cmd.name
        model = cmd.declared(MODEL_FILE)
        assert model is not None  # check_files requires it
        tokenizer = cmd.declared(TOKENIZER_FILE)
        tokenizer_sha256 = tokenizer.sha256 if tokenizer else ""
        with self._cache.scratch() as tmp:
            files = tmp / DEFAULT_ARTIFACT_PATH
            files.mkdir()
            receive_files(cmd, parts, files)
            signature = read_signature(
                files / MODEL_FILE, files / TOKENIZER_FILE if tokenizer else None
            )
            existing = self._imported_version(name, model.sha256, tokenizer_sha256)
            run, cached = None, None
            if existing is None:
                (files / SIGNATURE_FILE).write_text(json.dumps(signature, indent=2))
                run = self._store.log_files_run(
                    self._settings.import_experiment,
                    files,
                    DEFAULT_ARTIFACT_PATH,
                    {"kloop.model_name": name, "kloop.kind": "imported"},
                )
                cached = self._cache.put(files / MODEL_FILE, expected_sha256=model.sha256)
        with self._model_lock(name):
            record = self._imported_version(name, model.sha256, tokenizer_sha256)
            created = record is None
            if record is None:
                if run is None or cached is None:
                    raise Conflict(
                        f"{name}: the version these files were imported as disappeared "
                        "during the import; retry"
                    )
                record = self._store.create_version(
                    name=name,
                    source=f"{run.artifact_uri}/{DEFAULT_ARTIFACT_PATH}",
                    run_id=run.run_id,
                    tags={
                        **cmd.tags,
                        **import_tags(signature, tokenizer_sha256),
                        TAG_SHA256: cached.sha256,
                        TAG_SIZE: str(cached.size),
                        TAG_ARTIFACT_PATH: DEFAULT_ARTIFACT_PATH,
                    },
                    description=cmd.description,
                )
                self._cache.remember(
                    cached.sha256, ArtifactSource(name, record.version, MODEL_FILE)
                )
                details = {
                    "kind": "imported",
                    "task": str(signature["task"]),
                    "gated": "false",
                    "explanation": NOT_GATED,
                    "sha256": cached.sha256,
                    "tokenizer_sha256": tokenizer_sha256,
                    "inputs": ",".join(str(i["name"]) for i in signature["inputs"]),
                    "outputs": ",".join(str(o["name"]) for o in signature["outputs"]),
                }
                self._record(
                    self._store.get_model(name),
                    Action.MODEL_IMPORTED,
                    "",
                    record.version,
                    "",
                    cmd.actor,
                    cmd.reason,
                    details,
                )
                log.info(
                    "model imported",
                    model=name,
                    version=record.version,
                    task=signature["task"],
                    sha256=cached.sha256,
                )
            self._publish(EventKind.VERSION_REGISTERED, name, "", record, "", "", "")
            change = None
            if cmd.alias:
                change = self._set_alias_locked(
                    name,
                    cmd.alias,
                    record,
                    actor=cmd.actor,
                    reason=cmd.reason or NOT_GATED,
                    details={"kind": "imported", "gated": "false", "explanation": NOT_GATED},
                )
                record = self._store.get_version(name, record.version)  # with its new alias
        return ImportResult(record, created, change, signature)

    def _imported_version(
        self, name: str, sha256: str, tokenizer_sha256: str
    ) -> VersionRecord | None:
        for found in self._store.versions_with_sha256(sha256):
            if (
                found.name == name
                and is_imported(found.tags)
                and found.tags.get(TAG_TOKENIZER_SHA256, "") == tokenizer_sha256
            ):
                return self._store.get_version(name, found.version)
        return None

    # -- artifacts and events --

    def open_artifact(
        self, *, sha256: str = "", name: str = "", version: str = "", path: str = ""
    ) -> Artifact:
        """A verified local copy of one artifact file, by digest or by name + version."""
        if sha256 and not (name or version):
            return self._artifact_by_sha256(check_sha256(sha256))
        if sha256:
            raise InvalidArgument("give either sha256 alone or name + version (+ path)")
        if not (name and version):
            raise InvalidArgument("sha256, or name and version, are required")
        record = self.get_version(name, version)
        path = check_relative_path(path, default=MODEL_FILE)
        if path == MODEL_FILE:
            return Artifact(self._model_file(record), path)
        with self._cache.scratch() as tmp:
            local = self._store.download_version_file(record, path, tmp)
            cached = self._cache.put(
                local, source=ArtifactSource(record.name, record.version, path)
            )
        return Artifact(cached, path)

    def watch(
        self, *, name: str, after_event_id: str, is_active: Callable[[], bool]
    ) -> Iterator[ModelEvent]:
        if name:
            check_name(name)
        if after_event_id and not STREAM_ID_RE.match(after_event_id):
            raise InvalidArgument(f"invalid after_event_id {after_event_id!r}: a Redis stream id")
        try:
            yield from self._watch_events.watch(
                after_id=after_event_id or None,
                name=name or None,
                is_active=is_active,
                block_seconds=self._settings.watch_block_seconds,
            )
        except redis.exceptions.RedisError as e:
            raise Unavailable(f"Redis is unreachable, cannot read model events: {e}") from e

    # -- helpers --

    def _artifact_by_sha256(self, sha256: str) -> Artifact:
        source = self._cache.source_of(sha256)
        cached = self._cache.get(sha256)
        if cached is not None:
            return Artifact(cached, source.path if source else MODEL_FILE)
        # Not cached here (evicted, or registered through another replica): fetch it again
        # from the version it came from, or from any version whose model has this digest.
        if source is not None:
            found = self.open_artifact(name=source.name, version=source.version, path=source.path)
        else:
            record = next(iter(self._store.versions_with_sha256(sha256)), None)
            if record is None:
                raise NotFound(f"no artifact with sha256 {sha256}")
            found = Artifact(self._model_file(record), MODEL_FILE)
        if found.file.sha256 != sha256:
            raise NotFound(f"no artifact with sha256 {sha256} (its source now differs)")
        return found

    def _model_file(self, record: VersionRecord) -> CachedArtifact:
        """model.onnx of a version, from the cache or MLflow, checked against its tags."""
        if record.sha256:
            cached = self._cache.get(record.sha256)
            if cached is not None:
                return cached
        with self._cache.scratch() as tmp:
            local = self._store.download_version_file(record, MODEL_FILE, tmp)
            try:
                return self._cache.put(
                    local,
                    expected_sha256=record.sha256 or None,
                    expected_size=record.size_bytes or None,
                    source=ArtifactSource(record.name, record.version, MODEL_FILE),
                )
            except DigestMismatch as e:
                raise FailedPrecondition(
                    f"{record.name} v{record.version} {MODEL_FILE} in MLflow is not the "
                    f"registered file: {e}"
                ) from e

    def _holdout(self, record: VersionRecord) -> gate.Holdout:
        raw = self._optional_file(record, HOLDOUT_FILE)
        if raw is None:
            raise FailedPrecondition(
                f"{record.name} v{record.version} has no {HOLDOUT_FILE}: it cannot be gated"
            )
        try:
            holdout = gate.parse_holdout(raw)
        except (gate.HoldoutError, UnicodeDecodeError) as e:
            raise FailedPrecondition(f"{record.name} v{record.version} {HOLDOUT_FILE}: {e}") from e
        expected = record.tags.get(TAG_HOLDOUT)
        if expected and holdout.digest != expected:
            raise FailedPrecondition(
                f"{record.name} v{record.version} {HOLDOUT_FILE} has sha256 {holdout.digest}, "
                f"registered as {expected}"
            )
        return holdout

    def _optional_file(self, record: VersionRecord, path: str) -> bytes | None:
        with self._cache.scratch() as tmp:
            try:
                return self._store.download_version_file(record, path, tmp).read_bytes()
            except NotFound:
                return None

    def _run_holdout_digest(self, run_id: str, artifact_path: str, tmp: Path) -> str:
        """sha256 of the run's holdout (checked to parse), or "" when it has none."""
        try:
            local = self._store.download_run_file(run_id, f"{artifact_path}/{HOLDOUT_FILE}", tmp)
        except NotFound:
            return ""
        try:
            return gate.parse_holdout(local.read_bytes()).digest
        except (gate.HoldoutError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"{artifact_path}/{HOLDOUT_FILE} of run {run_id}: {e}") from e

    def _score(self, record: VersionRecord, holdout: gate.Holdout) -> dict[str, float]:
        model = self._model_file(record)
        try:
            input_name, output_name = signature_names(self._optional_file(record, SIGNATURE_FILE))
            p = predict_proba(
                model.path, holdout.texts, input_name=input_name, output_name=output_name
            )
            metrics = evaluate(holdout.labels, p)
        except (ScoringError, ValueError) as e:
            # ValueError: evaluate() refuses outputs that are not probabilities in [0, 1].
            raise FailedPrecondition(f"cannot score {record.name} v{record.version}: {e}") from e
        return {k: float(v) for k, v in metrics.items()}

    def _record(
        self,
        model: ModelRecord,
        action: Action,
        alias: str,
        version: str,
        previous: str,
        actor: str,
        reason: str,
        details: dict[str, str],
    ) -> AuditEntry:
        """Append an entry to the trail. The caller holds the model lock and read `model`
        under it, so its tags are current and the next sequence number is free."""
        name = model.name
        entry = AuditEntry(
            sequence=audit.next_sequence(model.tags),
            time=datetime.now(UTC),
            action=action,
            name=name,
            alias=alias,
            version=version,
            previous_version=previous,
            actor=actor or UNKNOWN_ACTOR,
            reason=reason,
            details=details,
        )
        value = audit.encode(entry)
        self._store.set_model_tag(name, entry.tag_key, value)
        if entry.concerns_version:
            self._store.set_version_tag(name, entry.concerns_version, entry.tag_key, value)
        return entry

    def _publish(
        self,
        kind: EventKind,
        name: str,
        alias: str,
        record: VersionRecord | None,
        previous: str,
        actor: str,
        reason: str,
    ) -> None:
        event = ModelEvent(
            kind=kind,
            name=name,
            alias=alias,
            version=record.version if record else "",
            previous_version=previous,
            artifact_uri=record.artifact_uri if record else "",
            sha256=record.sha256 if record else "",
            actor=actor or UNKNOWN_ACTOR,
            reason=reason,
        )
        try:
            # No retry here: the client from kloop_core.redis already retries failed sends.
            self._events.publish(event)
        except redis.exceptions.RedisError as e:
            log.error("model event not published", model=name, alias=alias, kind=kind.value)
            raise Unavailable(
                f"{kind.value} for {name} {alias or ''} was applied and recorded in MLflow, "
                f"but the model event could not be published ({e}); retry the call to "
                "publish it again"
            ) from e

    @contextmanager
    def _model_lock(self, name: str) -> Iterator[None]:
        lock = Lock(
            self._redis,
            _LOCK_PREFIX + name,
            timeout=self._settings.alias_lock_ttl_seconds,
            blocking_timeout=self._settings.alias_lock_timeout_seconds,
            thread_local=False,
        )
        try:
            acquired = lock.acquire()
        except redis.exceptions.RedisError as e:
            raise Unavailable(
                f"Redis is unreachable, so model {name!r} cannot be locked; nothing was changed"
            ) from e
        if not acquired:
            raise Unavailable(
                f"model {name!r} is busy with another change (lock not free after "
                f"{self._settings.alias_lock_timeout_seconds:g} s); nothing was changed"
            )
        try:
            yield
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                # The TTL ran out mid-operation: another replica may have interleaved.
                log.warning("model lock expired before release", model=name)
            except redis.exceptions.RedisError:
                log.warning("model lock not released (Redis unreachable)", model=name)


def _metrics_json(metrics: dict[str, float]) -> str:
    return json.dumps(metrics, separators=(",", ":"), sort_keys=True) if metrics else ""


def _num(value: float | None) -> str:
    return "" if value is None else format(value, ".10g")


def _decision_details(
    result: gate.GateResult,
    *,
    target_alias: str,
    baseline_alias: str,
    baseline_version: str,
    holdout: gate.Holdout,
    candidate: VersionRecord,
    baseline: VersionRecord | None,
    candidate_metrics: dict[str, float],
    baseline_metrics: dict[str, float],
    dry_run: bool,
    applied: bool,
) -> dict[str, str]:
    """Everything behind a decision, as strings for the audit entry."""
    details = {
        "metric": result.metric,
        "margin": _num(result.margin),
        "candidate_value": _num(result.candidate_value),
        "baseline_value": _num(result.baseline_value),
        "improvement": _num(result.improvement),
        "explanation": result.explanation,
        "target_alias": target_alias,
        "baseline_alias": baseline_alias,
        "baseline_version": baseline_version,
        "holdout_digest": holdout.digest,
        "holdout_size": str(len(holdout)),
        "candidate_sha256": candidate.sha256,
        "baseline_sha256": baseline.sha256 if baseline else "",
        "dry_run": str(dry_run).lower(),
        "applied": str(applied).lower(),
    }
    details.update({f"candidate.{k}": _num(v) for k, v in candidate_metrics.items()})
    details.update({f"baseline.{k}": _num(v) for k, v in baseline_metrics.items()})
    return details
