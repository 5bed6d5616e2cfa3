"""Structure that machine translation must not touch: detect it, keep it, check it.

Real instruction data (ShareGPT and the like) holds much that is not prose: code pasted
without fences, markdown tables, JSON / YAML, HTML tags, hashtags, ``@mentions``, ``C#``,
emphasis markers, emoji. Translating such text only damages it (measured with the embedded
en<->pt models: ``break;`` -> ``The pause;``, ``} else {`` -> ``- more -``, ``null`` -> ``node``,
``**Week 1**`` -> ``** Week 1**``). This module has two halves:

* **detection** used by :class:`~instructmill.methods.segmentation.Segmenter`:
  :func:`split_blocks` cuts prose into line blocks; code-like lines, JSON / YAML blocks and
  table header rows are passed through byte-identical (they are not prose), table body rows
  are cut into cells by :func:`split_cells` so only cell text is translated.
  :data:`INLINE_PATTERNS` are extra inline spans masked like inline code;
* **checking**: :func:`check_structure` compares a source with its round trip, kind by kind
  (:data:`STRUCTURE_KINDS`), and names what changed. A record that fails gets one of
  :data:`STRUCTURE_STATUSES` instead of ``ok``.

Statuses:

* ``structure_changed``: a protected span or shape differs between source and output; the
  detail names the ``kind`` (``fenced_code``, ``unfenced_code``, ``json_block``, ``inline_code``,
  ``url``, ``email``, ``placeholder``, ``bracket_placeholder``, ``inline_json``, ``autolink``,
  ``html_tag``, ``hashtag``, ``mention``, ``lang_token``, ``emoji``, ``emphasis``, ``table_shape``,
  ``newlines``) with the ``lost`` and ``added`` spans;
* ``number_added``: the output has a number the source does not have (e.g. ``K740272`` ->
  ``K740272 (R740272)``); numbers *lost* keep the older status ``placeholder_lost``.

Code-line detection is heuristic (keywords, braces, semicolons, shell prompts, assignments,
calls, comments, indentation after code). It errs towards code: a prose line taken for code is
only left untranslated, while code taken for prose is damaged.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..status import STATUS_NUMBER_ADDED, STATUS_PLACEHOLDER_LOST, STATUS_STRUCTURE_CHANGED

#: Statuses this module gives (in the order a record reports them, after ``placeholder_lost``).
STRUCTURE_STATUSES = (STATUS_STRUCTURE_CHANGED, STATUS_NUMBER_ADDED)

# ------------------------------------------------------------------ inline spans
#: Emoji and pictographs (with variation selectors, skin tones and zero-width joiners), as ranges
#: of the Unicode emoji blocks (Python's ``re`` has no ``\p{Extended_Pictographic}``).
_EMOJI = (r"[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\u2300-\u23FF]"
          r"(?:[\uFE0F\U0001F3FB-\U0001F3FF]|\u200D[\U0001F000-\U0001FAFF\u2600-\u27BF])*")
#: Inline spans masked (kept byte-identical) besides those of the segmentation module. Order
#: matters: earlier kinds win where spans overlap (an emphasis span may hold a hashtag).
INLINE_PATTERNS = {
    # an object / dict literal on one line: {"a": null}, {object: "student"}
    "inline_json": r"\{\s*\"[^\"\n]*\"\s*:[^\n]*\}|\{[^{}\n]*:[^{}\n]*\}",
    "autolink": r"<(?:https?|ftp|mailto):[^<>\s]+>",
    # template slots of letters and forms: "[Your Name]", "[CTA Button: Enroll Now]" (not links)
    "bracket_placeholder": r"\[[A-Z][^\[\]\n]{0,40}\](?![(\[:])",
    "html_tag": r"<!--.*?-->|</?[A-Za-z][\w:.-]*(?:\s+[^<>\n]*?)?/?>",
    # short emphasis (labels, headings: "**Week 1**", "*Note:*"); longer ones are checked only
    "emphasis": r"(?<![\w*])(\*\*|__)(?=\S)(?:(?!\1)[^\n]){1,60}?(?<=\S)\1(?![\w*])"
                r"|(?<![\w*])\*(?=[^\s*])[^*\n]{1,40}?(?<=[^\s*])\*(?![\w*])",
    "lang_token": r"(?<![\w#+])[A-Za-z]{1,2}(?:#|\+\+)(?![\w#+])",
    "hashtag": r"(?<![\w#&/])#(?:[A-Za-z_][\w-]*|\s?\d[\w-]*)",  # also a number sign: "#42", "NRD # 49280"
    "mention": r"(?<![\w.@])@[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*",
    "emoji": _EMOJI,
}

# ------------------------------------------------------------------ line blocks
_CODE_LINE_RES = [re.compile(p) for p in (
    r"^[}\])]",                                              # closes a block: "}", "} else {", "]);"
    r"[{\[(]$",                                              # opens one: "if (x) {", "return ("
    r"^(?:\$|>>>|PS [A-Z]:\\[^>]*>|[A-Z]:\\[^>]*>|%)\s+\S",     # shell / REPL prompt
    r"^(?:async\s+)?def\s+\w+\s*\(|^class\s+\w+.*[:{]$|^(?:async\s+)?function\b\s*\w*\s*\(",
    r"^(?:fn|func)\s+\w+|^#(?:include|define|ifn?def|endif|pragma)\b|^package\s+[\w.]+;?$",
    r"^import\s+[\w.*{][^\n]*(?:\sfrom\s|;$)|^import\s+[\w.]+(?:\s+as\s+\w+)?$|^from\s+[\w.]+\s+import\s",
    r"^(?:using|namespace)\s+[\w.]+\s*[;{]?$|^(?:export\s+)?(?:const|let|var|val)\s+[\w$\[\]{}, ]+\s*=",
    r"^(?:if|for|while|switch|catch)\s*\(|^(?:if|elif|while|for|with|except)\b.*:$|^(?:else|try|finally)\s*:$",
    # "continue" / "pass" alone are also what users type ("continue", "continue explain it"): code only with ";"
    r"^(?:return|yield|raise|throw)\b(?:\s+[^\s].*)?;?$|^(?:break|continue|pass)\s*;$",
    r"^(?:public|private|protected|static|final|void|int|String|bool)\s[^\n]*[;{)]$",
    r"^(?://|/\*|\*/|<!--|-->)",                              # comments
    r"^#!/|\[\[ .*\]\]|^(?:then|fi|do|done|esac)$|\$\{?\w+\}?\s*(?:=|-[a-z]{2}\s)",  # shell
    r"^(?:sudo|apt(?:-get)?|yum|dnf|brew|pip3?|npm|npx|yarn|git|docker|kubectl|curl|wget|cd|ls|mkdir|rm|cp|mv"
    r"|chmod|chown|export|echo|cat|grep|ssh|scp|tar|make|cmake|python3?|node|conda|systemctl|service)"
    r"(?:\s+-{0,2}[\w./:@=-]+)+\s*(?:&&|\||;|\\)?.*$(?<![.!?])",                 # a shell command line
    # assignment, call statement ("main()", "print(x)"); "\_" is markdown-escaped "_" (ShareGPT)
    r"^[A-Za-z_$](?:[\w.$]|\\_)*(?:\[[^\]]*\])?\s*(?:[-+*/%|&^]?=|:=|=>)\s*\S",
    r"^(?:await\s+)?[A-Za-z_$](?:[\w.$]|\\_)*\([^\n]*\)\s*;?$",
    r"^-+>\s*\d+\s|^\d{1,4}\s+[A-Za-z_](?:[\w.$]|\\_)*\s*(?:=|\()",  # traceback source lines
    r"^\"[^\"\n]+\"\s*:\s*\S",                                # a JSON member: "key": value
    r'^[^{]{0,60}\{\s*"[^"\n]+"\s*:.*\}\s*$',                     # a line ending in a JSON object (logs)
    r"^<[A-Za-z][\w.-]*(?:\s[^\n]*)?$(?<![^>\s])|^</?[A-Za-z][^\n]*[{=][^\n]*>$",  # markup with code
    r"^(?:</?[A-Za-z][^<>\n]*>\s*)+$",                        # a line of tags only
    r'^Traceback \(most recent call last\)|^File "[^"\n]+", line \d+|^[A-Z]\w*(?:Error|Exception):\s',
)]
_SEMICOLON_END = re.compile(r";\s*$")
_CODE_CHARS = re.compile(r"[(){}\[\]=<>\"'.]")
# "{", or "[" opening an array ("[", '["a",', "[1, 2]"); not a citation "[10] text" or "[Your Name]"
_JSON_START = re.compile(r"""^\s*(?:\{|\[\s*(?:$|["'{\[]|(?:-?\d[\d.]*|true|false|null)\s*(?:,|\]\s*,?\s*$)))""")
#: A line of a JSON / JS-object / Python-dict literal: a key and a colon, a value, or brackets.
_DATA_LINE = re.compile(r"""^\s*(?:(?:"[^"\n]*"|'[^'\n]*'|[\w$-]+)\s*:|"|'|-?\d|true\b|false\b|null\b|None\b"""
                        r"""|True\b|False\b|[\[\]{}(),])""")
_YAML_LINE = re.compile(r"^\s*(?:- )?[a-z_][\w.-]*:(?:\s|$)")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")
_PIPE = re.compile(r"(?<!\\)\|")
_INDENTED = re.compile(r"^(?: {2,}|\t)\S")


def is_code_line(line: str) -> bool:
    """True if one line (without its newline) looks like source code, a shell command or data.

    Signals: brackets that open or close a block, a ``;`` line end (with code characters or a
    short statement such as ``break;``), keywords at the line start (``def``, ``import``,
    ``return``, ``const`` ...), shell prompts (``$ ``, ``>>> ``), assignments, call statements,
    comment markers and JSON members. Case-sensitive: prose starts with a capital letter.
    """
    body = line.strip()
    if not body:
        return False
    if _SEMICOLON_END.search(body) and (_CODE_CHARS.search(body) or len(body.split()) <= 2):
        return True
    return any(rx.search(body) for rx in _CODE_LINE_RES)


def _bracket_depth(line: str) -> int:
    depth = 0
    quote = ""
    escaped = False
    for ch in line:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch == '"':  # not "'": an apostrophe in prose would open a string
            quote = ch
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
    return depth


def _line_kinds(lines: list[str]) -> list[str | None]:
    """Kind of each line: ``code``, ``json_block``, ``table_header``, ``table_body`` or None (prose)."""
    bodies = [ln.rstrip("\r\n") for ln in lines]
    kinds: list[str | None] = [None] * len(lines)
    # tables: a separator row with pipe rows above (the header) and below (the body)
    for i, body in enumerate(bodies):
        if kinds[i] is None and _TABLE_SEP.match(body) and "-" in body and i > 0 and "|" in bodies[i - 1] \
                and ("|" in body or body.count("-") >= 3 and "|" in bodies[i - 1]):
            kinds[i - 1] = kinds[i] = "table_header"
            j = i + 1
            while j < len(bodies) and "|" in bodies[j] and bodies[j].strip():
                kinds[j] = "table_body"
                j += 1
    # pipe-delimited rows without a separator ("1|ACME LLC|Holding company|"): two or more
    # consecutive lines with the same number (>= 2) of pipes
    i = 0
    while i < len(bodies):
        pipes = _PIPE.findall(bodies[i])
        j = i
        while j < len(bodies) and kinds[j] is None and len(pipes) >= 2 \
                and len(_PIPE.findall(bodies[j])) == len(pipes):
            j += 1
        if j - i >= 2:
            for k in range(i, j):
                kinds[k] = "table_body"
        i = max(j, i + 1)
    # JSON-like blocks: from a line starting with { or [ to the line where the brackets balance
    i = 0
    while i < len(bodies):
        if kinds[i] is None and _JSON_START.match(bodies[i]):
            depth, j = 0, i
            while j < len(bodies) and kinds[j] is None:
                depth += _bracket_depth(bodies[j])
                j += 1
                if depth <= 0:
                    break
            if depth <= 0 or j - i > 1:
                kind = "json_block" if all(_DATA_LINE.match(b) for b in bodies[i:j] if b.strip()) else "code"
                for k in range(i, j):
                    kinds[k] = kind
                i = j
                continue
        i += 1
    # YAML-like blocks: two or more consecutive "key: value" lines with lower-case keys
    i = 0
    while i < len(bodies):
        j = i
        while j < len(bodies) and kinds[j] is None and _YAML_LINE.match(bodies[j]):
            j += 1
        if j - i >= 2:
            for k in range(i, j):
                kinds[k] = "json_block"
        i = max(j, i + 1)
    for i, body in enumerate(bodies):
        if kinds[i] is None and is_code_line(body):
            kinds[i] = "code"
    # grow code blocks: indented lines or comment lines after code, lines sandwiched between code
    changed = True
    while changed:
        changed = False
        for i, body in enumerate(bodies):
            if kinds[i] is not None or not body.strip():
                continue
            prev_code = i > 0 and kinds[i - 1] == "code"
            next_code = i + 1 < len(bodies) and kinds[i + 1] == "code"
            if (prev_code and (_INDENTED.match(body) or body.lstrip().startswith("#"))) \
                    or (prev_code and next_code):
                kinds[i] = "code"
                changed = True
    return kinds


def split_blocks(text: str) -> list[tuple[str | None, str]]:
    """Cut prose (text outside fenced code) into ``(kind, piece)`` runs of whole lines.

    ``kind`` is ``None`` for prose, ``"code"`` for code-like lines, ``"json_block"`` for JSON /
    YAML-like blocks, ``"table_header"`` for a table's header and separator rows and
    ``"table_body"`` for its body rows. The pieces joined give ``text`` back exactly.
    """
    lines = text.splitlines(keepends=True)
    kinds = _line_kinds(lines)
    out: list[tuple[str | None, str]] = []
    for kind, line in zip(kinds, lines):
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + line)
        else:
            out.append((kind, line))
    return out


def split_cells(row: str) -> list[tuple[bool, str]]:
    """Cut a table row (no newline) into ``(is_cell_text, piece)``: pipes and padding are not cells.

    An escaped pipe (``\\|``) stays inside its cell. The pieces joined give ``row`` back.
    """
    out: list[tuple[bool, str]] = []
    for piece in re.split(r"((?<!\\)\|)", row):
        if piece == "|":
            out.append((False, piece))
            continue
        core = piece.strip()
        lead = piece[:len(piece) - len(piece.lstrip())]
        tail = piece[len(lead) + len(core):]
        if lead:
            out.append((False, lead))
        if core:
            out.append((True, core))
        if tail:
            out.append((False, tail))
    return out


# ------------------------------------------------------------------ checking
def _blocks_of(kind: str) -> Callable[[str], Counter]:
    def extract(text: str) -> Counter:
        from .segmentation import FENCE_RE

        prose = FENCE_RE.sub("\n", text)
        return Counter(piece for k, piece in split_blocks(prose) if k == kind)
    return extract


def _spans_of(pattern: str) -> Callable[[str], Counter]:
    rx = re.compile(pattern)

    def extract(text: str) -> Counter:
        return Counter(m.group(0) for m in rx.finditer(_without_fences(text)))
    return extract


def _without_fences(text: str) -> str:
    from .segmentation import FENCE_RE

    return FENCE_RE.sub("\n", text)


def _fences(text: str) -> Counter:
    from .segmentation import FENCE_RE

    return Counter(m.group(0).rstrip("\n") for m in FENCE_RE.finditer(text))


_SHORT_EMPHASIS = re.compile(INLINE_PATTERNS["emphasis"])
_TIGHT_EMPHASIS = re.compile(r"(?<![\w*])(\*\*|__)(?=\S)[^\n]*?(?<=\S)\1(?![\w*])")


def _emphasis(text: str) -> Counter:
    prose = _without_fences(text)
    got = Counter(f"{m.group(1)}…{m.group(1)}" for m in _TIGHT_EMPHASIS.finditer(prose))
    for marker in ("**", "__"):
        got[f"{marker} markers"] = prose.count(marker)
    got.update(m.group(0) for m in _SHORT_EMPHASIS.finditer(prose))  # masked: must come back as they were
    return +got


def _table_shapes(text: str) -> Counter:
    """One entry per table: its header rows byte for byte and the pipe count of each body row."""
    shapes: Counter = Counter()
    header: list[str] = []
    body: list[int] = []

    def flush() -> None:
        if header or body:
            shapes[" / ".join(header) + f" + rows with {body} pipes"] += 1
        header.clear()
        body.clear()

    lines = _without_fences(text).splitlines()
    for kind, row in zip(_line_kinds(lines), lines):
        if kind == "table_header":
            if body:
                flush()
            header.append(row)
        elif kind == "table_body":
            body.append(len(_PIPE.findall(row)))
        else:
            flush()
    flush()
    return shapes


def _newlines(text: str) -> Counter:
    return Counter({"\\n": text.count("\n")})


def _protected(name: str) -> Callable[[str], Counter]:
    def extract(text: str) -> Counter:
        from .segmentation import PROTECTED_PATTERNS  # imported late: segmentation imports this module

        return _spans_of(PROTECTED_PATTERNS[name])(text)
    return extract


def _inline(name: str) -> Callable[[str], Counter]:
    return _spans_of(INLINE_PATTERNS[name])


#: kind -> ``text -> Counter`` of the spans (or shapes) that must be equal in source and output.
STRUCTURE_KINDS: dict[str, Callable[[str], Counter]] = {
    "fenced_code": _fences,
    "unfenced_code": _blocks_of("code"),
    "json_block": _blocks_of("json_block"),
    "table_shape": _table_shapes,
    "inline_code": _protected("inline_code"),
    "url": _protected("url"),
    "email": _protected("email"),
    "placeholder": _protected("placeholder"),
    "bracket_placeholder": _inline("bracket_placeholder"),
    "inline_json": _inline("inline_json"),
    "autolink": _inline("autolink"),
    "html_tag": _inline("html_tag"),
    "hashtag": _inline("hashtag"),
    "mention": _inline("mention"),
    "lang_token": _inline("lang_token"),
    "emoji": _inline("emoji"),
    "emphasis": _emphasis,
    "newlines": _newlines,
}

# ------------------------------------------------------------------ numbers
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_THOUSANDS = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
#: English number words: a digit in the output for a word of the source ("two" -> "2") is a
#: legitimate paraphrase, not an added number.
_NUMBER_WORDS = {
    "0": ("zero", "no", "none"), "1": ("one", "a", "an", "first", "single", "once"),
    "2": ("two", "second", "twice", "both", "pair", "couple"), "3": ("three", "third", "thrice"),
    "4": ("four", "fourth"), "5": ("five", "fifth"), "6": ("six", "sixth"), "7": ("seven", "seventh"),
    "8": ("eight", "eighth"), "9": ("nine", "ninth"), "10": ("ten", "tenth"), "11": ("eleven",),
    "12": ("twelve", "dozen"), "15": ("fifteen",), "20": ("twenty",), "30": ("thirty",), "50": ("fifty",),
    "100": ("hundred",), "1000": ("thousand",),
}


def _canonical_number(number: str) -> str:
    return number.replace(",", "") if _THOUSANDS.match(number) else number


def numbers(text: str) -> Counter:
    """Multiset of the numbers in ``text`` (``1,000`` and ``1000`` count as the same number)."""
    return Counter(_canonical_number(n) for n in _NUMBER_RE.findall(text))


def number_changes(source: str, output: str) -> tuple[list[str], list[str]]:
    """``(lost, added)`` numbers of ``output`` against ``source``, each sorted.

    An added number is forgiven when the source spells it as a word (``two`` -> ``2``).
    """
    src, out = numbers(source), numbers(output)
    lost = sorted((src - out).elements())
    words = set(re.findall(r"[a-z]+", source.casefold()))
    added = sorted(n for n in (out - src).elements() if not words & set(_NUMBER_WORDS.get(n, ())))
    return lost, added


# ------------------------------------------------------------------ the check
@dataclass
class StructureIssue:
    """What changed between a source and its round trip.

    Attributes:
        status: one of :data:`STRUCTURE_STATUSES` or ``placeholder_lost`` (numbers lost).
        changes: one ``{"kind", "lost", "added"}`` dict per kind that differs (spans as strings).
    """

    status: str
    changes: list[dict] = field(default_factory=list)

    def detail(self) -> dict:
        """The ``Paraphrase.detail`` / ``extra.detail`` form: ``{"structure": [...]}``."""
        return {"structure": self.changes}


def structure_changes(source: str, output: str, kinds=None) -> list[dict]:
    """Every kind of :data:`STRUCTURE_KINDS` (or ``kinds``) whose spans differ, with the spans."""
    changes: list[dict] = []
    for kind in kinds or STRUCTURE_KINDS:
        extract = STRUCTURE_KINDS[kind]
        src, out = extract(source), extract(output)
        if src != out:
            changes.append({"kind": kind, "lost": sorted((src - out).elements()),
                            "added": sorted((out - src).elements())})
    return changes


def check_structure(source: str, output: str) -> StructureIssue | None:
    """Compare a round trip with its source; ``None`` when every protected span and shape is intact.

    Structure kinds come first (``structure_changed``); then numbers, both ways: lost numbers give
    ``placeholder_lost`` (as the per-segment check does), added ones ``number_added``.
    """
    changes = structure_changes(source, output)
    if changes:
        return StructureIssue(STATUS_STRUCTURE_CHANGED, changes)
    lost, added = number_changes(source, output)
    if lost:
        return StructureIssue(STATUS_PLACEHOLDER_LOST, [{"kind": "number", "lost": lost, "added": added}])
    if added:
        return StructureIssue(STATUS_NUMBER_ADDED, [{"kind": "number", "lost": [], "added": added}])
    return None
