"""Chunking by structure: properties over generated documents, and known shapes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kloop_worker.chunking import (
    Chunk,
    ChunkSpec,
    chunk_document,
    format_of,
    markdown_sections,
)

WORDS = st.sampled_from(
    ["alpha", "beta", "gamma", "delta.", "end!", "why?", "x" * 37, "über", "日本語。", "a-b"]
)
SENTENCE = st.lists(WORDS, min_size=1, max_size=30).map(" ".join)
PARAGRAPH = st.lists(SENTENCE, min_size=1, max_size=6).map(" ".join)
HEADING = st.tuples(st.integers(1, 4), st.lists(WORDS, min_size=1, max_size=4)).map(
    lambda t: "#" * t[0] + " " + " ".join(t[1])
)
BLOCK = st.one_of(
    PARAGRAPH,
    HEADING,
    st.lists(SENTENCE, min_size=1, max_size=4).map(lambda xs: "\n".join(f"- {x}" for x in xs)),
    PARAGRAPH.map(lambda p: f"```\n{p}\n```"),
)
NEWLINES = st.sampled_from(["\n\n", "\n", "\n\n\n", "\r\n\r\n", "\n \n"])


@st.composite
def documents(draw: st.DrawFn) -> str:
    blocks = draw(st.lists(BLOCK, min_size=1, max_size=12))
    seps = draw(st.lists(NEWLINES, min_size=len(blocks), max_size=len(blocks)))
    return "".join(b + s for b, s in zip(blocks, seps, strict=True))


@st.composite
def specs(draw: st.DrawFn) -> ChunkSpec:
    size = draw(st.integers(20, 400))
    return ChunkSpec(size, draw(st.integers(0, size // 2)))


def _covered(text: str, chunks: list[Chunk]) -> None:
    seen = bytearray(len(text))
    for c in chunks:
        assert text[c.start : c.end] == c.text
        seen[c.start : c.end] = b"\x01" * (c.end - c.start)
    missing = [i for i, ch in enumerate(text) if not seen[i] and not ch.isspace()]
    assert not missing, f"characters in no chunk at {missing[:10]}"


@settings(max_examples=150, deadline=None)
@given(documents(), specs(), st.sampled_from(["markdown", "text"]))
def test_every_character_is_in_a_chunk_and_sizes_are_bounded(
    text: str, spec: ChunkSpec, fmt: str
) -> None:
    chunks = chunk_document(text, fmt, spec)  # type: ignore[arg-type]
    _covered(text, chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert 0 < len(c.text) <= spec.max_chars
        assert c.text.strip()


@settings(max_examples=150, deadline=None)
@given(documents(), specs(), st.sampled_from(["markdown", "text"]))
def test_consecutive_chunks_of_a_section_overlap_as_configured(
    text: str, spec: ChunkSpec, fmt: str
) -> None:
    chunks = chunk_document(text, fmt, spec)  # type: ignore[arg-type]
    for before, after in itertools.pairwise(chunks):
        if after.start > before.end:  # only whitespace between (a blank chunk dropped)
            assert not text[before.end : after.start].strip()
            continue
        overlap = before.end - after.start
        # Within a section: exactly the configured overlap (unless the previous chunk
        # is shorter); across a heading: none.
        assert overlap in (0, min(spec.overlap, before.end - before.start)) or (
            overlap < spec.overlap and after.heading == before.heading
        )
        if after.heading != before.heading:
            assert overlap == 0


def test_overlap_is_exact_inside_a_long_paragraph() -> None:
    text = " ".join(f"word{i:03d}" for i in range(300))  # 2399 characters, no structure
    chunks = chunk_document(text, "text", ChunkSpec(200, 50))
    assert len(chunks) > 10
    for before, after in itertools.pairwise(chunks):
        assert before.end - after.start == 50
        assert text[after.start : after.start + 50] == before.text[-50:]
        # Cut at whitespace: every chunk's new part starts at a word.
        assert text[after.start + 50 - 1].isspace()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["Intro", "Setup", "Use"]))))
def test_markdown_chunks_carry_their_heading_path(headings: list[tuple[int, str]]) -> None:
    text = "".join(
        f"{'#' * level} {title}\n\nSome text about {title}.\n\n" for level, title in headings
    )
    chunks = chunk_document(text, "markdown", ChunkSpec(500, 50))
    assert len(chunks) == len(headings)
    path: list[tuple[int, str]] = []
    for chunk, (level, title) in zip(chunks, headings, strict=True):
        path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
        assert chunk.heading == " > ".join(t for _, t in path)
        assert chunk.text.startswith(f"{'#' * level} {title}")


def test_markdown_blocks_are_kept_whole_when_they_fit() -> None:
    text = (
        "# Guide\n\nIntro paragraph.\n\n## Install\n\nRun this:\n\n```sh\npip install kloop\n"
        "# not a heading\n```\n\nThen check.\n\n## Use\n\nCall it.\n"
    )
    chunks = chunk_document(text, "markdown", ChunkSpec(1000, 100))
    assert [c.heading for c in chunks] == ["Guide", "Guide > Install", "Guide > Use"]
    assert "# not a heading" in chunks[1].text  # a comment in code, not a section
    small = chunk_document(text, "markdown", ChunkSpec(48, 0))
    fence = "```sh\npip install kloop\n# not a heading\n```\n\n"
    assert any(c.text == fence for c in small), [c.text for c in small]


def test_plain_text_splits_at_paragraphs() -> None:
    paragraphs = [f"Paragraph {i} " + "words " * 10 for i in range(6)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = chunk_document(text, "text", ChunkSpec(140, 0))
    assert all(c.heading == "" for c in chunks)
    for c in chunks:
        assert c.text.startswith("Paragraph")  # never in the middle of one


def test_setext_headings_and_crlf_sections() -> None:
    text = "Title\r\n=====\r\n\r\nbody one\r\n\r\nPart\r\n----\r\n\r\nbody two\r\n"
    sections = markdown_sections(text)
    assert [s.heading for s in sections] == ["Title", "Title > Part"]
    assert text[sections[1].start :].startswith("Part")


def test_tokens_unit_and_spec_validation() -> None:
    assert ChunkSpec.of(100, 10, "tokens") == ChunkSpec(400, 40)
    assert ChunkSpec.of(100, 10, "chars") == ChunkSpec(100, 10)
    with pytest.raises(ValueError, match="overlap"):
        ChunkSpec(100, 100)
    assert format_of("docs/a.MD") == "markdown" and format_of("notes.txt") == "text"
    assert format_of("notes.txt", "markdown") == "markdown"
    assert chunk_document("", "markdown", ChunkSpec()) == []
    assert chunk_document(" \n\n ", "text", ChunkSpec()) == []
