from __future__ import annotations

from kloop_rag.chunks import Chunk
from kloop_rag.extractive import NO_ANSWER, best_sentences, extractive_answer, sentences


def test_best_sentences_are_cited_with_their_chunk() -> None:
    chunks = [
        Chunk("a", "Kloop trains models. The gateway checks API keys on every request.", 2.0),
        Chunk("b", "Drift is measured with PSI. Rate limits use a token bucket in Redis.", 1.0),
    ]
    answer = extractive_answer("How does the gateway check API keys?", chunks, 1)
    assert answer == "The gateway checks API keys on every request. [1]"
    picked = best_sentences("token bucket rate limits", chunks, 3)
    assert picked[0].ref == 2 and "token bucket" in picked[0].text


def test_no_overlap_says_it_does_not_know() -> None:
    chunks = [Chunk("a", "Kloop trains models.", 1.0)]
    assert extractive_answer("zebra?", chunks, 3) == NO_ANSWER
    assert extractive_answer("what is it?", chunks, 3) == NO_ANSWER  # stopwords only
    assert extractive_answer("models?", [], 3) == NO_ANSWER


def test_sentences_split_on_ends_and_markdown_lines() -> None:
    assert sentences("One. Two!\n\n- three\n- four") == ["One.", "Two!", "- three", "- four"]


def test_words_match_by_stem_and_headings_are_not_answers() -> None:
    chunks = [
        Chunk("a", "# How kloop promotes models\n\nThe gate promotes a candidate that wins.", 1.0)
    ]
    picked = best_sentences("How is a retrained model promoted?", chunks, limit=3)
    assert [e.text for e in picked] == ["The gate promotes a candidate that wins."]
