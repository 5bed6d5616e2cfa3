"""Instruction back-translation ("Humpback"): write the instruction a text answers, then self-curate.

Li et al., 2023, "Self-Alignment with Instruction Backtranslation" (arXiv:2308.06259):

1. **Self-augmentation**: for each unlabelled text ``y`` (a web passage, an answer), the model
   writes the instruction ``x`` that ``y`` answers. The paper fine-tunes a backward model
   ``M_yx`` for this; here the model is prompted to act as one: ``instruction_style="fewshot"``
   (default) continues ``Response: ... / Instruction: ...`` examples
   (``prompts/humpback_fewshot.txt``), which small models follow far better than a request
   (measured with SmolLM2-135M: questions and requests instead of more answer text);
   ``"chat"`` asks in a chat turn (``prompts/humpback_instruction.txt``).
2. **Self-curation**: the model rates each pair ``(x, y)`` on the paper's 5-point scale
   (Table 19 there; ``prompts/humpback_rubric.txt``): ``curation_style="paper"`` asks, in a
   chat turn, for a brief reasoning and ``Score: <n>`` (the paper's prompt);
   ``"direct"`` ends a text prompt with ``Score:`` and reads the number that follows (for
   models too small to follow the paper's prompt -- SmolLM2-135M never writes ``Score:``).
   Pairs scoring ``>= threshold`` are kept (the paper trains on the 4 and 5 tiers).

One output record per input record, with the input's id: ``status="ok"``, or
``empty_text`` (nothing to back-translate), ``empty_instruction``, ``score_parse_error``
(the rating could not be read), ``low_score``, ``prompt_too_long``, ``invalid_record``. Every
record carries the generated instruction, the score, the judge's raw text and the seeds.

Example::

    hb = Humpback(llm, HumpbackOptions(threshold=4))
    for rec in hb.process(read_records("answers.jsonl")):
        print(rec.status, rec.example.instruction, rec.extra.get("score"))
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from ..engine.llm import LLMBackend, SamplingOptions
from ..errors import OptionError, RecordError
from ..records import Example, InputRecord, OutputRecord
from ..status import (STATUS_EMPTY_INSTRUCTION, STATUS_EMPTY_TEXT, STATUS_LOW_SCORE,
                      STATUS_OK, STATUS_SCORE_PARSE_ERROR, record_status)
from .base import RecordMethod
from .llm_parsing import extract_json, parse_score, strip_label
from .prompts import render
from .seeding import stable_seed as _seed
from .structured import SCORE_SCHEMA, use_structured
from .tally import Tally

__all__ = ["Humpback", "HumpbackOptions", "clean_instruction"]

_PAPER_SCORE_LINE = 'write "Score: <rating>" in the last line.'
_JSON_SCORE_LINE = 'answer with a JSON object {"reason": "<your reasoning>", "score": <rating from 1 to 5>}.'


def _json_score(text: str) -> int | None:
    """The ``score`` of a schema-constrained rating (``None`` when it is not one)."""
    value, reason = extract_json(text)
    score = value.get("score") if reason is None and isinstance(value, dict) else None
    return score if isinstance(score, int) and not isinstance(score, bool) and 1 <= score <= 5 else None


@dataclass(frozen=True)
class HumpbackOptions:
    """Options of instruction back-translation.

    Attributes:
        text_field: where the unlabelled text is: an Example field (``"output"`` for Alpaca /
            seed / ShareGPT / OpenAI records, the last assistant turn) or, for other rows, the
            row's field of that name (e.g. ``"text"``).
        instruction_style: ``"fewshot"`` (continue examples) or ``"chat"`` (a request).
        threshold: keep pairs whose self-curation score is ``>= threshold`` (1..5).
        curation_style: ``"paper"`` (reasoning, then ``Score: <n>``) or ``"direct"`` (the
            number after ``Score:``).
        curate: run self-curation; off = keep every generated pair (``score`` is ``None``).
        max_text_chars: cut texts longer than this before prompting (``None`` = no cut; an
            over-long prompt then gets ``status="prompt_too_long"``).
        seed: seed of every sample (per record: derived from the record id).
        records_per_batch: most records sent to the model together (CTranslate2 and transformers
            also stop a window at ``LLMBackend.window_tokens()`` tokens of work, so output streams).
        structured: rate as JSON ``{"reason", "score"}`` constrained by a JSON schema
            (:data:`~instructmill.methods.structured.SCORE_SCHEMA`); ``None`` = when the backend
            supports it (vLLM, openai). Replaces ``curation_style``'s free-text score line.
        generation: sampling for writing instructions.
        curation: sampling for the rating (greedy by default).

    Raises:
        OptionError: a value out of range.
    """

    text_field: str = "output"
    instruction_style: str = "fewshot"
    threshold: int = 4
    curation_style: str = "paper"
    curate: bool = True
    max_text_chars: int | None = 4000
    seed: int = 0
    records_per_batch: int = 256
    structured: bool | None = None
    generation: SamplingOptions = field(default_factory=lambda: SamplingOptions(
        temperature=0.7, top_p=0.9, max_tokens=96, repetition_penalty=1.1))
    curation: SamplingOptions = field(default_factory=lambda: SamplingOptions(temperature=0.0, max_tokens=192))

    def __post_init__(self) -> None:
        if not self.text_field:
            raise OptionError("text_field", self.text_field, "name the field holding the text")
        if self.instruction_style not in ("fewshot", "chat"):
            raise OptionError("instruction_style", self.instruction_style, "choose fewshot or chat")
        if self.curation_style not in ("paper", "direct"):
            raise OptionError("curation_style", self.curation_style, "choose paper or direct")
        if not isinstance(self.threshold, int) or not 1 <= self.threshold <= 5:
            raise OptionError("threshold", self.threshold, "must be an integer from 1 to 5")
        if self.max_text_chars is not None and self.max_text_chars < 1:
            raise OptionError("max_text_chars", self.max_text_chars, "must be a positive integer")
        if self.records_per_batch < 1:
            raise OptionError("records_per_batch", self.records_per_batch, "must be a positive integer")
        for name in ("generation", "curation"):
            if getattr(self, name).n != 1:
                raise OptionError(f"{name}.n", getattr(self, name).n, "one sample per record")


def clean_instruction(text: str) -> str:
    """The instruction from the model's answer: echoed labels and quotes removed, cut at a
    ``Response:`` / ``Output:`` label the model may go on with, whitespace collapsed."""
    import re

    text = re.split(r"\n\s*(?:#+\s*)?(?:response|output|answer)\s*:", text, maxsplit=1, flags=re.I)[0]
    text, _ = strip_label(text)
    return " ".join(text.split()).strip()



class Humpback(RecordMethod):
    """Instruction back-translation with self-curation on one LLM backend.

    Args:
        llm: the model.
        options: :class:`HumpbackOptions`.

    Attributes:
        summary: ``{"records", "ok", "discarded": {status: n}, "scores": {score: n},
        "output_tokens", "seconds"}``.
    """

    method = "humpback"

    def __init__(self, llm: LLMBackend, options: HumpbackOptions | None = None):
        self.llm = llm
        self.options = options or HumpbackOptions()
        #: ratings come back as schema-constrained JSON (a backend that supports it)
        self.structured = self.options.curate and use_structured(self.options.structured, llm)
        self.summary = Tally({"records": 0, "ok": 0, "discarded": {}, "scores": {},
                              "output_tokens": 0, "seconds": 0.0, "parse_attempts": 0, "parse_ok": 0,
                              "structured": int(self.structured)})
        self._overheads: tuple[int, int] | None = None

    def settings(self) -> dict[str, Any]:
        """Everything that changes the results (for the run state / resume check)."""
        options = {**asdict(self.options), "structured": self.structured}  # resolved: what was sent
        return {"method": self.method, "options": options, "engine": self.llm.settings()}

    def record_settings(self) -> dict[str, Any]:
        return {"backend": self.llm.name, "model": self.llm.model, "seed": self.options.seed,
                "threshold": self.options.threshold}

    def text_of(self, record: InputRecord) -> str:
        """The unlabelled text of ``record`` (see ``HumpbackOptions.text_field``).

        Raises:
            RecordError: the field is missing or not a string (names record and field).
        """
        from ..io.readers import to_example

        name = self.options.text_field
        if name in ("instruction", "input", "output") and (record.shape != "table" or "instruction" in record.fields):
            return to_example(record).get(name)
        value = record.fields.get(name)
        if not isinstance(value, str):
            what = "missing" if value is None else f"not a string ({type(value).__name__})"
            raise RecordError(f"field {name!r} is {what}", record=record.id, line=record.line,
                              field=name, source=record.source)
        return value

    def record_cost(self, record: InputRecord) -> int:
        """Tokens of engine work ``record`` costs in its larger request: the prompt template around
        the text, the text (cut at ``max_text_chars``) and the most new tokens of the stage.
        A record whose text cannot be read costs 0 (it never reaches the model)."""
        try:
            text = self.text_of(record).strip()
        except RecordError:
            return 0
        if self.options.max_text_chars is not None:
            text = text[:self.options.max_text_chars]
        if self._overheads is None:
            self._overheads = self._template_overheads()
        return self.llm.count_tokens(text) + max(self._overheads)

    def _template_overheads(self) -> tuple[int, int]:
        """Prompt tokens around the text, plus new tokens, of (instruction, curation) requests."""
        opts = self.options
        if opts.instruction_style == "fewshot":
            instruction_prompt: Any = render("humpback_fewshot", response="")
        else:
            instruction_prompt = [{"role": "user", "content": render("humpback_instruction", response="")}]
        cost = self.llm.count_tokens(instruction_prompt) + opts.generation.max_tokens
        if not opts.curate:
            return cost, 0
        rubric = render("humpback_rubric")
        if opts.curation_style == "paper":
            curation_prompt: Any = [{"role": "user", "content": render(
                "humpback_score", rubric=rubric, instruction="", response="")}]
        else:
            curation_prompt = render("humpback_score_direct", rubric=rubric, instruction="", response="")
        # the generated instruction enters the curation prompt: at most generation.max_tokens
        return cost, (self.llm.count_tokens(curation_prompt) + opts.generation.max_tokens
                      + opts.curation.max_tokens)

    def _chunk(self, chunk: list[InputRecord]) -> Iterator[OutputRecord]:
        opts = self.options
        started = time.perf_counter()
        states: list[dict[str, Any]] = []
        for record in chunk:
            state: dict[str, Any] = {"record": record, "status": STATUS_OK, "extra": {}, "instruction": ""}
            try:
                text = self.text_of(record).strip()
            except RecordError as exc:
                state.update(status=exc.status, text="")
                state["extra"]["error"] = str(exc)
                states.append(state)
                continue
            if opts.max_text_chars is not None and len(text) > opts.max_text_chars:
                state["extra"]["text_cut_at"] = opts.max_text_chars
                text = text[:opts.max_text_chars]
            state["text"] = text
            if not text:
                state["status"] = STATUS_EMPTY_TEXT
            states.append(state)

        todo = [s for s in states if s["status"] == STATUS_OK]
        if opts.instruction_style == "fewshot":
            prompts = [render("humpback_fewshot", response=s["text"]).rstrip("\n") for s in todo]
            stop = ("\n",) + tuple(x for x in opts.generation.stop if x != "\n")
        else:
            prompts = [[{"role": "user", "content": render("humpback_instruction", response=s["text"])}] for s in todo]
            stop = opts.generation.stop
        params = [replace(opts.generation, seed=_seed(opts.seed, "instruction", s["record"].id), stop=stop)
                  for s in todo]
        for state, result in zip(todo, self.llm.generate(prompts, params)):
            if result.status != STATUS_OK:
                state["status"], state["extra"]["detail"] = record_status(result.status), result.detail
                continue
            sample = result.samples[0]
            self.summary.add("output_tokens", sample.output_tokens)
            state["extra"]["instruction_seed"] = sample.seed
            state["raw_instruction"] = sample.text
            state["instruction"] = clean_instruction(sample.text)
            if not state["instruction"]:
                state["status"] = STATUS_EMPTY_INSTRUCTION

        todo = [s for s in states if s["status"] == STATUS_OK]
        if opts.curate and todo:
            rubric = render("humpback_rubric")
            schema = None
            if self.structured:
                prompts = [[{"role": "user", "content": render("humpback_score", rubric=rubric,
                                                               instruction=s["instruction"], response=s["text"])
                             .replace(_PAPER_SCORE_LINE, _JSON_SCORE_LINE)}] for s in todo]
                stop, schema = opts.curation.stop, SCORE_SCHEMA
            elif opts.curation_style == "paper":
                prompts = [[{"role": "user", "content": render("humpback_score", rubric=rubric, instruction=s["instruction"],
                                                               response=s["text"])}] for s in todo]
                stop = opts.curation.stop
            else:
                prompts = [render("humpback_score_direct", rubric=rubric, instruction=s["instruction"],
                                  response=s["text"]).rstrip("\n") for s in todo]
                stop = ("\n",) + tuple(x for x in opts.curation.stop if x != "\n")
            params = [replace(opts.curation, stop=stop, json_schema=schema, seed=None if opts.curation.greedy else
                              _seed(opts.seed, "score", s["record"].id)) for s in todo]
            for state, result in zip(todo, self.llm.generate(prompts, params)):
                if result.status != STATUS_OK:
                    state["status"], state["extra"]["detail"] = record_status(result.status), result.detail
                    continue
                judge = result.samples[0].text
                self.summary.add("output_tokens", result.samples[0].output_tokens)
                score = _json_score(judge) if self.structured else parse_score(judge)
                self.summary.add("parse_attempts", 1)
                self.summary.add("parse_ok", int(score is not None))
                state["extra"].update(score=score, judge=judge.strip())
                if score is None:
                    state["status"] = STATUS_SCORE_PARSE_ERROR
                    continue
                self.summary.add_to("scores", score)
                if score < opts.threshold:
                    state["status"] = STATUS_LOW_SCORE
                    state["extra"]["detail"] = f"score {score} < threshold {opts.threshold}"
        self.summary.add("seconds", time.perf_counter() - started)
        for state in states:
            yield self._state_record(state)

    def _state_record(self, state: dict[str, Any]) -> OutputRecord:
        record: InputRecord = state["record"]
        extra = dict(state["extra"])
        if "raw_instruction" in state and state["status"] != STATUS_OK:
            extra["raw"] = state["raw_instruction"]
        original = record.fields.get("instruction")
        if isinstance(original, str) and original.strip():
            extra["original_instruction"] = original
        example = Example(instruction=state["instruction"], output=state.get("text", ""))
        self.summary.add("records", 1)
        if state["status"] == STATUS_OK:
            self.summary.add("ok", 1)
        else:
            self.summary.add_to("discarded", state["status"])
        return OutputRecord(record.id, example, state["status"], self.method, self.record_settings(), extra)
