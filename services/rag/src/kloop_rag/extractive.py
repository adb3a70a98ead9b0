"""Extractive answers (no LLM): the sentences of the retrieved chunks that share the most
words with the question, each followed by the [n] of its chunk. Pure functions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import snowballstemmer

from kloop_rag.chunks import Chunk

NO_ANSWER = "I don't know: none of the retrieved documents matches the question."

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n{2,}|\n(?=\s*[-*#|>]|\s*\d+\.)")
_STOPWORDS_TEXT = (
    "a an and are as at be by can could did do does for from has have how i if in is it its "
    "me my of on or should so that the their them then there these they this to was we what "
    "when where which who why will with would you your "
)
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


_STEMMER = snowballstemmer.stemmer("english")


def content_words(text: str) -> set[str]:
    """The text's words that carry meaning, stemmed (a question's "promoted" matches a
    document's "promotes")."""
    kept = [w for w in words(text) if w not in _STOPWORDS and len(w) > 1]
    return set(_STEMMER.stemWords(kept))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


@dataclass(frozen=True, slots=True)
class Extract:
    text: str
    ref: int  # 1-based index of the chunk
    score: float


def best_sentences(question: str, chunks: list[Chunk], limit: int) -> list[Extract]:
    """Up to `limit` sentences with at least one question word, best first: score =
    (question words covered, each weighted by how rare it is across the chunks'
    sentences)^2 / sqrt(sentence length), ties broken by retrieval rank then position."""
    query = content_words(question)
    if not query:
        return []
    candidates: list[tuple[int, int, str, set[str]]] = []
    for ref, chunk in enumerate(chunks, start=1):
        for position, sentence in enumerate(sentences(chunk.text)):
            # A heading names a topic; it answers nothing.
            if not sentence.startswith("#"):
                candidates.append((ref, position, sentence, content_words(sentence)))
    total = len(candidates)
    weight = {w: math.log(1 + total / (1 + sum(1 for c in candidates if w in c[3]))) for w in query}
    scored: list[tuple[float, int, int, str]] = []
    for ref, position, sentence, found in candidates:
        overlap = query & found
        if not overlap:
            continue
        # Squared coverage: one common word in a short sentence ("Is the model still
        # right?") must not beat several of the question's words in a longer one.
        coverage = sum(weight[w] for w in overlap)
        score = coverage * coverage / math.sqrt(max(1, len(words(sentence))))
        scored.append((score, ref, position, sentence))
    scored.sort(key=lambda s: (-s[0], s[1], s[2]))
    return [Extract(sentence, ref, score) for score, ref, _, sentence in scored[:limit]]


def extractive_answer(question: str, chunks: list[Chunk], limit: int) -> str:
    picked = best_sentences(question, chunks, limit)
    if not picked:
        return NO_ANSWER
    return " ".join(f"{e.text} [{e.ref}]" for e in picked)
