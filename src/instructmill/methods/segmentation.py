"""Cut a text into translatable sentences while keeping its structure byte-exact.

Machine translation models translate sentences. Instruction data is not plain
sentences: it has line breaks, blank lines, list markers, fenced code blocks,
inline code, URLs, ``{placeholders}`` and numbers. :func:`segment_text` turns a text
into a :class:`Document`: a sequence of *literal* parts (kept byte for byte) and
*segments* (sentences to translate, with protected spans replaced by mask tokens).
:meth:`Document.render` puts translated segments back in place and restores the
masks; a mask or number that did not survive is reported, so the caller can give the
record ``status: "placeholder_lost"`` instead of emitting damaged text.

Sentence splitting uses pysbd (Sadvilkar & Neumann, 2020, "PySBD: Pragmatic Sentence
Boundary Disambiguation"), which has rules for English, Chinese, German, French,
Spanish, Russian, Japanese and more; other languages fall back to the English rules.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from .structure import INLINE_PATTERNS, split_blocks, split_cells

#: Fenced code block (``` or ~~~), from the opening fence line to the matching closing fence
#: (or to the end of the text when it is never closed).
FENCE_RE = re.compile(r"^([ \t]*)(`{3,}|~{3,})[^\n]*\n(?:.*?\n)??[ \t]*\2[ \t]*(?:\n|$)|^[ \t]*(`{3,}|~{3,}).*\Z",
                      re.MULTILINE | re.DOTALL)
#: A list marker or heading at the start of a line: "- ", "* ", "1. ", "2) ", "a) ", "## ", "> ", "[ ] ".
LINE_PREFIX_RE = re.compile(
    r"^[ \t]*(?:(?:[-*+•‣◦>]|\d{1,3}[.)]|\(\d{1,3}\)|[A-Za-z][.)](?=[ \t])|#{1,6}|\[[ xX]\])[ \t]+)*")

#: Spans that must come back byte-identical: inline code, URLs, e-mail addresses, template
#: placeholders ({name}, {{ name }}, ${name}, %s / %(name)s / {0}).
PROTECTED_PATTERNS = {
    "inline_code": r"`[^`\n]+`",
    "url": r"(?:https?|ftp)://[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]|www\.[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]",
    "email": r"[\w.+-]+@[\w-]+\.[\w.-]*\w",
    "placeholder": r"\{\{.*?\}\}|\$\{[^{}\n]*\}|\{[^{}\s]*\}|%\([A-Za-z_]\w*\)[sd]|%[sd]",
    # code identifiers in prose: snake_case (also markdown-escaped "match\\_found"), camelCase, calls
    # ("isin()", "df.head()"), shell variables ("$count"): translated, they stop naming the code
    "identifier": r"\b[A-Za-z][A-Za-z0-9]*(?:\\?_[A-Za-z0-9]+)+\b|\b[a-z]+(?:[A-Z][a-z0-9]+)+\b"
                  r"|\b[A-Za-z_][\w.]*\(\)|\$[A-Za-z_]\w*"
                  # a file extension or top-level domain named alone: ".edu", ".gov", ".py", ".json"
                  r"|(?<![\w.])\.(?:com|org|net|edu|gov|io|ai|dev|co|uk|py|js|ts|json|yaml|yml|csv|txt|md|html|css)\b",
}
#: ... plus the spans of :data:`~instructmill.methods.structure.INLINE_PATTERNS` (HTML tags,
#: hashtags, @mentions, ``C#``, short emphasis, emoji, inline JSON).
PROTECTED_RE = re.compile("|".join(f"(?:{v})" for v in {**PROTECTED_PATTERNS, **INLINE_PATTERNS}.values()))
#: Numbers are not masked (models translate "3 apples" better than "XPH0 apples") but checked:
#: every number of a segment must come back.
NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
#: Clause boundaries where an over-long sentence may be split.
CLAUSE_RE = re.compile(r"(?<=[,;:，；：、])\s*")


def has_words(text: str) -> bool:
    """True if ``text`` has a letter (any script): only then is it worth a model call."""
    return any(unicodedata.category(ch).startswith("L") for ch in text)


@dataclass
class Segment:
    """One translatable unit.

    Attributes:
        text: what the model sees (protected spans replaced by mask tokens).
        masks: mask token -> original span.
        numbers: the numbers of the original text (as strings), which must survive.
    """

    text: str
    masks: dict[str, str] = field(default_factory=dict)
    numbers: list[str] = field(default_factory=list)

    def restore(self, translated: str) -> tuple[str, list[str]]:
        """Put protected spans back into a translation.

        Returns ``(text, lost)`` where ``lost`` lists the spans or numbers that did not come
        back exactly once (then ``text`` still has whatever the model produced there).
        """
        lost: list[str] = []
        out = translated
        for token, original in self.masks.items():
            if out.count(token) == 1:
                out = out.replace(token, original)
            else:
                lost.append(original)
        got = Counter(NUMBER_RE.findall(_without_spans(out, self.masks.values())))
        for number, count in Counter(self.numbers).items():
            if got[number] < count:
                lost.append(number)
        return out, lost


def _without_spans(text: str, spans) -> str:
    for span in spans:
        text = text.replace(span, " ")
    return text


@dataclass
class Document:
    """A text cut into literal parts and segments.

    ``parts`` holds ``str`` (literal, kept as is) and ``int`` (index into ``segments``).
    ``too_long`` lists the token counts of pieces that exceeded the model's limit and could
    not be split (they are kept literal, and the record should get ``input_too_long``).
    """

    parts: list[str | int]
    segments: list[Segment]
    too_long: list[int] = field(default_factory=list)

    def render(self, translations: list[str]) -> tuple[str, list[str]]:
        """Rebuild the text with ``translations[i]`` for segment ``i``.

        Returns ``(text, lost)``: lost protected spans / numbers over all segments.
        """
        if len(translations) != len(self.segments):
            raise ValueError(f"{len(translations)} translations for {len(self.segments)} segments")
        out: list[str] = []
        lost: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                text, missing = self.segments[part].restore(translations[part].strip())
                out.append(text)
                lost.extend(missing)
        return "".join(out), lost


@lru_cache(maxsize=32)
def _sentence_splitter(lang: str):
    import pysbd
    from pysbd.languages import LANGUAGE_CODES

    return pysbd.Segmenter(language=lang if lang in LANGUAGE_CODES else "en", clean=False, char_span=True)


def split_sentences(text: str, lang: str = "en") -> list[tuple[int, int]]:
    """Sentence spans ``(start, end)`` covering ``text`` without gaps, whitespace included."""
    if not text:
        return []
    spans = [(s.start, s.end) for s in _sentence_splitter(lang.split("_")[0].split("-")[0]).segment(text)]
    # pysbd spans can skip characters (it normalises some whitespace); make them contiguous.
    fixed: list[tuple[int, int]] = []
    pos = 0
    for start, end in spans:
        end = max(end, pos)
        if end > pos:
            fixed.append((pos, end))
            pos = end
    if pos < len(text):
        if fixed:
            fixed[-1] = (fixed[-1][0], len(text))
        else:
            fixed.append((0, len(text)))
    return fixed


def _mask_token(n: int, text: str) -> str:
    # Upper-case Latin letters plus digits: Marian/OPUS-MT and the Bergamot models copy such
    # tokens through (measured with the embedded en<->pt models); avoid clashes with the text.
    prefix = "XPH"
    while prefix in text:
        prefix += "Q"
    return f"{prefix}{n}"


def _mask(text: str) -> tuple[str, dict[str, str]]:
    masks: dict[str, str] = {}
    out: list[str] = []
    pos = 0
    for m in PROTECTED_RE.finditer(text):
        token = _mask_token(len(masks), text)
        masks[token] = m.group(0)
        out.append(text[pos:m.start()])
        out.append(token)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out), masks


def _unmask(text: str, masks: dict[str, str]) -> str:
    for token, original in masks.items():
        text = text.replace(token, original)
    return text


class Segmenter:
    """Cuts texts into :class:`Document` objects for one source language and model limit.

    Args:
        lang: source language code (pysbd rules; unknown codes use English rules).
        count_tokens: ``text -> tokens`` of the model that will translate.
        max_tokens: longest segment the model accepts, in tokens; longer sentences are split at
            clause boundaries, then between words (or characters for scripts without spaces).
    """

    def __init__(self, lang: str, count_tokens: Callable[[str], int], max_tokens: int):
        self.lang = lang
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens

    def segment(self, text: str) -> Document:
        doc = Document(parts=[], segments=[])
        pos = 0
        for m in FENCE_RE.finditer(text):
            self._blocks(text[pos:m.start()], doc)
            doc.parts.append(m.group(0))  # code block: byte-identical, never translated
            pos = m.end()
        self._blocks(text[pos:], doc)
        return doc

    def _blocks(self, text: str, doc: Document) -> None:
        # unfenced code, JSON/YAML blocks and table headers are not prose: byte-identical, never
        # translated (column names are identifiers the text refers to); table body rows are
        # translated cell by cell, their pipes and padding kept.
        for kind, piece in split_blocks(text):
            if kind is None:
                self._prose(piece, doc)
            elif kind == "table_body":
                for row in piece.splitlines(keepends=True):
                    body = row.rstrip("\r\n")
                    for is_cell, cell in split_cells(body):
                        if is_cell:
                            self._content(cell, doc)
                        else:
                            doc.parts.append(cell)
                    if row[len(body):]:
                        doc.parts.append(row[len(body):])
            else:
                doc.parts.append(piece)

    def _prose(self, text: str, doc: Document) -> None:
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            newline = line[len(body):]
            prefix = LINE_PREFIX_RE.match(body).group(0)  # type: ignore[union-attr]
            content = body[len(prefix):]
            stripped = content.rstrip()
            trailing = content[len(stripped):]
            if prefix:
                doc.parts.append(prefix)
            if stripped:
                self._content(stripped, doc)
            if trailing or newline:
                doc.parts.append(trailing + newline)

    def _content(self, text: str, doc: Document) -> None:
        masked, masks = _mask(text)
        for start, end in split_sentences(masked, self.lang):
            sentence = masked[start:end]
            core = sentence.strip()
            lead = sentence[:len(sentence) - len(sentence.lstrip())]
            tail = sentence[len(lead) + len(core):]
            if lead:
                doc.parts.append(lead)
            if core:
                self._sentence(core, masks, doc)
            if tail:
                doc.parts.append(tail)

    def _sentence(self, masked: str, masks: dict[str, str], doc: Document) -> None:
        for piece, sep in self._fit(masked, doc):
            own = {t: s for t, s in masks.items() if t in piece}
            original = _unmask(piece, own)
            if has_words(_without_spans(piece, own)):
                doc.parts.append(len(doc.segments))
                doc.segments.append(Segment(piece, own, NUMBER_RE.findall(_without_spans(original, own.values()))))
            else:  # punctuation, numbers, masks only: nothing to translate
                doc.parts.append(original)
            if sep:
                doc.parts.append(sep)

    def _tokens(self, text: str) -> int:
        if len(text) + 2 <= self.max_tokens:  # a token covers >= 1 character (+ </s>, language tag)
            return len(text)
        return self.count_tokens(text)

    def _fit(self, text: str, doc: Document) -> list[tuple[str, str]]:
        """Split ``text`` into ``(piece, separator)`` pairs whose pieces fit ``max_tokens``."""
        if self._tokens(text) <= self.max_tokens:
            return [(text, "")]
        for splitter in (CLAUSE_RE, re.compile(r"\s+")):
            pieces = _split_keep(text, splitter)
            if len(pieces) > 1:
                return self._pack(pieces, doc)
        if not any(ch.isspace() for ch in text) and _is_unspaced_script(text):
            # keep ASCII runs (mask tokens, numbers, Latin words) whole
            return self._pack([(run, "") for run in re.findall(r"[A-Za-z0-9_]+|.", text)], doc)
        doc.too_long.append(self.count_tokens(text))
        return [(text, "")]

    def _pack(self, pieces: list[tuple[str, str]], doc: Document) -> list[tuple[str, str]]:
        """Greedily join consecutive pieces while they fit; a piece too long alone is split further."""
        out: list[tuple[str, str]] = []

        def emit(text: str, sep: str) -> None:
            sub = self._fit(text, doc)
            sub[-1] = (sub[-1][0], sep)
            out.extend(sub)

        current, current_sep = "", ""
        for piece, sep in pieces:
            candidate = current + current_sep + piece if current else piece
            if current and self._tokens(candidate) > self.max_tokens:
                emit(current, current_sep)
                current, current_sep = piece, sep
            else:
                current, current_sep = candidate, sep
        if current:
            emit(current, current_sep)
        return out


def _split_keep(text: str, splitter: re.Pattern) -> list[tuple[str, str]]:
    pieces: list[tuple[str, str]] = []
    pos = 0
    for m in splitter.finditer(text):
        if m.end() == 0 or m.start() == len(text):
            continue
        if m.start() == pos and m.end() == pos:
            continue
        piece = text[pos:m.start()]
        if piece:
            pieces.append((piece, m.group(0)))
            pos = m.end()
    if pos < len(text):
        pieces.append((text[pos:], ""))
    return pieces


def _is_unspaced_script(text: str) -> bool:
    # Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar: written without spaces between words.
    return any(
        any(name in unicodedata.name(ch, "") for name in ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO",
                                                           "KHMER", "MYANMAR"))
        for ch in text)
