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

# ---------------------------------------------------------------------------- engine statuses
#: The prompt ran (engine) / the record goes to the output (record).
STATUS_OK = "ok"
#: The prompt is empty: the engine did not run it.
STATUS_EMPTY_PROMPT = "empty_prompt"
#: The prompt leaves no room for output within ``max_model_len``: the engine did not run it.
STATUS_PROMPT_TOO_LONG = "prompt_too_long"

#: name -> what it means, for every engine status.
ENGINE_STATUSES: Mapping[str, str] = MappingProxyType({
    STATUS_OK: "the engine ran the prompt",
    STATUS_EMPTY_PROMPT: "the prompt is empty; the engine did not run it",
    STATUS_PROMPT_TOO_LONG: "the prompt leaves no room for output within max_model_len; the engine did not run it",
})

# ---------------------------------------------------------------------------- record statuses
# any method / stage
STATUS_INVALID_RECORD = "invalid_record"
STATUS_EMPTY_RECORD = "empty_record"
STATUS_EMPTY_OUTPUT = "empty_output"
STATUS_OUTPUT_TRUNCATED = "output_truncated"
STATUS_EMPTY_INSTRUCTION = "empty_instruction"
STATUS_TEMPLATE_ERROR = "template_error"
STATUS_DUPLICATE = "duplicate"
# LLM output that could not be read
STATUS_PARSE_ERROR = "parse_error"
STATUS_SCORE_PARSE_ERROR = "score_parse_error"
STATUS_LOW_SCORE = "low_score"
# method rules (self-instruct, evol, pipeline filters) and back-translation quality checks
STATUS_EMPTY_TEXT = "empty_text"
STATUS_TRUNCATED = "truncated"
STATUS_ROUGE_DUPLICATE = "rouge_duplicate"
STATUS_EMPTY = "empty"
STATUS_BAD_START = "bad_start"
STATUS_TOO_SHORT = "too_short"
STATUS_TOO_LONG = "too_long"
STATUS_BLACKLISTED = "blacklisted"
STATUS_REGEX_REQUIRED = "regex_required"
STATUS_REGEX_REJECTED = "regex_rejected"
STATUS_EVOL_EMPTY = "evol_empty"
STATUS_EVOL_COPIED_PROMPT = "evol_copied_prompt"
STATUS_EVOL_NO_GAIN = "evol_no_gain"
STATUS_EVOL_TOO_HARD = "evol_too_hard"
STATUS_EVOL_BAD_RESPONSE = "evol_bad_response"
STATUS_INPUT_TOO_LONG = "input_too_long"
STATUS_PLACEHOLDER_LOST = "placeholder_lost"
STATUS_STRUCTURE_CHANGED = "structure_changed"
STATUS_NUMBER_ADDED = "number_added"
STATUS_DEGENERATE = "degenerate"
STATUS_LENGTH_MISMATCH = "length_mismatch"
STATUS_UNCHANGED = "unchanged"

#: name -> what it means, for every record status (``ok`` and the discard reasons).
RECORD_STATUSES: Mapping[str, str] = MappingProxyType({
    STATUS_OK: "the record goes to the output",
    STATUS_INVALID_RECORD: "the input row has no usable example (its error is in extra)",
    STATUS_EMPTY_RECORD: "the input row holds no text at all (e.g. a conversation with no turns)",
    STATUS_EMPTY_PROMPT: "the engine refused the prompt: it is empty",
    STATUS_PROMPT_TOO_LONG: "the engine refused the prompt: no room for output within max_model_len",
    STATUS_EMPTY_OUTPUT: "the model wrote nothing (or a round trip gave nothing for a non-empty source)",
    STATUS_OUTPUT_TRUNCATED: "the answer hit max_tokens",
    STATUS_EMPTY_INSTRUCTION: "no instruction to answer (respond) or none was written (humpback)",
    STATUS_EMPTY_TEXT: "humpback: the record has no text to write an instruction for",
    STATUS_TEMPLATE_ERROR: "the template could not render the row (or passed a time / size limit)",
    STATUS_DUPLICATE: "the dedup stage found an earlier record with the same or a near key",
    STATUS_PARSE_ERROR: "the model's output could not be read as tasks",
    STATUS_SCORE_PARSE_ERROR: "no score could be read from the judge's output",
    STATUS_LOW_SCORE: "the judge's score is below the threshold",
    # self-instruct
    STATUS_TRUNCATED: "self-instruct: the sample hit max_tokens inside this task",
    STATUS_ROUGE_DUPLICATE: "self-instruct: ROUGE-L too close to an instruction already in the pool",
    STATUS_EMPTY: "self-instruct: no instruction text",
    STATUS_BAD_START: "self-instruct: the instruction starts with punctuation or a non-ASCII character",
    # self-instruct rules and pipeline filter rules
    STATUS_TOO_SHORT: "fewer words than min_words",
    STATUS_TOO_LONG: "more words than max_words",
    STATUS_BLACKLISTED: "a blacklisted keyword",
    STATUS_REGEX_REQUIRED: "filter: a field does not match its required pattern",
    STATUS_REGEX_REJECTED: "filter: a field matches its rejected pattern",
    # evol-instruct elimination rules
    STATUS_EVOL_EMPTY: "evol: the rewrite is empty",
    STATUS_EVOL_COPIED_PROMPT: "evol: the rewrite copies the evolving prompt",
    STATUS_EVOL_NO_GAIN: "evol: the rewrite equals the original",
    STATUS_EVOL_TOO_HARD: "evol: the response says sorry in few words",
    STATUS_EVOL_BAD_RESPONSE: "evol: the response is only punctuation and stop words",
    # back-translation quality checks (methods/quality.py, methods/structure.py)
    STATUS_INPUT_TOO_LONG: "a piece of the source exceeds the model's limit and cannot be split",
    STATUS_PLACEHOLDER_LOST: "a protected span (code, URL, {placeholder}, number) did not come back",
    STATUS_STRUCTURE_CHANGED: "a protected span or shape differs between source and output",
    STATUS_NUMBER_ADDED: "the output has a number the source does not",
    STATUS_DEGENERATE: "the pivot or the output loops (repeated n-grams, one word dominating)",
    STATUS_LENGTH_MISMATCH: "the output is far shorter or longer than the source",
    STATUS_UNCHANGED: "the round trip gave back the source",
})

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
