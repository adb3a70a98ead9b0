"""POST /v1/ask end to end: the real service, the real anthropic SDK against the local
Messages-API server, the vector store stand-in over gRPC, real Redis."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import orjson
import pytest

from kloop_rag.prompt import SYSTEM_PROMPT
from kloop_rag.testing.fake_anthropic import Fault, api_key_of, outside_documents, text_of

from ...conftest import API_KEY, COLLECTION, SPANS, create_key

QUESTION = "What does the kloop gateway check on every request?"


def ask(url: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/ask", json=body, timeout=30, **kwargs)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], orjson.loads(lines["data"])))
    return events


def test_answer_cites_only_retrieved_chunks(make_rag, fake_llm) -> None:
    service = make_rag()
    response = ask(service.url, {"question": QUESTION, "collection": COLLECTION, "k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "generative"
    assert body["cached"] is False
    # The fake answers from document [1], cites [1], [2] and a [42] that was never
    # retrieved: [42] is dropped.
    assert body["answer"].startswith("The gateway is the public front door of kloop [1].")
    assert "[42]" in body["answer"]
    assert [c["ref"] for c in body["citations"]] == [1, 2]
    first = body["citations"][0]
    assert first["id"] == "docs/gateway.md#0"
    assert first["source"] == "docs/gateway.md"
    assert first["document_id"] == "docs/gateway.md"
    assert first["chunk"] == 0
    assert first["score"] > 0
    assert body["retrieved"] <= 3
    usage = body["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    # First call writes the system prompt to the prompt cache (priced 1.25x input).
    assert usage["cache_creation_input_tokens"] > 0
    assert usage["cost_usd"] > 0
    # What went to Claude: model, cached system prompt, documents in the user turn.
    (request,) = fake_llm.requests
    assert request.body["model"] == service.settings.model
    assert request.body["system"] == [
        {"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}}
    ]
    assert api_key_of(request.headers) == API_KEY
    assert request.headers["anthropic-version"]


def test_second_call_reads_the_prompt_cache_and_costs_less(make_rag, fake_llm) -> None:
    service = make_rag(cache_enabled=False)
    first = ask(service.url, {"question": QUESTION, "collection": COLLECTION}).json()["usage"]
    second = ask(service.url, {"question": QUESTION, "collection": COLLECTION}).json()["usage"]
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"] > 0
    assert second["cache_creation_input_tokens"] == 0
    assert second["cost_usd"] < first["cost_usd"]


def test_stream_sends_deltas_then_citations_and_usage(make_rag, fake_llm) -> None:
    service = make_rag()
    with httpx.stream(
        "POST",
        f"{service.url}/v1/ask",
        json={"question": QUESTION, "collection": COLLECTION, "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"delta"} and len(kinds) > 3
    text = "".join(data["text"] for kind, data in events if kind == "delta")
    final = events[-1][1]
    assert final["answer"] == text
    assert [c["ref"] for c in final["citations"]] == [1, 2]
    assert final["usage"]["output_tokens"] > 0 and final["usage"]["input_tokens"] > 0
    assert final["mode"] == "generative"
    assert fake_llm.requests[0].body["stream"] is True


def test_answer_cache_hit_skips_the_llm(make_rag, fake_llm) -> None:
    service = make_rag()
    body = {"question": QUESTION, "collection": COLLECTION}
    first = ask(service.url, body).json()
    # Same question up to case and spacing: same key.
    again = ask(
        service.url,
        {**body, "question": "  what does the kloop GATEWAY   check on every request? "},
    )
    assert again.status_code == 200
    second = again.json()
    assert second["cached"] is True
    assert second["answer"] == first["answer"]
    assert second["citations"] == first["citations"]
    assert len(fake_llm.requests) == 1
    # Streamed cache hit: one delta with the whole text, then done.
    with httpx.stream("POST", f"{service.url}/v1/ask", json={**body, "stream": True}) as r:
        events = sse_events(r.read().decode())
    assert [k for k, _ in events] == ["delta", "done"]
    assert events[1][1]["cached"] is True
    assert len(fake_llm.requests) == 1
    metrics = httpx.get(f"{service.url}/metrics").text
    assert re.search(r'kloop_rag_answer_cache_lookups_total\{result="hit"\} [1-9]', metrics)


def test_changed_or_deleted_document_is_never_served_stale(make_rag, fake_llm, store) -> None:
    service = make_rag()
    body = {"question": QUESTION, "collection": COLLECTION}
    ask(service.url, body)
    # Edit the chunk (same id, new text): the key changes, the LLM is asked again.
    edited = store.collections[COLLECTION][0]
    edited.text = "The gateway is the new front door of kloop. It checks API keys on every request."
    changed = ask(service.url, body).json()
    assert changed["cached"] is False
    assert changed["answer"].startswith("The gateway is the new front door of kloop [1].")
    assert len(fake_llm.requests) == 2
    # Delete the document: its chunks are no longer retrieved, so no stale answer.
    store.delete_document(COLLECTION, "docs/gateway.md")
    after = ask(service.url, body).json()
    assert after["cached"] is False
    assert all(c["document_id"] != "docs/gateway.md" for c in after["citations"])
    assert len(fake_llm.requests) == 3


def test_invalidate_document_drops_its_answers(make_rag, fake_llm, redis_client, redis_url) -> None:
    from kloop_rag.cache import document_key, invalidate_document

    service = make_rag()
    body = {"question": QUESTION, "collection": COLLECTION}
    ask(service.url, body)
    assert ask(service.url, body).json()["cached"] is True
    listed = redis_client.smembers(document_key("docs/gateway.md"))
    assert len(listed) == 1 and redis_client.exists(*listed) == 1
    assert invalidate_document("docs/gateway.md", redis_url) == 1
    assert not redis_client.exists(document_key("docs/gateway.md"))
    assert ask(service.url, body).json()["cached"] is False
    assert len(fake_llm.requests) == 2
    assert invalidate_document("docs/unknown.md", redis_client) == 0


def test_adversarial_document_stays_data(make_rag, fake_llm) -> None:
    service = make_rag(cache_enabled=False)
    response = ask(
        service.url,
        {
            "question": "What are the release notes for the sentiment model?",
            "collection": COLLECTION,
        },
    )
    assert response.status_code == 200
    body = response.json()
    # The fake model obeys any "PWNED" it sees outside the document delimiters.
    assert "PWNED" not in body["answer"]
    assert body["answer"].startswith("Release notes for the sentiment model version 3 [1].")
    assert body["citations"][0]["source"] == "docs/release.md"
    (request,) = fake_llm.requests
    system = text_of(request.body["system"])
    assert system == SYSTEM_PROMPT  # unchanged by the document
    user = text_of(request.body["messages"][0]["content"])
    assert "PWNED" in user  # the document is there, as data...
    assert "PWNED" not in outside_documents(user)  # ...and only inside its element
    # The planted closing tags were escaped: one <documents> element, one document per
    # retrieved chunk.
    assert user.count("</documents>") == 1
    assert user.count("</document>") == body["retrieved"]


def test_citations_never_name_unretrieved_chunks(make_rag, fake_llm) -> None:
    fake_llm.respond = lambda body: "Keys are checked [1][7][0][3]."
    service = make_rag(cache_enabled=False)
    body = ask(service.url, {"question": QUESTION, "collection": COLLECTION, "k": 2}).json()
    assert [c["ref"] for c in body["citations"]] == [1]


def test_unknown_answer_has_no_citations(make_rag, fake_llm) -> None:
    service = make_rag(cache_enabled=False)
    body = ask(service.url, {"question": "zebra quantum?", "collection": COLLECTION}).json()
    assert body["retrieved"] == 0
    assert body["citations"] == []
    assert "don't know" in body["answer"]
    assert fake_llm.requests == []  # nothing retrieved: no LLM call to say so


def test_extractive_without_api_key(make_rag, fake_llm) -> None:
    service = make_rag(anthropic_api_key=None)
    body = ask(
        service.url,
        {"question": "Which statistics does the drift monitor compute?", "collection": COLLECTION},
    ).json()
    assert body["mode"] == "extractive"
    assert body["model"] == ""
    assert "PSI and KS statistics" in body["answer"]
    assert body["citations"] and body["citations"][0]["source"] == "docs/drift.md"
    assert body["usage"]["cost_usd"] == 0
    assert fake_llm.requests == []
    metrics = httpx.get(f"{service.url}/metrics").text
    assert re.search(r"kloop_rag_extractive_answers_total [1-9]", metrics)


def test_extractive_by_setting_even_with_a_key(make_rag, fake_llm) -> None:
    service = make_rag(mode="extractive")
    with httpx.stream(
        "POST",
        f"{service.url}/v1/ask",
        json={"question": QUESTION, "collection": COLLECTION, "stream": True},
    ) as r:
        events = sse_events(r.read().decode())
    assert events[-1][0] == "done" and events[-1][1]["mode"] == "extractive"
    assert "checks API keys" in events[-1][1]["answer"]
    assert fake_llm.requests == []


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"question": "", "collection": COLLECTION},
        {"question": "   \n", "collection": COLLECTION},
        {"collection": COLLECTION},
        {"question": "q?", "collection": "bad name/.."},
        {"question": "q?", "collection": COLLECTION, "k": 0},
        {"question": "q?", "collection": COLLECTION, "k": 1000},
        {"question": "\ud800 lone", "collection": COLLECTION},
    ],
)
def test_bad_input_is_422(make_rag, fake_llm, body) -> None:
    service = make_rag()
    response = httpx.post(
        f"{service.url}/v1/ask",
        content=orjson.dumps(body, option=orjson.OPT_PASSTHROUGH_DATACLASS)
        if "\ud800" not in str(body.get("question"))
        else b'{"question": "\\ud800 lone", "collection": "kloop-docs"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "unprocessable"
    assert fake_llm.requests == []


def test_invalid_utf8_body_is_422(make_rag) -> None:
    service = make_rag()
    response = httpx.post(
        f"{service.url}/v1/ask",
        content=b'{"question": "caf\xe9?", "collection": "kloop-docs"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "UTF-8" in response.json()["error"]["message"]


def test_unknown_collection_is_404(make_rag) -> None:
    service = make_rag()
    response = ask(service.url, {"question": QUESTION, "collection": "nope"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_vector_store_down_is_503_with_retry_after(make_rag) -> None:
    service = make_rag(vectorstore_addr="127.0.0.1:1")
    started = time.monotonic()
    response = ask(service.url, {"question": QUESTION, "collection": COLLECTION})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "vector store" in response.json()["error"]["message"]
    assert time.monotonic() - started < 3


def test_slow_vector_store_is_503_not_a_hang(make_rag, store) -> None:
    store.delay = 1.0
    service = make_rag(vectorstore_timeout_seconds=0.2)
    response = ask(service.url, {"question": QUESTION, "collection": COLLECTION})
    assert response.status_code == 503
    assert "retry-after" in response.headers


# --- LLM faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [529, 500, 429])
def test_llm_errors_are_retried_then_answered(make_rag, fake_llm, status) -> None:
    fake_llm.faults.extend([Fault(status=status, retry_after_ms=10)] * 2)
    service = make_rag(llm_max_retries=2)
    response = ask(service.url, {"question": QUESTION, "collection": COLLECTION})
    assert response.status_code == 200, response.text
    assert len(fake_llm.requests) == 3


@pytest.mark.parametrize("stream", [False, True])
def test_llm_errors_beyond_retries_are_503(make_rag, fake_llm, stream) -> None:
    fake_llm.faults.extend([Fault(status=529, retry_after_ms=10)] * 5)
    service = make_rag(llm_max_retries=2)
    response = ask(service.url, {"question": QUESTION, "collection": COLLECTION, "stream": stream})
    assert response.status_code == 503
    assert "retry-after" in response.headers
    assert "overloaded" in response.json()["error"]["message"]
    assert len(fake_llm.requests) == 3
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'kloop_rag_llm_requests_total{model="claude-sonnet-5-5",outcome="overloaded"}' in metrics


def test_llm_backoff_is_exponential(make_rag, fake_llm) -> None:
    # No retry-after from the server: the SDK's own backoff (0.5 s, then 1 s, each
    # with up to 25% jitter off).
    fake_llm.faults.extend([Fault(status=500)] * 2)
    service = make_rag(llm_max_retries=2)
    started = time.monotonic()
    response = ask(service.url, {"question": QUESTION, "collection": COLLECTION})
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert 1.1 <= elapsed < 5


def test_llm_timeout_is_retried_then_503(make_rag, fake_llm) -> None:
    fake_llm.faults.extend([Fault(delay=3.0)] * 3)
    service = make_rag(llm_timeout_seconds=0.3, llm_max_retries=1)
    started = time.monotonic()
    response = ask(service.url, {"question": QUESTION, "collection": COLLECTION})
    assert response.status_code == 503
    assert "did not answer in time" in response.json()["error"]["message"]
    assert len(fake_llm.requests) == 2
    assert time.monotonic() - started < 3


def test_llm_deadline_bounds_the_whole_answer(make_rag, fake_llm) -> None:
    fake_llm.faults.extend([Fault(delay=3.0)] * 3)
    service = make_rag(llm_timeout_seconds=10, llm_deadline_seconds=0.5)
    started = time.monotonic()
    response = ask(service.url, {"question": QUESTION, "collection": COLLECTION})
    assert response.status_code == 503
    assert time.monotonic() - started < 2


# --- auth and limits ------------------------------------------------------------------------


def test_auth_and_rate_limits(make_rag, redis_client) -> None:
    service = make_rag(auth_enabled=True, mode="extractive")
    body = {"question": QUESTION, "collection": COLLECTION}
    assert ask(service.url, body).status_code == 401
    assert (
        ask(service.url, body, headers={"X-API-Key": "kloop_000000000000_nope"}).status_code == 401
    )
    predict_only = create_key(redis_client, "predict")
    assert ask(service.url, body, headers={"X-API-Key": predict_only}).status_code == 403
    token = create_key(redis_client, "ask", rate=0.5, burst=2)
    headers = {"Authorization": f"Bearer {token}"}
    assert ask(service.url, body, headers=headers).status_code == 200
    assert ask(service.url, body, headers=headers).status_code == 200
    limited = ask(service.url, body, headers=headers)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1


# --- accounting ------------------------------------------------------------------------------


def test_metrics_and_genai_spans(make_rag, fake_llm) -> None:
    SPANS.clear()
    service = make_rag(cache_enabled=False)
    usage = ask(service.url, {"question": QUESTION, "collection": COLLECTION}).json()["usage"]
    spans = {span.name: span for span in SPANS.get_finished_spans()}
    chat = spans[f"chat {service.settings.model}"]
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.system"] == "anthropic"
    assert chat.attributes["gen_ai.request.model"] == service.settings.model
    assert chat.attributes["gen_ai.usage.input_tokens"] == usage["input_tokens"]
    assert chat.attributes["gen_ai.usage.output_tokens"] == usage["output_tokens"]
    assert chat.attributes["gen_ai.response.id"].startswith("msg_fake")
    retrieval = spans["retrieval"]
    assert retrieval.attributes["gen_ai.data_source.id"] == COLLECTION
    # Both in the request's trace.
    assert chat.context.trace_id == retrieval.context.trace_id
    metrics = httpx.get(f"{service.url}/metrics").text
    for series in (
        'kloop_rag_llm_tokens_total{kind="input",model="claude-sonnet-5-5"}',
        'kloop_rag_llm_tokens_total{kind="cache_creation",model="claude-sonnet-5-5"}',
        'kloop_rag_llm_cost_usd_total{model="claude-sonnet-5-5"}',
        'kloop_rag_stage_duration_seconds_count{mode="generative",stage="retrieve"}',
        'kloop_rag_stage_duration_seconds_count{mode="generative",stage="generate"}',
        'kloop_rag_stage_duration_seconds_count{mode="generative",stage="total"}',
    ):
        assert series in metrics, series


def test_api_key_is_never_logged(make_rag, capsys) -> None:
    from kloop_core.settings import redacted_dict

    service = make_rag()
    assert API_KEY not in str(redacted_dict(service.settings))
    assert API_KEY not in repr(service.settings)
