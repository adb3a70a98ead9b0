"""/v1/jobs: asynchronous batch scoring, run by the worker service.

POST saves the job in Redis and sends the Celery task `kloop.score_job` by name to the
`scoring` queue (the gateway never imports the worker), answering 202 at once; the
worker chunks the job, scores each chunk through inference and writes the results; GET
reads status and paged results; DELETE cancels. Results expire `result_ttl_seconds`
after the job finishes.

Redis layout, shared with kloop_worker.jobs (documented there in full):
`kloop:jobs:<id>` hash (the job), `kloop:jobs:<id>:input` list (texts),
`kloop:jobs:<id>:done` set (chunks written), `kloop:jobs:<id>:chunk:<k>` JSON
`{"version", "rows": [[score, error], ...]}`, `kloop:jobs:active` sorted set.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
import redis.asyncio
import redis.exceptions
from celery import Celery
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kloop_core.errors import AlreadyExists, NotFound, Unavailable
from kloop_core.logging import get_logger
from kloop_gateway.api.deps import GatewayDep, PredictCaller
from kloop_gateway.api.schemas import error_responses
from kloop_gateway.clients import create_async_redis
from kloop_gateway.prediction import label_for
from kloop_gateway.service import MODEL_NAME_PATTERN, Principal
from kloop_gateway.settings import GatewaySettings
from kloop_gateway.texts import check_texts

log = get_logger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

PREFIX = "kloop:jobs"
ACTIVE_KEY = f"{PREFIX}:active"
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
VERSION_PATTERN = r"^(production|canary|challenger|[1-9][0-9]{0,9})$"
# A local absolute path or a file:// URI; the worker checks it can read it.
DATASET_URI_PATTERN = r"^(/|file:///)\S.*$"

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
_UNFINISHED = ("queued", "running")


class JobSettings(BaseSettings):
    """`KLOOP_GATEWAY_JOBS_*`: the job endpoints' own settings."""

    model_config = SettingsConfigDict(env_prefix="KLOOP_GATEWAY_JOBS_", extra="ignore")

    # The worker's Celery broker; default: the gateway's redis_url.
    broker_url: SecretStr | None = None
    max_inline_texts: int = Field(default=10_000, ge=1, le=1_000_000)
    # How long results stay readable after the job finished.
    result_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    # How long an unfinished job may live at most (its record expires then).
    ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    max_page_size: int = Field(default=1000, ge=1, le=100_000)
    task_name: str = "kloop.score_job"
    queue: str = "scoring"
    send_timeout_seconds: float = Field(default=5.0, gt=0)


# --- bodies ---------------------------------------------------------------------------------


class JobCreate(BaseModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN, description="Registered model name.")
    version: str = Field(
        default="production",
        pattern=VERSION_PATTERN,
        description="An alias (production, canary, challenger) or a version number.",
    )
    texts: list[str] | None = Field(
        default=None, min_length=1, description="Texts to score (limit: max_inline_texts)."
    )
    dataset_uri: str | None = Field(
        default=None,
        pattern=DATASET_URI_PATTERN,
        max_length=4096,
        description="A .jsonl (objects with 'text'), .csv ('text' column) or .txt (one "
        "text per line) file the worker can read: an absolute path or file:// URI.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        if (self.texts is None) == (self.dataset_uri is None):
            raise ValueError("give exactly one of texts and dataset_uri")
        return self


class JobCounts(BaseModel):
    total: int = Field(description="Rows in the job (0 until a dataset has been read).")
    scored: int
    failed: int = Field(description="Rows that could not be scored (see their error).")
    chunks: int
    chunks_done: int


class JobOut(BaseModel):
    id: str
    status: Status
    model: str
    version: str = Field(description="What was asked for; each result row says which answered.")
    progress: float = Field(ge=0, le=1)
    counts: JobCounts
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(None, description="When the results are deleted.")
    results: str = Field(description="Where the results are (GET, paged).")


class JobAccepted(BaseModel):
    id: str
    status: Status


class ResultRow(BaseModel):
    index: int
    score: float | None = None
    label: str | None = None
    version: str | None = None
    error: str | None = None


class ResultsPage(BaseModel):
    id: str
    status: Status
    items: list[ResultRow]
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null: no more rows will come. While "
        "the job runs, it may point at rows not written yet: ask again later."
    )


# --- the backend ----------------------------------------------------------------------------

# Cancels an unfinished job: status, then every key's TTL, input dropped. KEYS: job,
# done set, input, active set. ARGV: id, now. Returns the status before the call.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'queued' and status ~= 'running' then return status end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'result_ttl'))
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2], 'updated_at', ARGV[2])
local chunks = tonumber(redis.call('HGET', KEYS[1], 'chunks') or '0')
for i = 0, chunks - 1 do redis.call('EXPIRE', KEYS[1] .. ':chunk:' .. i, ttl) end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return status
"""


def _keys(job_id: str) -> list[str]:
    job = f"{PREFIX}:{job_id}"
    return [job, f"{job}:done", f"{job}:input", ACTIVE_KEY]


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _time(raw: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(raw), UTC) if raw else None


class JobQueue:
    """Job records in Redis and the Celery producer that hands jobs to the worker."""

    def __init__(self, gateway_settings: GatewaySettings, settings: JobSettings) -> None:
        self.settings = settings
        self.max_text_chars = gateway_settings.max_text_chars
        self.labels = gateway_settings.labels
        self.threshold = gateway_settings.threshold
        self._redis = create_async_redis(
            gateway_settings.redis_url, timeout=max(gateway_settings.redis_timeout_seconds, 2.0)
        )
        self._cancel = self._redis.register_script(_CANCEL)
        broker = (settings.broker_url or gateway_settings.redis_url).get_secret_value()
        self._celery = Celery("kloop-gateway", broker=broker, set_as_current=False)
        self._celery.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=settings.send_timeout_seconds,
            broker_transport_options={"socket_timeout": settings.send_timeout_seconds},
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._celery.close)
        await self._redis.aclose()

    async def create(self, body: JobCreate, owner: str) -> str:
        job_id = uuid.uuid4().hex
        now = repr(time.time())
        keys = _keys(job_id)
        record: dict[Any, str | int] = {
            "id": job_id,
            "model": body.model,
            "version": body.version,
            "status": "queued",
            "source": "inline" if body.texts is not None else "uri",
            "dataset_uri": body.dataset_uri or "",
            "owner": owner,
            "total": len(body.texts or ()),
            "scored": 0,
            "failed": 0,
            "chunks": 0,
            "chunks_done": 0,
            "result_ttl": self.settings.result_ttl_seconds,
            "created_at": now,
            "updated_at": now,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys[0], mapping=record)
            pipe.expire(keys[0], self.settings.ttl_seconds)
            if body.texts:
                pipe.rpush(keys[2], *body.texts)
                pipe.expire(keys[2], self.settings.ttl_seconds)
            # The worker's sweeper re-sends a job that stays here without progress.
            pipe.zadd(ACTIVE_KEY, {job_id: float(now)})
            await pipe.execute()
        try:
            await asyncio.to_thread(self._send, job_id)
        except Exception as error:  # the job cannot reach a worker: undo, tell to retry
            log.warning("cannot send a job to the worker", job_id=job_id, error=repr(error))
            await self._redis.delete(*keys[:3])
            await self._redis.zrem(ACTIVE_KEY, job_id)
            raise Unavailable("the job queue is unavailable", retry_after=2.0) from None
        return job_id

    def _send(self, job_id: str) -> None:
        self._celery.send_task(
            self.settings.task_name,
            args=[job_id],
            queue=self.settings.queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    async def get(self, job_id: str, caller: Principal) -> dict[str, str]:
        raw = await self._redis.hgetall(_keys(job_id)[0])
        record = {_str(k): _str(v) for k, v in raw.items()}
        # Someone else's job is as absent as an unknown one (ids are not secrets).
        if not record or (record.get("owner") != caller.key_id and "admin" not in caller.scopes):
            raise NotFound(f"no job {job_id} (unknown or expired)")
        return record

    async def cancel(self, job_id: str, caller: Principal) -> dict[str, str]:
        await self.get(job_id, caller)
        before = _str(await self._cancel(keys=_keys(job_id), args=[job_id, repr(time.time())]))
        if before == "missing":
            raise NotFound(f"no job {job_id} (unknown or expired)")
        if before not in (*_UNFINISHED, "cancelled"):
            raise AlreadyExists(f"job {job_id} already {before}: nothing to cancel")
        return await self.get(job_id, caller)

    async def rows(self, record: dict[str, str], cursor: int, limit: int) -> ResultsPage:
        job_id, status = record["id"], record["status"]
        total, size = int(record.get("total") or 0), int(record.get("chunk_size") or 0)
        items: list[ResultRow] = []
        position = cursor
        if size and cursor < total:
            first, last = cursor // size, (min(cursor + limit, total) - 1) // size
            names = [f"{PREFIX}:{job_id}:chunk:{k}" for k in range(first, last + 1)]
            found = await self._redis.mget(names)
            for index, raw in zip(range(first, last + 1), found, strict=True):
                start = index * size
                if raw is None:
                    if status in _UNFINISHED:
                        break  # not written yet: the next page starts here
                    position = min(start + size, total)  # a chunk that never came
                    continue
                chunk = orjson.loads(raw)
                rows = chunk["rows"][max(cursor - start, 0) : cursor + limit - start]
                for offset, (score, error) in enumerate(rows, start=max(cursor, start)):
                    items.append(self._row(offset, score, error, chunk["version"]))
                position = max(position, start + len(chunk["rows"]))
                position = min(position, cursor + limit)
        # Finished: no more rows will come (none at all if it failed before planning).
        done = status not in _UNFINISHED and (position >= total or not size)
        return ResultsPage(
            id=job_id,
            status=status,  # type: ignore[arg-type]
            items=items,
            next_cursor=None if done else str(position),
        )

    def _row(self, index: int, score: float | None, error: str | None, version: str) -> ResultRow:
        if score is None:
            return ResultRow(index=index, error=error)
        label = label_for(score, self.labels, self.threshold)
        return ResultRow(index=index, score=score, label=label, version=version)


def job_out(record: dict[str, str]) -> JobOut:
    total, chunks = int(record.get("total") or 0), int(record.get("chunks") or 0)
    done = int(record.get("chunks_done") or 0)
    finished = _time(record.get("finished_at"))
    ttl = int(record.get("result_ttl") or 0)
    progress = done / chunks if chunks else 0.0
    return JobOut(
        id=record["id"],
        status=record["status"],  # type: ignore[arg-type]
        model=record["model"],
        version=record.get("version", ""),
        progress=progress,
        counts=JobCounts(
            total=total,
            scored=int(record.get("scored") or 0),
            failed=int(record.get("failed") or 0),
            chunks=chunks,
            chunks_done=done,
        ),
        error=record.get("error") or None,
        created_at=_time(record["created_at"]) or datetime.now(UTC),
        started_at=_time(record.get("started_at")),
        finished_at=finished,
        expires_at=datetime.fromtimestamp(finished.timestamp() + ttl, UTC) if finished else None,
        results=f"/v1/jobs/{record['id']}/results",
    )


def get_jobs(request: Request, gateway: GatewayDep) -> JobQueue:
    """The app's JobQueue, created on first use (close it with `close_jobs`)."""
    queue: JobQueue | None = getattr(request.app.state, "jobs", None)
    if queue is None:
        queue = request.app.state.jobs = JobQueue(gateway.settings, JobSettings())
    return queue


async def close_jobs(app: FastAPI) -> None:
    queue: JobQueue | None = getattr(app.state, "jobs", None)
    if queue is not None:
        await queue.close()
        app.state.jobs = None


JobsDep = Annotated[JobQueue, Depends(get_jobs)]
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The id POST returned.")]

_ERRORS = error_responses(401, 403, 404, 413, 422, 429, 503)


async def _redis_call(coro: Any) -> Any:
    try:
        return await coro
    except (redis.exceptions.RedisError, OSError) as error:
        log.warning("job store unavailable", error=repr(error))
        raise Unavailable("the job store is unavailable", retry_after=1.0) from None


# --- routes ---------------------------------------------------------------------------------


@router.post("", status_code=202, responses=_ERRORS)
async def create_job(body: JobCreate, caller: PredictCaller, jobs: JobsDep) -> JSONResponse:
    """Score many texts (inline, or a dataset file the worker reads) in the background;
    answers at once with the job id. Poll GET /v1/jobs/{id}; read GET .../results."""
    if body.texts is not None:
        body.texts = check_texts(
            body.texts, max_chars=jobs.max_text_chars, max_count=jobs.settings.max_inline_texts
        )
    job_id = await _redis_call(jobs.create(body, caller.key_id))
    return JSONResponse(
        JobAccepted(id=job_id, status="queued").model_dump(),
        status_code=202,
        headers={"Location": f"/v1/jobs/{job_id}"},
    )


@router.get("/{job_id}", responses=_ERRORS)
async def get_job(job_id: JobId, caller: PredictCaller, jobs: JobsDep) -> JobOut:
    """Status, progress, row counts and where the results are."""
    return job_out(await _redis_call(jobs.get(job_id, caller)))


@router.get("/{job_id}/results", responses=_ERRORS)
async def get_results(
    job_id: JobId,
    caller: PredictCaller,
    jobs: JobsDep,
    cursor: Annotated[str, Query(pattern=r"^[0-9]{1,10}$", description="Row to start at.")] = "0",
    limit: Annotated[int, Query(ge=1, le=100_000)] = 100,
) -> ResultsPage:
    """Results in row order, `limit` rows from `cursor` (at most max_page_size)."""
    record = await _redis_call(jobs.get(job_id, caller))
    size = min(limit, jobs.settings.max_page_size)
    page: ResultsPage = await _redis_call(jobs.rows(record, int(cursor), size))
    return page


@router.delete("/{job_id}", responses=error_responses(401, 403, 404, 409, 429, 503))
async def cancel_job(job_id: JobId, caller: PredictCaller, jobs: JobsDep) -> JobOut:
    """Cancel a queued or running job (chunks already scored stay readable); 409 when it
    already finished. Cancelling twice is fine."""
    return job_out(await _redis_call(jobs.cancel(job_id, caller)))
