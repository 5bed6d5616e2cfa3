"""Every status name, in one place: what an engine says of a prompt, what a record says of itself.

Two vocabularies:

* **engine statuses** (:class:`~instructmill.engine.llm.GenerationResult` ``status``,
  :class:`~instructmill.engine.llm.Sample` ``status``): whether an LLM engine ran a prompt.
  They are engine facts, not record facts: a method turns them into a record status explicitly
  with :func:`record_status`.
* **record statuses** (:class:`~instructmill.records.OutputRecord` ``status``): ``ok`` (the record
  goes to the output) or the reason it was kept out of it, a *discard* reason (it goes to the
  ``.discards`` file, with its ``extra.detail``). :data:`RECORD_STATUSES` describes each one
  (for the README and reports); :data:`DISCARD_STATUSES` are all but ``ok``.

The order in which a back-translated record reports several quality problems is
:data:`instructmill.methods.quality.STATUS_ORDER`.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

_engine: dict[str, str] = {}
_record: dict[str, str] = {}


def _status(table: dict[str, str], name: str, meaning: str) -> str:
    """Register ``name`` with its meaning in ``table``; returns ``name`` (for the constant)."""
    if name in table:
        raise ValueError(f"status {name!r} is defined twice")
    table[name] = meaning
    return name


# ---------------------------------------------------------------------------- engine statuses
STATUS_OK = _status(_engine, "ok", "the engine ran the prompt")
STATUS_EMPTY_PROMPT = _status(_engine, "empty_prompt", "the prompt is empty; the engine did not run it")
STATUS_PROMPT_TOO_LONG = _status(_engine, "prompt_too_long",
                                 "the prompt leaves no room for output within max_model_len; the engine did not run it")

# ---------------------------------------------------------------------------- record statuses
# an engine status that reaches a record keeps its name (see record_status)
_status(_record, STATUS_OK, "the record goes to the output")
_status(_record, STATUS_EMPTY_PROMPT, "the engine refused the prompt: it is empty")
_status(_record, STATUS_PROMPT_TOO_LONG, "the engine refused the prompt: no room for output within max_model_len")
# any method or stage
STATUS_INVALID_RECORD = _status(_record, "invalid_record",
                                "the input row has no usable example (its error is in extra)")
STATUS_EMPTY_RECORD = _status(_record, "empty_record",
                              "the input row holds no text at all (e.g. a conversation with no turns)")
STATUS_EMPTY_OUTPUT = _status(_record, "empty_output",
                              "the model wrote nothing (or a round trip gave nothing for a non-empty source)")
STATUS_OUTPUT_TRUNCATED = _status(_record, "output_truncated", "the answer hit max_tokens")
STATUS_EMPTY_INSTRUCTION = _status(_record, "empty_instruction",
                                   "no instruction to answer (respond) or none was written (humpback)")
STATUS_TEMPLATE_ERROR = _status(_record, "template_error",
                                "the template could not render the row (or passed a time / size limit)")
STATUS_DUPLICATE = _status(_record, "duplicate",
                           "the dedup stage found an earlier record with the same or a near key")
# LLM output that could not be read or did not pass
STATUS_PARSE_ERROR = _status(_record, "parse_error", "the model's output could not be read as tasks")
STATUS_SCORE_PARSE_ERROR = _status(_record, "score_parse_error", "no score could be read from the judge's output")
STATUS_LOW_SCORE = _status(_record, "low_score", "the judge's score is below the threshold")
STATUS_EMPTY_TEXT = _status(_record, "empty_text", "humpback: the record has no text to write an instruction for")
# self-instruct
STATUS_TRUNCATED = _status(_record, "truncated", "self-instruct: the sample hit max_tokens inside this task")
STATUS_ROUGE_DUPLICATE = _status(_record, "rouge_duplicate",
                                 "self-instruct: ROUGE-L too close to an instruction already in the pool")
STATUS_EMPTY = _status(_record, "empty", "self-instruct: no instruction text")
STATUS_BAD_START = _status(_record, "bad_start",
                           "self-instruct: the instruction starts with punctuation or a non-ASCII character")
# self-instruct rules and pipeline filter rules
STATUS_TOO_SHORT = _status(_record, "too_short", "fewer words than min_words")
STATUS_TOO_LONG = _status(_record, "too_long", "more words than max_words")
STATUS_BLACKLISTED = _status(_record, "blacklisted", "a blacklisted keyword")
STATUS_REGEX_REQUIRED = _status(_record, "regex_required", "filter: a field does not match its required pattern")
STATUS_REGEX_REJECTED = _status(_record, "regex_rejected", "filter: a field matches its rejected pattern")
# evol-instruct elimination rules
STATUS_EVOL_EMPTY = _status(_record, "evol_empty", "evol: the rewrite is empty")
STATUS_EVOL_COPIED_PROMPT = _status(_record, "evol_copied_prompt", "evol: the rewrite copies the evolving prompt")
STATUS_EVOL_NO_GAIN = _status(_record, "evol_no_gain", "evol: the rewrite equals the original")
STATUS_EVOL_TOO_HARD = _status(_record, "evol_too_hard", "evol: the response says sorry in few words")
STATUS_EVOL_BAD_RESPONSE = _status(_record, "evol_bad_response",
                                   "evol: the response is only punctuation and stop words")
# back-translation quality checks (methods/quality.py, methods/structure.py, methods/meaning.py)
STATUS_INPUT_TOO_LONG = _status(_record, "input_too_long",
                                "a piece of the source exceeds the model's limit and cannot be split")
STATUS_PLACEHOLDER_LOST = _status(_record, "placeholder_lost",
                                  "a protected span (code, URL, {placeholder}, number) did not come back")
STATUS_STRUCTURE_CHANGED = _status(_record, "structure_changed",
                                   "a protected span or shape differs between source and output")
STATUS_NUMBER_ADDED = _status(_record, "number_added", "the output has a number the source does not")
STATUS_DEGENERATE = _status(_record, "degenerate",
                            "the pivot or the output loops (repeated n-grams, one word dominating)")
STATUS_LENGTH_MISMATCH = _status(_record, "length_mismatch", "the output is far shorter or longer than the source")
STATUS_MEANING_DRIFT = _status(_record, "meaning_drift",
                               "the paraphrase's cosine to its source is below min_similarity (methods/meaning.py)")
STATUS_TOO_SIMILAR = _status(_record, "too_similar",
                             "the paraphrase differs from its source but scores above max_similarity (barely new)")
STATUS_OTHER_LANGUAGE = _status(_record, "other_language",
                                "every segment was in another language than the source's (passed through)")
STATUS_UNCHANGED = _status(_record, "unchanged", "the round trip gave back the source")

#: name -> what it means, for every engine status.
ENGINE_STATUSES: Mapping[str, str] = MappingProxyType(_engine)
#: name -> what it means, for every record status (``ok`` and the discard reasons).
RECORD_STATUSES: Mapping[str, str] = MappingProxyType(_record)

#: Record statuses that keep a record out of the output (every one but ``ok``).
DISCARD_STATUSES = frozenset(RECORD_STATUSES) - {STATUS_OK}

#: How each engine status reads as a record status (a refused prompt is a discard reason of its
#: own name).
_ENGINE_TO_RECORD: Mapping[str, str] = MappingProxyType({
    STATUS_OK: STATUS_OK,
    STATUS_EMPTY_PROMPT: STATUS_EMPTY_PROMPT,
    STATUS_PROMPT_TOO_LONG: STATUS_PROMPT_TOO_LONG,
})


def record_status(engine_status: str) -> str:
    """The record status for an engine status (see :data:`ENGINE_STATUSES`).

    Raises:
        ValueError: ``engine_status`` is not an engine status (a backend bug: engines report only
            :data:`ENGINE_STATUSES`).
    """
    try:
        return _ENGINE_TO_RECORD[engine_status]
    except KeyError:
        raise ValueError(f"unknown engine status {engine_status!r}; engines report one of "
                         f"{', '.join(ENGINE_STATUSES)}") from None
