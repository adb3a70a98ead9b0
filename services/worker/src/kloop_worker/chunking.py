"""Splitting a document into chunks by its structure, with overlap.

Markdown (parsed with markdown-it-py): a section starts at every heading and carries the
heading path ("Install > Linux"); inside a section, chunks are packed from whole blocks
(paragraphs, lists, code blocks, tables), a block too long for one chunk is cut at
sentence ends, then at whitespace, then anywhere. Plain text: the same, with paragraphs
(separated by blank lines) as blocks and no headings.

Every chunk is a slice `text[start:end]` of the document, so nothing is rewritten or
lost: the chunks of a section cover it contiguously, each new chunk repeating the last
`overlap` characters of the previous one (never across a section boundary), and no
chunk is longer than `max_chars`. Chunks holding only whitespace are dropped.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from markdown_it import MarkdownIt

Format = Literal["markdown", "text"]

# Approximate characters per token of English text (the embedder sees tokens).
CHARS_PER_TOKEN = 4
HEADING_SEPARATOR = " > "

_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])[\"')\]]*\s+")
_WHITESPACE = re.compile(r"\s+")
_NEWLINE = re.compile(r"\r\n?|\n")
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdown", ".mkd")


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    start: int  # offsets in the document (characters)
    end: int
    text: str
    heading: str  # the heading path, "" outside any heading


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    max_chars: int = 1500
    overlap: int = 200

    def __post_init__(self) -> None:
        if self.max_chars < 2:
            raise ValueError("max_chars must be at least 2")
        if not 0 <= self.overlap < self.max_chars:
            raise ValueError("overlap must be at least 0 and less than max_chars")

    @classmethod
    def of(cls, size: int, overlap: int, unit: Literal["chars", "tokens"]) -> ChunkSpec:
        factor = CHARS_PER_TOKEN if unit == "tokens" else 1
        return cls(size * factor, overlap * factor)

    @property
    def budget(self) -> int:
        """New characters per chunk (the rest repeats the previous chunk's end)."""
        return self.max_chars - self.overlap


def format_of(source: str, declared: str | None = None) -> Format:
    """markdown for *.md / *.markdown sources (or when declared), else plain text."""
    if declared in ("markdown", "text"):
        return declared  # type: ignore[return-value]
    return "markdown" if source.lower().endswith(_MARKDOWN_SUFFIXES) else "text"


# --- sections and blocks ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    start: int
    end: int
    heading: str
    # Offsets (inside (start, end)) where a block starts: preferred cut points.
    breaks: tuple[int, ...]


def _line_offsets(text: str) -> list[int]:
    # Lines as markdown-it counts them (it normalizes \r\n and \r to \n).
    return [0, *(m.end() for m in _NEWLINE.finditer(text))]


def markdown_sections(text: str) -> list[Section]:
    """Sections at each heading (with their heading path), blocks as break points."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    lines = _line_offsets(text)

    def offset(line: int) -> int:
        return lines[min(line, len(lines) - 1)]

    starts: list[tuple[int, str]] = [(0, "")]  # (section start, heading path)
    breaks: list[int] = []
    path: list[tuple[int, str]] = []  # (level, title)
    for i, token in enumerate(tokens):
        if token.level != 0 or token.map is None or token.nesting == -1:
            continue
        at = offset(token.map[0])
        if token.type == "heading_open":
            level = int(token.tag[1:])
            inline = tokens[i + 1] if i + 1 < len(tokens) else None
            title = _WHITESPACE.sub(" ", inline.content if inline else "").strip()
            path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
            heading = HEADING_SEPARATOR.join(t for _, t in path if t)
            if at == starts[-1][0]:
                starts[-1] = (at, heading)
            else:
                starts.append((at, heading))
        else:
            breaks.append(at)
    sections = []
    bounds = [s for s, _ in starts] + [len(text)]
    for (start, heading), end in zip(starts, bounds[1:], strict=True):
        inner = tuple(b for b in breaks if start < b < end)
        sections.append(Section(start, end, heading, inner))
    return sections


def text_sections(text: str) -> list[Section]:
    """One section; paragraphs (after blank lines) as break points."""
    breaks = tuple(m.end() for m in _BLANK_LINES.finditer(text) if 0 < m.end() < len(text))
    return [Section(0, len(text), "", breaks)]


# --- packing ------------------------------------------------------------------------------


def _cut(text: str, start: int, end: int, budget: int) -> Iterator[tuple[int, int]]:
    """[start, end) as contiguous pieces of at most `budget` characters, cut at sentence
    ends, else at whitespace, else anywhere."""
    while end - start > budget:
        limit = start + budget
        window = text[start:limit]
        cut = 0
        for pattern in (_SENTENCE_END, _WHITESPACE):
            found = [m.end() for m in pattern.finditer(window) if m.end() > 0]
            if found:
                cut = found[-1]
                break
        if cut <= 0:
            cut = budget
        yield start, start + cut
        start += cut
    if end > start:
        yield start, end


def _pieces(text: str, section: Section, budget: int) -> list[tuple[int, int]]:
    bounds = [section.start, *section.breaks, section.end]
    pieces: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(bounds):
        pieces.extend(_cut(text, a, b, budget))
    return pieces


def _pack(pieces: Sequence[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
    """Consecutive pieces merged greedily into spans of at most `budget` characters."""
    spans: list[tuple[int, int]] = []
    for a, b in pieces:
        if spans and b - spans[-1][0] <= budget:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return spans


def chunk_document(text: str, fmt: Format, spec: ChunkSpec) -> list[Chunk]:
    sections = markdown_sections(text) if fmt == "markdown" else text_sections(text)
    chunks: list[Chunk] = []
    for section in sections:
        spans = _pack(_pieces(text, section, spec.budget), spec.budget)
        for n, (a, b) in enumerate(spans):
            start = a if n == 0 else max(section.start, a - spec.overlap)
            piece = text[start:b]
            if piece.strip():
                chunks.append(Chunk(len(chunks), start, b, piece, section.heading))
    return chunks
