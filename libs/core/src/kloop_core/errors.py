"""One error contract for HTTP and gRPC.

Handlers raise a `KloopError` subclass; the gRPC interceptor and the FastAPI exception
handlers turn it into the matching status code and `{"error": {"code", "message"}}`
body. On the client side `error_from_rpc` turns a gRPC failure back into the same class,
so a gateway can re-raise a downstream error and keep its meaning.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import grpc
import redis.exceptions

# Trailing-metadata keys the server interceptor sets on failed calls.
RETRY_AFTER_KEY = "retry-after"
ERROR_CODE_KEY = "kloop-error-code"


class KloopError(Exception):
    """Base class: an internal error (500 / INTERNAL) unless a subclass says otherwise."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    # Used when the raiser gives no retry_after: the contract promises Retry-After on
    # every 429 and 503.
    default_retry_after: ClassVar[float | None] = None

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments are lost by Exception's default pickling; Celery pickles
        # task exceptions, so keep them.
        return (_rebuild, (type(self), self.message, self.details, self.retry_after))

    def retry_after_header(self) -> str | None:
        """Retry-After as HTTP wants it: whole seconds, rounded up."""
        if self.retry_after is None:
            return None
        return str(max(0, math.ceil(self.retry_after)))

    def to_dict(self) -> dict[str, Any]:
        """The `error` object of the HTTP error body."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


def _rebuild(
    cls: type[KloopError], message: str, details: dict[str, Any], retry_after: float | None
) -> KloopError:
    return cls(message, details=details, retry_after=retry_after)


class Internal(KloopError):
    """Explicit spelling of the base class, for `raise Internal(...)`."""


class InvalidArgument(KloopError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    code = "invalid_argument"


class PayloadTooLarge(KloopError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 413
    code = "payload_too_large"


class Unprocessable(KloopError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422
    code = "unprocessable"


class NotFound(KloopError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    code = "not_found"


class AlreadyExists(KloopError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409
    code = "already_exists"


class Conflict(KloopError):
    """Concurrent modification (optimistic locking lost): retry the read-modify-write."""

    grpc_code = grpc.StatusCode.ABORTED
    http_status = 409
    code = "conflict"


class FailedPrecondition(KloopError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400
    code = "failed_precondition"


class Unauthenticated(KloopError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    code = "unauthenticated"


class PermissionDenied(KloopError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    code = "permission_denied"


class ResourceExhausted(KloopError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    code = "resource_exhausted"
    default_retry_after = 1.0


class Unavailable(KloopError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    code = "unavailable"
    default_retry_after = 1.0


class DeadlineExceeded(KloopError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    code = "deadline_exceeded"


class Unimplemented(KloopError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501
    code = "unimplemented"


class Cancelled(KloopError):
    """The caller went away (499 is the de-facto "client closed request" status)."""

    grpc_code = grpc.StatusCode.CANCELLED
    http_status = 499
    code = "cancelled"


# Status code -> class when the server did not say which kloop error it was.
_BY_GRPC_CODE: dict[grpc.StatusCode, type[KloopError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.CANCELLED: Cancelled,
}
# `code` string -> class, to recover e.g. PayloadTooLarge from INVALID_ARGUMENT.
_KNOWN: tuple[type[KloopError], ...] = (PayloadTooLarge, Unprocessable, *_BY_GRPC_CODE.values())
_BY_CODE: dict[str, type[KloopError]] = {cls.code: cls for cls in _KNOWN}


def error_metadata(error: KloopError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that carries what a status code alone cannot."""
    metadata = [(ERROR_CODE_KEY, error.code)]
    if error.retry_after is not None:
        metadata.append((RETRY_AFTER_KEY, f"{error.retry_after:g}"))
    return tuple(metadata)


def error_from_rpc(e: grpc.RpcError) -> KloopError:
    """Turn a client-side gRPC failure into the matching KloopError.

    Keeps the server's message, its `retry-after` hint and, when the server is a kloop
    service, the exact class (413 vs 422 vs 400 all travel as INVALID_ARGUMENT).
    """
    code = _call_attr(e, "code") or grpc.StatusCode.UNKNOWN
    message = _call_attr(e, "details") or code.name.lower()
    metadata = dict(_call_attr(e, "trailing_metadata") or ())
    retry_after = _parse_seconds(metadata.get(RETRY_AFTER_KEY))
    cls = _BY_GRPC_CODE.get(code, Internal)
    claimed = _BY_CODE.get(str(metadata.get(ERROR_CODE_KEY, "")))
    if claimed is not None and claimed.grpc_code == code:
        cls = claimed
    return cls(str(message), retry_after=retry_after)


def _parse_seconds(raw: Any) -> float | None:
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _call_attr(e: grpc.RpcError, name: str) -> Any:
    # Not every RpcError is a grpc.Call (e.g. some raised by interceptors).
    method = getattr(e, name, None)
    return method() if callable(method) else None


# Only codes that say "nothing happened, try again later". DEADLINE_EXCEEDED is not
# retried: the call may have done its work, and the time budget is spent anyway, so
# retrying only multiplies load on a dependency that is already slow.
RETRYABLE_GRPC_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


def is_retryable_rpc_error(e: BaseException) -> bool:
    """UNAVAILABLE and RESOURCE_EXHAUSTED; see RETRYABLE_GRPC_CODES for why not others."""
    return isinstance(e, grpc.RpcError) and _call_attr(e, "code") in RETRYABLE_GRPC_CODES


def is_transient_error(e: BaseException) -> bool:
    """A dependency is down or overloaded and the request most likely did not happen."""
    if isinstance(e, grpc.RpcError):
        return is_retryable_rpc_error(e)
    return isinstance(
        e,
        Unavailable
        | ResourceExhausted
        | ConnectionError
        | TimeoutError
        | redis.exceptions.ConnectionError
        | redis.exceptions.TimeoutError,
    )


def retry_after_hint(e: BaseException) -> float | None:
    """The server's retry-after, from a KloopError or a gRPC error's trailing metadata."""
    if isinstance(e, KloopError):
        return e.retry_after
    if isinstance(e, grpc.RpcError):
        # Only what the server said: class defaults would delay every plain retry.
        for key, value in _call_attr(e, "trailing_metadata") or ():
            if key == RETRY_AFTER_KEY:
                return _parse_seconds(value)
    return None


def error_for_unexpected(e: BaseException, request_id: str | None) -> KloopError:
    """What a caller sees for an exception no handler turned into a KloopError.

    A dependency that is down becomes 503/UNAVAILABLE (fail fast, retry later), a
    downstream timeout 504/DEADLINE_EXCEEDED, anything else a generic 500/INTERNAL.
    The message never includes the exception text: it may hold internals or secrets;
    the request id lets an operator find the logged traceback.
    """
    suffix = f" (request id {request_id})" if request_id else ""
    if is_transient_error(e):
        return Unavailable(f"a dependency is unavailable{suffix}")
    if isinstance(e, grpc.RpcError) and _call_attr(e, "code") == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"a dependency did not answer in time{suffix}")
    return Internal(f"internal error{suffix}")
