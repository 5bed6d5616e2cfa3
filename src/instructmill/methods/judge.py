"""LLM-as-judge: score any record 1-5 on a rubric, keep by threshold, the score written into the record.

The generalization of Humpback's self-curation (Li et al. 2023, "Self-Alignment with Instruction
Backtranslation": the model rates its own candidate pairs on a 5-point rubric) to any records and
rubrics, as in Zheng et al. 2023 ("Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena",
single-answer grading). Built-in rubrics: ``helpfulness`` (default), ``correctness``,
``instruction_following``; or a rubric text of your own (or a ``.txt`` file holding it).

With a backend that constrains decoding (vLLM, openai; ``structured`` unset or true) the judge
answers JSON ``{"reason", "score"}`` under :data:`~instructmill.methods.structured.SCORE_SCHEMA`;
otherwise it writes its reasoning and a last line ``Score: <n>`` (read by
:func:`~instructmill.methods.llm_parsing.parse_score`). Every record gets ``extra["judge"] =
{"score", "reason", "rubric"}``; status ``ok`` when ``score >= threshold``, else ``low_score``;
``score_parse_error`` when no score could be read; the engine's status (``prompt_too_long``...)
when the prompt was refused. Works on every LLM backend.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from ..engine.llm import LLMBackend, SamplingOptions
from ..errors import OptionError
from ..records import Example, InputRecord, OutputRecord
from ..status import STATUS_EMPTY_OUTPUT, STATUS_LOW_SCORE, STATUS_OK, STATUS_SCORE_PARSE_ERROR, record_status
from .base import RecordMethod
from .llm_parsing import extract_json, parse_score
from .prompts import render
from .seeding import stable_seed
from .structured import SCORE_SCHEMA, use_structured
from .tally import Tally

__all__ = ["BUILTIN_RUBRICS", "Judge", "JudgeOptions"]

#: Built-in rubric names (``prompts/judge_<name>.txt``).
BUILTIN_RUBRICS = ("helpfulness", "correctness", "instruction_following")
_ASK_TEXT = 'Explain your rating briefly, then write "Score: <rating>" on the last line.'
_ASK_JSON = 'Answer with a JSON object {"reason": "<a brief explanation>", "score": <rating from 1 to 5>}.'


@dataclass(frozen=True)
class JudgeOptions:
    """Options of :class:`Judge`.

    Attributes:
        rubric: a built-in rubric name (:data:`BUILTIN_RUBRICS`), a rubric text, or a ``.txt`` file.
        threshold: keep records scoring ``>= threshold`` (1..5).
        structured: JSON ``{"reason", "score"}`` under a JSON schema; ``None`` = when the backend
            supports it.
        max_chars: cut instruction and answer to this many characters each in the prompt
            (``None``: no cut; an over-long prompt then gets ``status="prompt_too_long"``).
        seed: seed of sampled ratings (per record, from its id); greedy ratings need none.
        records_per_batch: records sent to the model together.
        sampling: how to sample the rating (greedy by default).

    Raises:
        OptionError: a value out of range, or a rubric file that cannot be read.
    """

    rubric: str = "helpfulness"
    threshold: int = 3
    structured: bool | None = None
    max_chars: int | None = 6000
    seed: int = 0
    records_per_batch: int = 256
    sampling: SamplingOptions = field(default_factory=lambda: SamplingOptions(temperature=0.0, max_tokens=192))

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, int) or not 1 <= self.threshold <= 5:
            raise OptionError("threshold", self.threshold, "must be an integer from 1 to 5")
        if not isinstance(self.rubric, str) or not self.rubric.strip():
            raise OptionError("rubric", self.rubric, f"give a rubric text, a .txt file, or one of {BUILTIN_RUBRICS}")
        if self.max_chars is not None and self.max_chars < 1:
            raise OptionError("max_chars", self.max_chars, "must be a positive integer")
        if self.records_per_batch < 1:
            raise OptionError("records_per_batch", self.records_per_batch, "must be a positive integer")
        if self.sampling.n != 1:
            raise OptionError("sampling.n", self.sampling.n, "one rating per record")

    def rubric_text(self) -> str:
        """The rubric's text (built-in, file, or the option itself)."""
        if self.rubric in BUILTIN_RUBRICS:
            return render(f"judge_{self.rubric}").strip()
        if self.rubric.endswith(".txt") and "\n" not in self.rubric:
            try:
                with open(self.rubric, encoding="utf-8") as fh:
                    return fh.read(64 * 1024).strip()
            except OSError as exc:
                raise OptionError("rubric", self.rubric, f"cannot read the rubric file: {exc.strerror}") from None
        return self.rubric.strip()


class Judge(RecordMethod):
    """Scores records 1-5 with one LLM backend (see the module docstring).

    Args:
        llm: the judge model (any backend).
        options: :class:`JudgeOptions`.

    Attributes:
        summary: ``{"records", "ok", "discarded": {status: n}, "scores": {score: n},
            "parse_attempts", "parse_ok", "structured", "output_tokens", "seconds"}``.
    """

    method = "judge"

    def __init__(self, llm: LLMBackend, options: JudgeOptions | None = None):
        self.llm = llm
        self.options = options or JudgeOptions()
        self.rubric = self.options.rubric_text()
        self.structured = use_structured(self.options.structured, llm)
        self.summary = Tally({"records": 0, "ok": 0, "discarded": {}, "scores": {}, "parse_attempts": 0,
                              "parse_ok": 0, "structured": int(self.structured), "output_tokens": 0,
                              "seconds": 0.0})

    def settings(self) -> dict[str, Any]:
        """Everything that changes the results (for the run state / resume check)."""
        options = {**asdict(self.options), "structured": self.structured, "rubric_text": self.rubric}
        return {"method": self.method, "options": options, "engine": self.llm.settings()}

    def record_settings(self) -> dict[str, Any]:
        return {"backend": self.llm.name, "model": self.llm.model, "rubric": self.options.rubric
                if self.options.rubric in BUILTIN_RUBRICS else "custom", "threshold": self.options.threshold}

    def prompt(self, example: Example) -> list[dict[str, str]]:
        """The judge's chat prompt for ``example`` (instruction with its input, and the answer)."""
        cut = self.options.max_chars
        instruction = f"{example.instruction.strip()}\n\n{example.input.strip()}".strip()
        answer = example.output.strip()
        if cut is not None:
            instruction, answer = instruction[:cut], answer[:cut]
        text = render("judge", rubric=self.rubric, instruction=instruction, response=answer,
                      ask=_ASK_JSON if self.structured else _ASK_TEXT)
        return [{"role": "user", "content": text}]

    def _chunk(self, chunk: list[InputRecord]) -> Iterator[OutputRecord]:
        started = time.perf_counter()
        out: list[OutputRecord | None] = [None] * len(chunk)
        todo: list[tuple[int, Example]] = []
        for i, record in enumerate(chunk):
            example = self._example(record)
            if isinstance(example, OutputRecord):
                out[i] = example
                continue
            if not example.output.strip():
                out[i] = self._record(record.id, example, STATUS_EMPTY_OUTPUT, {"detail": "no answer to judge"})
                continue
            todo.append((i, example))
        schema = SCORE_SCHEMA if self.structured else None
        params = [replace(self.options.sampling, json_schema=schema, seed=None if self.options.sampling.greedy else
                          stable_seed(self.options.seed, "judge", chunk[i].id)) for i, _ in todo]
        results = self.llm.generate([self.prompt(ex) for _, ex in todo], params) if todo else []
        for (i, example), result in zip(todo, results):
            rid = chunk[i].id
            if result.status != STATUS_OK:
                out[i] = self._record(rid, example, record_status(result.status), {"detail": result.detail})
                continue
            sample = result.samples[0]
            self.summary.add("output_tokens", sample.output_tokens)
            score, reason = self._read(sample.text)
            self.summary.add("parse_attempts", 1)
            self.summary.add("parse_ok", int(score is not None))
            verdict = {"score": score, "reason": reason, "rubric": self.options.rubric
                       if self.options.rubric in BUILTIN_RUBRICS else "custom"}
            if score is None:
                out[i] = self._record(rid, example, STATUS_SCORE_PARSE_ERROR, {"judge": verdict, "raw": sample.text})
                continue
            self.summary.add_to("scores", score)
            status = STATUS_OK if score >= self.options.threshold else STATUS_LOW_SCORE
            extra: dict[str, Any] = {"judge": verdict}
            if status != STATUS_OK:
                extra["detail"] = f"score {score} < threshold {self.options.threshold}"
            out[i] = self._record(rid, example, status, extra)
        self.summary.add("seconds", time.perf_counter() - started)
        for rec in out:
            assert rec is not None
            yield rec

    def _read(self, text: str) -> tuple[int | None, str]:
        if self.structured:
            value, problem = extract_json(text)
            if problem is None and isinstance(value, dict):
                score = value.get("score")
                if isinstance(score, int) and not isinstance(score, bool) and 1 <= score <= 5:
                    return score, str(value.get("reason") or "").strip()
            return None, text.strip()
        score = parse_score(text)
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        reason = "\n".join(lines[:-1]).strip() if score is not None and len(lines) > 1 else text.strip()
        return score, reason
