"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kloop_rag.service import COLLECTION_PATTERN


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, description="The question, in plain text.")
    collection: str = Field(
        pattern=COLLECTION_PATTERN, description="Vector store collection to answer from."
    )
    k: int | None = Field(
        default=None, ge=1, description="Chunks to retrieve (default: the service's)."
    )
    stream: bool = Field(
        default=False,
        description="Server-Sent Events: `delta` events with text, then one `done` event "
        "with the whole answer (or an `error` event).",
    )

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question must not be empty")
        return value


class CitationOut(BaseModel):
    ref: int = Field(description="The [n] the answer quotes.")
    id: str = Field(description="The chunk's id in the vector store.")
    source: str
    document_id: str
    chunk: int = Field(description="The chunk's index in its document (-1: unknown).")
    score: float
    snippet: str


class UsageOut(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cost_usd: float


class AskResponse(BaseModel):
    answer: str
    citations: list[CitationOut]
    mode: Literal["generative", "extractive"]
    model: str
    usage: UsageOut
    cached: bool
    retrieved: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


_DESCRIPTIONS = {
    401: "Missing or invalid API key.",
    403: "The API key lacks the `ask` scope.",
    404: "Unknown collection.",
    413: "Request body too large.",
    422: "Invalid request (e.g. empty question, body not UTF-8 JSON).",
    429: "Rate limit exceeded (Retry-After says when to retry).",
    503: "The vector store or the language model is unavailable (Retry-After).",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS.get(status, "Error.")}
        for status in statuses
    }
