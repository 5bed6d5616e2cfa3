"""Checks that keep bad paraphrases out of the main output.

Each check returns a status string (or ``None`` when the text passes). Statuses, in
the order a record reports them when several apply:

* ``input_too_long``: a piece of the source exceeds the model's limit and cannot be split;
* ``placeholder_lost``: a protected span (code, URL, ``{placeholder}``, number) did not come back;
* ``structure_changed`` / ``number_added``: see :mod:`~instructmill.methods.structure`;
* ``empty_output``: the model produced nothing for a non-empty source;
* ``degenerate``: the pivot text or the output loops -- an n-gram (n = 1..8) repeated many times
  in a row, or one word making up most of the text -- more than the source does: the classic
  failure of neural MT on noisy input (Koehn & Knowles, 2017, "Six Challenges for Neural
  Machine Translation", and "hallucination" detectors since). Both hops are checked, so a
  pivot that looped and was then shortened again by the backward model is caught too;
* ``length_mismatch``: the output is far shorter or longer than the source (characters);
* ``meaning_drift`` / ``too_similar``: see :mod:`~instructmill.methods.meaning` (checked by
  :class:`~instructmill.methods.backtranslation.BackTranslator` on the texts that passed the rest);
* ``other_language``: every segment was in another language than the source's (passed through);
* ``unchanged``: the round trip gave back the source (nothing paraphrased).
"""
from __future__ import annotations

import operator
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from ..errors import OptionError
from ..status import (STATUS_DEGENERATE, STATUS_EMPTY_OUTPUT, STATUS_INPUT_TOO_LONG, STATUS_LENGTH_MISMATCH,
                      STATUS_MEANING_DRIFT, STATUS_NUMBER_ADDED, STATUS_OTHER_LANGUAGE, STATUS_PLACEHOLDER_LOST,
                      STATUS_STRUCTURE_CHANGED, STATUS_TOO_SIMILAR, STATUS_UNCHANGED)

STATUS_ORDER = (STATUS_INPUT_TOO_LONG, STATUS_PLACEHOLDER_LOST, STATUS_STRUCTURE_CHANGED, STATUS_NUMBER_ADDED, STATUS_EMPTY_OUTPUT,
                STATUS_DEGENERATE, STATUS_MEANING_DRIFT, STATUS_LENGTH_MISMATCH, STATUS_OTHER_LANGUAGE, STATUS_TOO_SIMILAR, STATUS_UNCHANGED)

_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
#: Tokens that make up table rules and cells (``| o | o | o |``): a repeated unit holding one is
#: layout, not a loop (markdown tables in ShareGPT answers repeat ``| x`` up to 16 times, measured).
_LAYOUT_TOKENS = frozenset("|")
_STRETCH_RE = re.compile(rb"\x01+")
#: Commas of several scripts. A run of bare commas is a loop (the embedded en->pt model turned an
#: Arabic sentence into ", , , , , , , , , , ,", measured), while runs of other punctuation alone
#: (``----``, ``====``, ``...``, ``) ; }``) are layout or code in real text.
_COMMAS = frozenset(",，、،")


@dataclass(frozen=True)
class QualityOptions:
    """Thresholds of the paraphrase checks.

    The defaults flag 5 of 14,579 real texts (0.03 %) when those texts are checked as outputs on
    their own, with no source to compare with (the 175 Self-Instruct seed tasks and all turns of
    the ShareGPT sample, lists, code and tables included; ``tests/test_decoding_bounds.py`` keeps
    the rate below 0.1 %): a pasted credits list repeating a 7-gram 20 times (twice in the
    sample), ``%s/%s/%s/%s`` in C code, six commas in a row in a pasted sentence and a table whose
    cells are 81 % ``o``. Checked against
    their own source, as in a round trip, none is flagged.

    Attributes:
        min_length_ratio: lowest allowed ``len(output) / len(source)``, in characters.
        max_length_ratio: highest allowed ``len(output) / len(source)``, in characters.
        short_source_chars: sources shorter than this use the wider ``short_*`` ratios
            (one word more or less is a big ratio on a short text).
        max_repeats: an n-gram (n = 1..``max_ngram``) repeated consecutively this many times, more
            often than anywhere in the source, makes the pivot or output ``degenerate``.
        max_ngram: longest repeated unit looked for, in tokens.
        max_token_share: one word making up at least this share of a text's words (and more than
            in the source) makes it ``degenerate``.
        min_words_for_share: texts with fewer words skip the share check ("Yes yes." is fine).

    Raises:
        OptionError: a threshold out of range.
    """

    min_length_ratio: float = 0.5
    max_length_ratio: float = 2.0
    short_source_chars: int = 20
    short_min_length_ratio: float = 0.3
    short_max_length_ratio: float = 3.0
    max_repeats: int = 4
    max_ngram: int = 8
    max_token_share: float = 0.5
    min_words_for_share: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.min_length_ratio < 1:
            raise OptionError("min_length_ratio", self.min_length_ratio, "must be between 0 and 1")
        if self.max_length_ratio <= 1:
            raise OptionError("max_length_ratio", self.max_length_ratio, "must be greater than 1")
        if self.max_repeats < 2:
            raise OptionError("max_repeats", self.max_repeats, "must be at least 2")
        if self.max_ngram < 1:
            raise OptionError("max_ngram", self.max_ngram, "must be at least 1")
        if not 0 < self.max_token_share <= 1:
            raise OptionError("max_token_share", self.max_token_share, "must be in (0, 1]")
        if self.min_words_for_share < 2:
            raise OptionError("min_words_for_share", self.min_words_for_share, "must be at least 2")


def tokens_for_repetition(text: str) -> list[str]:
    """Case-folded words and punctuation; each character of scripts written without spaces
    (Chinese, Japanese...) is a token of its own, the Latin letters beside them stay words
    (``YYYY年MM月`` -> ``yyyy 年 mm 月``)."""
    out: list[str] = []
    for token in _WORD_RE.findall(text):
        if not any(unicodedata.east_asian_width(ch) in ("W", "F") for ch in token):
            out.append(token.casefold())
            continue
        run = ""
        for ch in token:
            if unicodedata.east_asian_width(ch) in ("W", "F"):
                if run:
                    out.append(run.casefold())
                    run = ""
                out.append(ch)
            else:
                run += ch
        if run:
            out.append(run.casefold())
    return out


def _is_word(token: str) -> bool:
    return any(ch.isalpha() for ch in token)


@dataclass(frozen=True)
class RepeatRun:
    """The longest consecutive repetition found in a token list.

    Attributes:
        count: how many times the unit occurs in a row (1 = no repetition; 0 for no tokens).
        unit: the repeated tokens (shortest period that gives ``count``).
    """

    count: int
    unit: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{len(self.unit)}-gram {' '.join(self.unit)!r} repeated {self.count} times in a row"


def repeat_run(tokens: list[str], max_n: int = 8) -> RepeatRun:
    """Most consecutive repetitions of any n-gram (1 <= n <= ``max_n``) in ``tokens``.

    Only units with a word in them count (a row of ``-`` or ``0, 0, 0`` is layout or data, not
    a loop), and none holding a table bar ``|``; a run of bare commas counts too. Period ``n`` repeats where ``tokens[i] ==
    tokens[i + n]`` for a stretch of ``s`` positions: the unit then occurs ``(s + n) // n`` times.
    O(``max_n * len(tokens)``).
    """
    if not tokens:
        return RepeatRun(0)
    best = RepeatRun(1)
    for n in range(1, max_n + 1):
        # positions where the token equals the one n later, as bytes: runs of 1s are periodic stretches
        same = bytes(map(operator.eq, tokens, tokens[n:]))
        for match in _STRETCH_RE.finditer(same):
            count = (match.end() - match.start() + n) // n
            if count > best.count:
                # every rotation of a periodic stretch holds the same tokens: check the first
                unit = tuple(tokens[match.start():match.start() + n])
                if _loop_unit(unit):
                    best = RepeatRun(count, unit)
    return best


def _loop_unit(unit: tuple[str, ...]) -> bool:
    """Whether a repeated unit can be a loop: it holds a word (and no table bar), or only commas."""
    if _LAYOUT_TOKENS.intersection(unit):
        return False
    return any(_is_word(t) for t in unit) or all(t in _COMMAS for t in unit)


def longest_repeat_run(tokens: list[str], max_n: int = 8) -> int:
    """``repeat_run(tokens, max_n).count``: most consecutive repetitions of a word n-gram."""
    return repeat_run(tokens, max_n).count


def dominant_word(tokens: list[str]) -> tuple[str, float, int]:
    """``(word, share, words)``: the most frequent word and its share of all words (punctuation
    and numbers excluded); ``("", 0.0, 0)`` for a text without words."""
    words = [t for t in tokens if _is_word(t)]
    if not words:
        return "", 0.0, 0
    word, count = Counter(words).most_common(1)[0]
    return word, count / len(words), len(words)


def degeneration(text: str, source: str | None = None, options: QualityOptions | None = None) -> str | None:
    """Why ``text`` looks degenerate (one line), or ``None``.

    ``text`` is degenerate when an n-gram repeats ``max_repeats`` times in a row, or one word is
    ``max_token_share`` of its words -- and, when ``source`` is given, the source does not do
    the same (a source listing ``ha ha ha ha`` may be translated as it is). The source's
    repetition is measured with units up to ``4 * max_ngram`` tokens, since a repeated sentence
    can be longer in the source than in its translation.
    """
    options = options or QualityOptions()
    tokens = tokens_for_repetition(text)
    run = repeat_run(tokens, options.max_ngram)
    if run.count >= options.max_repeats:
        baseline = repeat_run(tokens_for_repetition(source), 4 * options.max_ngram).count if source else 0
        if run.count > baseline:
            return run.describe() + (f" (source: at most {baseline})" if source else "")
    word, share, words = dominant_word(tokens)
    if words >= options.min_words_for_share and share >= options.max_token_share:
        _, source_share, _ = dominant_word(tokens_for_repetition(source)) if source else ("", 0.0, 0)
        if share > source_share:
            return (f"{word!r} is {share:.0%} of {words} words"
                    + (f" (source: {source_share:.0%})" if source else ""))
    return None


def normalize_for_compare(text: str) -> str:
    """Case-folded text with whitespace collapsed (for the ``unchanged`` check)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def check_round_trip(source: str, pivot: str | None, output: str,
                     options: QualityOptions | None = None) -> tuple[str | None, dict[str, str]]:
    """Status of a round trip ``source -> pivot -> output`` and a detail saying why.

    The pivot is checked for degeneration first (a looping pivot is not a translation, whatever
    came back from it), then the output (:func:`check_paraphrase`). Returns ``(None, {})`` for a
    usable paraphrase; for ``degenerate``, the detail is ``{"hop": "pivot" | "output",
    "reason": "<what repeats>"}``.
    """
    options = options or QualityOptions()
    if not source.strip():
        return None, {}
    if pivot is not None and pivot.strip():
        reason = degeneration(pivot, source, options)
        if reason:
            return STATUS_DEGENERATE, {"hop": "pivot", "reason": reason}
    if not output.strip():
        return STATUS_EMPTY_OUTPUT, {}
    reason = degeneration(output, source, options)
    if reason:
        return STATUS_DEGENERATE, {"hop": "output", "reason": reason}
    ratio = len(output.strip()) / max(1, len(source.strip()))
    short = len(source.strip()) < options.short_source_chars
    low = options.short_min_length_ratio if short else options.min_length_ratio
    high = options.short_max_length_ratio if short else options.max_length_ratio
    if not low <= ratio <= high:
        return STATUS_LENGTH_MISMATCH, {"reason": f"output/source length ratio {ratio:.2f} outside [{low}, {high}]"}
    if normalize_for_compare(output) == normalize_for_compare(source):
        return STATUS_UNCHANGED, {}
    return None, {}


def check_paraphrase(source: str, output: str, options: QualityOptions | None = None) -> str | None:
    """Status of a round-trip ``output`` of ``source``, or ``None`` when it is a usable paraphrase
    (:func:`check_round_trip` without a pivot)."""
    return check_round_trip(source, None, output, options)[0]


#: Statuses that only mean "not reworded enough": a record reports one only when every checked
#: field has one (the least reworded first), since one reworded field makes the record new data.
SOFT_STATUSES = (STATUS_UNCHANGED, STATUS_TOO_SIMILAR)


def worst_status(statuses: list[str | None]) -> str | None:
    """The status a record reports for several fields: the first in :data:`STATUS_ORDER`.

    ``unchanged`` / ``too_similar`` are reported only when *every* checked field has one of them:
    a record whose instruction was paraphrased but whose short output came back identical is
    still new data.
    """
    present = [s for s in statuses if s]
    hard = [s for s in present if s not in SOFT_STATUSES]
    for status in STATUS_ORDER:
        if status in hard:
            return status
    if present and len(present) == len(statuses):
        return STATUS_UNCHANGED if STATUS_UNCHANGED in present and all(s == STATUS_UNCHANGED for s in present) else STATUS_TOO_SIMILAR
    return None
