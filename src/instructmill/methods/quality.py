"""Checks that keep bad paraphrases out of the main output.

Each check returns a status string (or ``None`` when the text passes). Statuses, in
the order a record reports them when several apply:

* ``input_too_long``: a piece of the source exceeds the model's limit and cannot be split;
* ``placeholder_lost``: a protected span (code, URL, ``{placeholder}``, number) did not come back;
* ``structure_changed`` / ``number_added``: see :mod:`~instructmill.methods.structure`;
* ``empty_output``: the model produced nothing for a non-empty source;
* ``degenerate``: the output loops (a word or n-gram repeats far more than in the source),
  the classic failure of neural MT on noisy input (Koehn & Knowles, 2017, "Six Challenges
  for Neural Machine Translation", and "hallucination" detectors since);
* ``length_mismatch``: the output is far shorter or longer than the source (characters);
* ``unchanged``: the round trip gave back the source (nothing paraphrased).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from ..errors import OptionError

STATUS_ORDER = ("input_too_long", "placeholder_lost", "structure_changed", "number_added", "empty_output",
                "degenerate", "length_mismatch", "unchanged")

_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class QualityOptions:
    """Thresholds of the paraphrase checks.

    Attributes:
        min_length_ratio / max_length_ratio: allowed ``len(output) / len(source)`` in characters.
        short_source_chars: sources shorter than this use the wider ``short_*`` ratios
            (one word more or less is a big ratio on a short text).
        max_repeats: an n-gram (n = 1..4) repeated consecutively this many times, more often than
            anywhere in the source, makes the output ``degenerate``.
    """

    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.0
    short_source_chars: int = 20
    short_min_length_ratio: float = 0.3
    short_max_length_ratio: float = 3.0
    max_repeats: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.min_length_ratio < 1:
            raise OptionError("min_length_ratio", self.min_length_ratio, "must be between 0 and 1")
        if self.max_length_ratio <= 1:
            raise OptionError("max_length_ratio", self.max_length_ratio, "must be greater than 1")
        if self.max_repeats < 2:
            raise OptionError("max_repeats", self.max_repeats, "must be at least 2")


def tokens_for_repetition(text: str) -> list[str]:
    """Words and punctuation; characters for scripts written without spaces (Chinese, Japanese...)."""
    out: list[str] = []
    for token in _WORD_RE.findall(text):
        if any(unicodedata.east_asian_width(ch) in ("W", "F") for ch in token):
            out.extend(token)
        else:
            out.append(token.casefold())
    return out


def longest_repeat_run(tokens: list[str], max_n: int = 4) -> int:
    """Most consecutive repetitions of any n-gram (1 <= n <= ``max_n``) in ``tokens``."""
    best = 1 if tokens else 0
    for n in range(1, max_n + 1):
        for offset in range(n):
            run = 1
            prev = None
            for start in range(offset, len(tokens) - n + 1, n):
                gram = tuple(tokens[start:start + n])
                if gram == prev:
                    run += 1
                    best = max(best, run)
                else:
                    run = 1
                prev = gram
    return best


def normalize_for_compare(text: str) -> str:
    """Case-folded text with whitespace collapsed (for the ``unchanged`` check)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def check_paraphrase(source: str, output: str, options: QualityOptions | None = None) -> str | None:
    """Status of a round-trip ``output`` of ``source``, or ``None`` when it is a usable paraphrase."""
    options = options or QualityOptions()
    if not source.strip():
        return None
    if not output.strip():
        return "empty_output"
    out_run = longest_repeat_run(tokens_for_repetition(output))
    if out_run >= options.max_repeats and out_run > longest_repeat_run(tokens_for_repetition(source)):
        return "degenerate"
    ratio = len(output.strip()) / max(1, len(source.strip()))
    short = len(source.strip()) < options.short_source_chars
    low = options.short_min_length_ratio if short else options.min_length_ratio
    high = options.short_max_length_ratio if short else options.max_length_ratio
    if not low <= ratio <= high:
        return "length_mismatch"
    if normalize_for_compare(output) == normalize_for_compare(source):
        return "unchanged"
    return None


def worst_status(statuses: list[str | None]) -> str | None:
    """The status a record reports for several fields: the first in :data:`STATUS_ORDER`.

    ``unchanged`` is reported only when *every* checked field is unchanged: a record whose
    instruction was paraphrased but whose short output came back identical is still new data.
    """
    present = [s for s in statuses if s]
    for status in STATUS_ORDER:
        if status == "unchanged":
            if present and all(s == "unchanged" for s in statuses if s is not None) \
                    and len(present) == len(statuses):
                return "unchanged"
            continue
        if status in present:
            return status
    return None
