"""Parsing what an LLM wrote: task lists, labelled Instruction/Input/Output blocks, JSON, scores.

Model output is messy: chatter before and after the answer (``"Sure! Here you go:"``, ``"Hope
this helps!"``), code fences around it, typos in labels, numbers that skip or repeat, a last
item cut off by the token limit. The parsers here are lenient where the intent is clear, and
return ``status="parse_error"`` with the raw text otherwise -- they never raise on model text
and never silently drop a whole generation.

* :func:`parse_tasks` -- a list of tasks in one of three shapes (or ``style="auto"``):

  - ``"alpaca"``: Stanford Alpaca's ``N. Instruction: ... / N. Input: ... / N. Output: ...``
    blocks (``###`` or blank lines between items). Labels are matched case-insensitively and
    with up to two typos (``Instraction``), numbers need not agree (``3. Instruction`` then
    ``4. Input`` is read as one item, with a warning), markdown ``**bold**`` / ``#`` is ignored,
    ``<noinput>`` means an empty input. Synonyms: Task/Question/Prompt (instruction),
    Context (input), Response/Answer (output).
  - ``"list"``: Self-Instruct's numbered list (``1. ...``, ``2) ...``, ``Task 3: ...``, bullets);
    continuation lines join the item; whitespace runs become one space.
  - ``"json"``: a JSON object or array anywhere in the text (in a ```json fence or not, with
    extra text around): ``{"instruction", "input", "output"}`` objects, a list of them, a
    list of strings, or an object holding such a list under ``tasks`` / ``instructions``.

* :func:`extract_json` -- the first JSON value in a text, ignoring surrounding chatter.
* :func:`parse_score` -- a 1..5 rating (``Score: 4``, ``Rating: 4/5``, ``{"score": 4}``, ``4``).
* :func:`strip_label` -- a rewritten instruction without an echoed leading label.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PARSE_ERROR", "ParseResult", "ParsedTask", "extract_json", "is_no_input",
           "parse_score", "parse_tasks", "strip_label", "unwrap_fence"]

from ..status import STATUS_OK, STATUS_PARSE_ERROR as PARSE_ERROR

STYLES = ("auto", "alpaca", "list", "json")


@dataclass
class ParsedTask:
    """One task read from model output.

    Attributes:
        instruction: the instruction text (whitespace runs collapsed in ``"list"`` style).
        input: the input (``""`` for none / ``<noinput>``).
        output: the output; ``None`` when the item has no output (the ``"list"`` style, or an
            Alpaca item whose ``Output:`` is missing).
        raw: the item's own text, as the model wrote it.
        number: the item's number when it had one.
        status: ``"ok"`` or ``"parse_error"`` (e.g. a labelled block without instruction text).
        detail: why it is a parse error.
        warnings: lenient readings made (``"label 'Instraction' read as 'instruction'"``).
    """

    instruction: str
    input: str = ""
    output: str | None = None
    raw: str = ""
    number: int | None = None
    status: str = STATUS_OK
    detail: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class ParseResult:
    """All tasks of one generation.

    Attributes:
        status: ``"ok"`` when at least one item was found, else ``"parse_error"``.
        items: the items in text order (each with its own status).
        style: the style that was parsed (``"auto"`` resolved).
        raw: the whole text as given.
        detail: why nothing was found.
        skipped: text pieces left out (chatter, preambles), for the record.
    """

    status: str
    items: list[ParsedTask]
    style: str
    raw: str
    detail: str | None = None
    skipped: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- helpers

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_NO_INPUT = {"", "<noinput>", "<no input>", "noinput", "no input", "none", "n/a", "na", "null", "-",
             "<none>", "(none)", "nothing", "empty", "<empty>"}
_PREAMBLE_RE = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|great|here (?:is|are)|here's|below (?:is|are)|"
    r"i (?:hope|have|can)|hope this|let me|these are|the following)\b", re.I)


def unwrap_fence(text: str) -> tuple[str, bool]:
    """The content of the first fenced code block when the text has one, else the text.

    Returns ``(text, unwrapped)``. An unclosed fence (a cut-off generation) counts: its content
    runs to the end of the text.
    """
    m = _FENCE_RE.search(text)
    if not m:
        return text, False
    return m.group(2), True


def is_no_input(text: str) -> bool:
    """Whether an input field means "no input" (``<noinput>``, ``None``, ``N/A``, empty...)."""
    return text.strip().strip(".").strip().lower() in _NO_INPUT


def _levenshtein_at_most(a: str, b: str, k: int) -> bool:
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(a, b, score_cutoff=k) <= k


_CANONICAL = ("instruction", "input", "output")
_SYNONYMS = {"task": "instruction", "question": "instruction", "prompt": "instruction",
             "context": "input", "response": "output", "answer": "output"}


def _label_kind(word: str, synonyms: bool = True) -> tuple[str | None, bool]:
    """``(kind, lenient)`` for a label word: ``"instruction"`` / ``"input"`` / ``"output"``.

    Canonical words (any case) are exact; a word within two edits of ``instruction`` /
    ``output`` (one of ``input``, e.g. ``Instraction``, ``Outputs``) is read as it, with
    ``lenient`` true; synonyms (Task, Question, Prompt, Context, Response, Answer) count only
    when ``synonyms`` is true.
    """
    w = word.lower()
    if w in _CANONICAL:
        return w, False
    if w in _SYNONYMS:
        return (_SYNONYMS[w], False) if synonyms else (None, False)
    for kind in ("instruction", "output"):  # "input"/"output" are too close for 2 edits
        if len(w) >= 5 and _levenshtein_at_most(w, kind, 2) and not _levenshtein_at_most(w, "input", 1):
            return kind, True
    if _levenshtein_at_most(w, "input", 1) and not _levenshtein_at_most(w, "output", 1):
        return "input", True
    return None, False


# A labelled line: optional markdown, optional number, a label word, a colon, the rest.
_LABEL_LINE_RE = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:[*_]{1,2})?(?:(\d{1,4})[ \t]*[.):][ \t]*)?(?:[*_]{1,2})?"
    r"([A-Za-z]{4,12})[ \t]*(?:[*_]{1,2})?[ \t]*:[ \t]*(?:[*_]{1,2})?[ \t]*(.*)$")
_SEPARATOR_RE = re.compile(r"^[ \t]*(?:#{3,}|-{3,}|\*{3,}|={3,})[ \t]*$")


def _clean_field(lines: list[str]) -> str:
    return "\n".join(lines).strip()


def _parse_alpaca(text: str) -> tuple[list[ParsedTask], list[str]]:
    items: list[ParsedTask] = []
    skipped: list[str] = []
    current: dict[str, Any] | None = None
    preamble: list[str] = []
    # With canonical labels (Instruction/Input/Output or typos of them) in the text, synonyms
    # such as "Answer:" or "Question:" are text (e.g. an output holding a Q&A pair).
    words = [m.group(2) for m in map(_LABEL_LINE_RE.match, text.splitlines()) if m]
    synonyms = not any(_label_kind(w, synonyms=False)[0] for w in words)

    def finish() -> None:
        if current is None:
            return
        fields = current["fields"]
        instruction = _clean_field(fields.get("instruction", []))
        raw_input = _clean_field(fields.get("input", []))
        output = _clean_field(fields["output"]) if "output" in fields else None
        task = ParsedTask(instruction=instruction, input="" if is_no_input(raw_input) else raw_input,
                          output=output, raw="\n".join(current["raw"]).strip(), number=current["number"],
                          warnings=current["warnings"])
        if not instruction:
            task.status, task.detail = PARSE_ERROR, "no instruction text in this item"
        items.append(task)

    for line in text.splitlines():
        m = _LABEL_LINE_RE.match(line)
        kind, lenient = _label_kind(m.group(2), synonyms) if m else (None, False)
        if kind is not None:
            number = int(m.group(1)) if m.group(1) else None
            if kind == "instruction" or current is None or kind in current["fields"]:
                # a new item: an instruction label, a label seen twice, or input/output first
                finish()
                current = {"fields": {}, "raw": [], "number": number, "warnings": [], "field": kind}
                if kind != "instruction":
                    current["warnings"].append(f"item starts with a {kind!r} label")
            elif number is not None and current["number"] is not None and number != current["number"]:
                current["warnings"].append(
                    f"numbering: item {current['number']} has its {kind} label numbered {number}")
            if lenient:
                current["warnings"].append(f"label {m.group(2)!r} read as {kind!r}")
            current["field"] = kind
            current["fields"].setdefault(kind, [])
            if m.group(3).strip():
                current["fields"][kind].append(m.group(3).rstrip())
            current["raw"].append(line)
            continue
        if _SEPARATOR_RE.match(line):
            if current is not None:
                finish()
                current = None
            continue
        if current is None:
            if line.strip():
                preamble.append(line.strip())
            continue
        current["raw"].append(line)
        current["fields"][current["field"]].append(line.rstrip())
    finish()
    if preamble:
        skipped.append("\n".join(preamble))
    return items, skipped


_ITEM_RE = re.compile(r"^[ \t]*(?:(?:task|instruction)[ \t]*)?(\d{1,4})[ \t]*[.):][ \t]+(.*)$|"
                      r"^[ \t]*(?:task|instruction)[ \t]*(\d{1,4})[ \t]*[.):]?[ \t]*(.*)$|"
                      r"^[ \t]*[-*\u2022][ \t]+(.*)$", re.I)


def _parse_list(text: str) -> tuple[list[ParsedTask], list[str]]:
    items: list[ParsedTask] = []
    skipped: list[str] = []
    current: dict[str, Any] | None = None
    blank = False

    def finish() -> None:
        if current is None:
            return
        instruction = " ".join(" ".join(current["lines"]).split())
        task = ParsedTask(instruction=instruction, raw="\n".join(current["raw"]).strip(),
                          number=current["number"])
        if not instruction:
            task.status, task.detail = PARSE_ERROR, "empty list item"
        items.append(task)

    for line in text.splitlines():
        m = _ITEM_RE.match(line)
        if m:
            finish()
            number = m.group(1) or m.group(3)
            body = m.group(2) if m.group(1) else (m.group(4) if m.group(3) else m.group(5))
            current = {"lines": [body.strip()], "raw": [line], "number": int(number) if number else None}
            blank = False
            continue
        if not line.strip():
            blank = True
            continue
        if current is not None and not blank and not _SEPARATOR_RE.match(line):
            current["lines"].append(line.strip())
            current["raw"].append(line)
        else:
            skipped.append(line.strip())
    finish()
    return items, skipped


def _tasks_from_json(value: Any) -> list[ParsedTask] | None:
    if isinstance(value, dict):
        for key in ("tasks", "instructions", "data", "items", "examples"):
            if isinstance(value.get(key), list):
                return _tasks_from_json(value[key])
        value = [value]
    if not isinstance(value, list):
        return None
    tasks = []
    for item in value:
        raw = json.dumps(item, ensure_ascii=False)
        if isinstance(item, str):
            tasks.append(ParsedTask(instruction=item.strip(), raw=raw))
            continue
        if not isinstance(item, dict):
            tasks.append(ParsedTask("", raw=raw, status=PARSE_ERROR, detail="not an object or string"))
            continue
        lowered = {str(k).lower(): v for k, v in item.items()}
        get = lambda *names: next((lowered[n] for n in names if n in lowered), None)  # noqa: E731
        instruction, inp, out = get("instruction", "task", "question", "prompt"), get("input", "context"), \
            get("output", "response", "answer")
        task = ParsedTask(instruction=str(instruction).strip() if isinstance(instruction, str) else "",
                          input="" if not isinstance(inp, str) or is_no_input(inp) else inp.strip(),
                          output=out.strip() if isinstance(out, str) else None, raw=raw)
        if not task.instruction:
            task.status, task.detail = PARSE_ERROR, "no 'instruction' string in the object"
        tasks.append(task)
    return tasks


def extract_json(text: str) -> tuple[Any, str | None]:
    """The first JSON object or array in ``text``: ``(value, None)``, or ``(None, reason)``.

    Looks inside code fences first, then at every ``{`` / ``[`` of the text, decoding with
    :meth:`json.JSONDecoder.raw_decode` so text after the value is ignored.
    """
    decoder = json.JSONDecoder()
    candidates = [m.group(2) for m in _FENCE_RE.finditer(text)] + [text]
    for chunk in candidates:
        for m in re.finditer(r"[\[{]", chunk):
            try:
                value, _ = decoder.raw_decode(chunk, m.start())
            except ValueError:
                continue
            if isinstance(value, (dict, list)):
                return value, None
    return None, "no JSON object or array found"


# ----------------------------------------------------------------------------- public

def _detect(text: str) -> str:
    stripped = unwrap_fence(text)[0].lstrip()
    if stripped.startswith(("{", "[")):
        return "json"
    for line in text.splitlines():
        m = _LABEL_LINE_RE.match(line)
        if m and _label_kind(m.group(2))[0] in ("instruction", "output"):
            return "alpaca"
    return "list"


def parse_tasks(text: str, style: str = "auto") -> ParseResult:
    """Parse a generation into tasks (see the module docstring for the accepted shapes).

    Args:
        text: the model output (for continuation prompts, prepend the prompt's last line,
            e.g. ``"9."`` or ``"21. Instruction:"``, so the first item is complete).
        style: ``"auto"`` (JSON if the text starts with one, Alpaca if it has Instruction /
            Output labels, else a list), ``"alpaca"``, ``"list"`` or ``"json"``.

    Returns:
        a :class:`ParseResult`; ``status="parse_error"`` with ``raw`` kept when no item is
        found (e.g. ``"Sure! Here you go:"``). List items that are only chatter
        (``"Here are some tasks:"``) are moved to ``skipped``.

    Raises:
        ValueError: unknown ``style`` (a programming error, not a model-output error).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    resolved = _detect(text) if style == "auto" else style
    skipped: list[str] = []
    if resolved == "json":
        value, reason = extract_json(text)
        items = _tasks_from_json(value) if reason is None else None
        if items is None:
            return ParseResult(PARSE_ERROR, [], resolved, text, reason or "JSON is not a task list")
    else:
        body, _ = unwrap_fence(text) if resolved == "list" else (text, False)
        items, skipped = (_parse_alpaca if resolved == "alpaca" else _parse_list)(body)
    kept = []
    for item in items:
        one_line = " ".join(item.instruction.split())
        if item.status == STATUS_OK and item.output is None and _is_preamble(one_line):
            skipped.append(item.raw)
            continue
        kept.append(item)
    if not kept:
        return ParseResult(PARSE_ERROR, [], resolved, text, f"no {resolved} items found", skipped)
    return ParseResult(STATUS_OK, kept, resolved, text, None, skipped)


def _is_preamble(text: str) -> bool:
    """Chatter that introduces an answer (``"Sure! Here you go:"``), not a task."""
    return bool(_PREAMBLE_RE.match(text)) and (text.endswith((":", "!")) or len(text.split()) <= 4)


_SCORE_RES = [
    re.compile(r"(?:score|rating|rated|grade)\s*(?:is|of|=|:)?\s*\**\s*\(?([1-9])(?:\s*(?:/|out of)\s*5)?", re.I),
    re.compile(r"\b([1-9])\s*(?:/|out of)\s*5\b", re.I),
]


def parse_score(text: str, low: int = 1, high: int = 5) -> int | None:
    """A rating in ``[low, high]`` from a judge's output, or ``None``.

    Reads, in this order: the last ``Score: N`` / ``Rating: N`` / ``score of N`` (as Humpback's
    self-curation prompt asks, Li et al. 2023), the last ``N/5`` or ``N out of 5``, a JSON
    ``{"score": N}``, and a text that is a lone number. Numbers outside the range give ``None``.
    """
    for pattern in _SCORE_RES:
        found = pattern.findall(text)
        if found:
            value = int(found[-1])
            return value if low <= value <= high else None
    value, _ = extract_json(text)
    if isinstance(value, dict):
        for key in ("score", "rating"):
            v = value.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer():
                return int(v) if low <= v <= high else None
    m = re.fullmatch(r"\s*\**\s*([0-9]+)\s*\**\.?\s*", text)
    if m:
        v = int(m.group(1))
        return v if low <= v <= high else None
    return None


_LEAD_LABEL_RE = re.compile(
    r"^\s*(?:#+\s*)?(?:\*\*)?#?\s*(?:the\s+)?(?:rewritten|created|new|evolved|given)?\s*"
    r"(?:prompt|instruction|question|task)\s*#?(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.I)


def strip_label(text: str) -> tuple[str, bool]:
    """``text`` without a leading echoed label (``#Rewritten Prompt#:``, ``Instruction:``,
    ``**New prompt:**``), without wrapping quotes or a code fence; ``(text, changed)``."""
    original = text
    text, _ = unwrap_fence(text) if text.lstrip().startswith("```") else (text, False)
    text = text.strip()
    for _ in range(2):
        text = _LEAD_LABEL_RE.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'\u201c" or (text[:1], text[-1:]) == ("\u201c", "\u201d"):
        text = text[1:-1].strip()
    return text, text != original.strip()
