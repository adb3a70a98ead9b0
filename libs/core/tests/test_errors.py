from __future__ import annotations

import pickle
from typing import Any

import grpc
import pytest
import redis

from kloop_core import errors
from kloop_core.errors import (
    ERROR_CODE_KEY,
    RETRY_AFTER_KEY,
    KloopError,
    error_for_unexpected,
    error_from_rpc,
    error_metadata,
)

S = grpc.StatusCode
CONTRACT = [
    (errors.InvalidArgument, 400, S.INVALID_ARGUMENT, "invalid_argument"),
    (errors.PayloadTooLarge, 413, S.INVALID_ARGUMENT, "payload_too_large"),
    (errors.Unprocessable, 422, S.INVALID_ARGUMENT, "unprocessable"),
    (errors.NotFound, 404, S.NOT_FOUND, "not_found"),
    (errors.AlreadyExists, 409, S.ALREADY_EXISTS, "already_exists"),
    (errors.Conflict, 409, S.ABORTED, "conflict"),
    (errors.FailedPrecondition, 400, S.FAILED_PRECONDITION, "failed_precondition"),
    (errors.Unauthenticated, 401, S.UNAUTHENTICATED, "unauthenticated"),
    (errors.PermissionDenied, 403, S.PERMISSION_DENIED, "permission_denied"),
    (errors.ResourceExhausted, 429, S.RESOURCE_EXHAUSTED, "resource_exhausted"),
    (errors.Unavailable, 503, S.UNAVAILABLE, "unavailable"),
    (errors.DeadlineExceeded, 504, S.DEADLINE_EXCEEDED, "deadline_exceeded"),
    (errors.KloopError, 500, S.INTERNAL, "internal"),
]


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    """What a client sees: a grpc.Call-like error."""

    def __init__(self, code: Any, details: str, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


@pytest.mark.parametrize(("cls", "http", "grpc_code", "code"), CONTRACT)
def test_contract_table(cls: type[KloopError], http: int, grpc_code: Any, code: str) -> None:
    assert (cls.http_status, cls.grpc_code, cls.code) == (http, grpc_code, code)
    error = cls("msg")
    assert isinstance(error, KloopError) and str(error) == "msg"
    assert error.to_dict() == {"code": code, "message": "msg"}


def test_retry_after_defaults_for_429_and_503_only() -> None:
    assert errors.Unavailable("x").retry_after == 1.0
    assert errors.ResourceExhausted("x", retry_after=7).retry_after == 7
    assert errors.NotFound("x").retry_after is None
    assert errors.Unavailable("x", retry_after=0.2).retry_after_header() == "1"  # rounded up
    assert errors.NotFound("x").retry_after_header() is None


def test_pickle_keeps_details_and_retry_after() -> None:
    error = errors.Unavailable("down", details={"dep": "redis"}, retry_after=3)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  # our own bytes
    assert type(copy) is errors.Unavailable
    assert (copy.message, copy.details, copy.retry_after) == ("down", {"dep": "redis"}, 3)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (S.INVALID_ARGUMENT, errors.InvalidArgument),
        (S.OUT_OF_RANGE, errors.InvalidArgument),
        (S.NOT_FOUND, errors.NotFound),
        (S.ALREADY_EXISTS, errors.AlreadyExists),
        (S.ABORTED, errors.Conflict),
        (S.FAILED_PRECONDITION, errors.FailedPrecondition),
        (S.UNAUTHENTICATED, errors.Unauthenticated),
        (S.PERMISSION_DENIED, errors.PermissionDenied),
        (S.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (S.UNAVAILABLE, errors.Unavailable),
        (S.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (S.UNIMPLEMENTED, errors.Unimplemented),
        (S.CANCELLED, errors.Cancelled),
        (S.INTERNAL, errors.Internal),
        (S.UNKNOWN, errors.Internal),
        (S.DATA_LOSS, errors.Internal),
    ],
)
def test_error_from_rpc_by_status(code: Any, expected: type[KloopError]) -> None:
    mapped = error_from_rpc(FakeRpcError(code, "server said so"))
    assert type(mapped) is expected and mapped.message == "server said so"


def test_error_from_rpc_uses_the_kloop_code_and_retry_after() -> None:
    too_large = errors.PayloadTooLarge("too big")
    mapped = error_from_rpc(FakeRpcError(S.INVALID_ARGUMENT, "too big", error_metadata(too_large)))
    assert type(mapped) is errors.PayloadTooLarge

    busy = FakeRpcError(S.RESOURCE_EXHAUSTED, "busy", ((RETRY_AFTER_KEY, "4.5"),))
    assert error_from_rpc(busy).retry_after == 4.5

    # A code claim that contradicts the status is ignored.
    lying = FakeRpcError(S.NOT_FOUND, "x", ((ERROR_CODE_KEY, "payload_too_large"),))
    assert type(error_from_rpc(lying)) is errors.NotFound
    garbage = FakeRpcError(S.UNAVAILABLE, "x", ((RETRY_AFTER_KEY, "soon"),))
    assert error_from_rpc(garbage).retry_after == 1.0  # falls back to the class default


def test_unexpected_errors_never_carry_their_text() -> None:
    internal = error_for_unexpected(ValueError("SELECT * FROM secrets"), "r1")
    assert type(internal) is errors.Internal
    assert internal.message == "internal error (request id r1)"
    down = error_for_unexpected(redis.ConnectionError("10.0.0.1:6379 refused"), None)
    assert type(down) is errors.Unavailable and "10.0.0.1" not in down.message
    slow = error_for_unexpected(FakeRpcError(S.DEADLINE_EXCEEDED, "late"), "r2")
    assert type(slow) is errors.DeadlineExceeded
