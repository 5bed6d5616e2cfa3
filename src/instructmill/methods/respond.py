"""Respond: an LLM writes the ``output`` of each instruction.

The answer step of Self-Instruct's "direct" instances (Wang et al., 2022) and of Alpaca
(Taori et al., 2023), as a method of its own so a pipeline can generate instructions in one
stage and answers in the next (both stages then feed the same engine). For each record the
model gets one chat conversation -- the optional ``system`` prompt, the record's earlier turns
(``history``), then the user turn ``instruction`` (+ ``"\\n\\n" + input``) -- and its answer
becomes the record's ``output``.

One output record per input, with the input's id. Statuses: ``ok``; ``invalid_record`` (no
usable instruction); ``empty_instruction``; ``empty_output`` (the model wrote nothing);
``output_truncated`` (the answer hit ``sampling.max_tokens``, unless ``keep_truncated``);
``prompt_too_long`` / ``empty_prompt`` (refused by the engine, see
:mod:`instructmill.engine.llm`). The seed of each record is derived from ``seed`` and the
record id, so results do not depend on batch composition or order.

Example::

    responder = Responder(llm, RespondOptions(system="You are a helpful assistant."))
    for rec in responder.process(read_records("instructions.jsonl")):
        print(rec.status, rec.example.output)
"""
from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from ..engine.llm import LLMBackend, SamplingOptions
from ..errors import OptionError
from ..records import Example, InputRecord, OutputRecord
from ..status import (STATUS_EMPTY_INSTRUCTION, STATUS_EMPTY_OUTPUT, STATUS_OK, STATUS_OUTPUT_TRUNCATED,
                      record_status)
from .base import RecordMethod
from .tally import Tally

__all__ = ["RespondOptions", "Responder", "respond_seed"]


@dataclass(frozen=True)
class RespondOptions:
    """Options of :class:`Responder`.

    Attributes:
        system: system prompt put first in every conversation (``""`` = none; a record's own
            ``system`` text is used when this is empty).
        skip_existing: records that already have a non-empty output are passed on unchanged
            (status ``ok``, no model call).
        keep_truncated: keep answers cut by ``sampling.max_tokens`` (default: status
            ``output_truncated``).
        seed: seed of every sample (per record: derived from ``seed`` and the record id).
        records_per_batch: records sent to the model together.
        sampling: how to sample the answer (``n`` must be 1).

    Raises:
        OptionError: a value out of range.
    """

    system: str = ""
    skip_existing: bool = False
    keep_truncated: bool = False
    seed: int = 0
    records_per_batch: int = 256
    sampling: SamplingOptions = field(default_factory=lambda: SamplingOptions(
        temperature=0.7, top_p=0.9, max_tokens=256, repetition_penalty=1.1))

    def __post_init__(self) -> None:
        if not isinstance(self.records_per_batch, int) or self.records_per_batch < 1:
            raise OptionError("records_per_batch", self.records_per_batch, "must be a positive integer")
        if self.sampling.n != 1:
            raise OptionError("sampling.n", self.sampling.n, "one answer per record")


def respond_seed(seed: int, record_id: str) -> int:
    """The sample seed of ``record_id``: CRC-32 of ``"<seed>:respond:<id>"`` (31 bits)."""
    return zlib.crc32(f"{seed}:respond:{record_id}".encode("utf-8", "surrogatepass")) & 0x7FFFFFFF


class Responder(RecordMethod):
    """Writes outputs for instructions with one :class:`~instructmill.engine.llm.LLMBackend`.

    Args:
        llm: the model (any backend, or a shared-engine client in a pipeline).
        options: :class:`RespondOptions`.

    Attributes:
        summary: ``{"records", "ok", "skipped", "discarded": {status: n}, "output_tokens",
        "seconds"}``.
    """

    method = "respond"

    def __init__(self, llm: LLMBackend, options: RespondOptions | None = None):
        self.llm = llm
        self.options = options or RespondOptions()
        self.summary = Tally({"records": 0, "ok": 0, "skipped": 0, "discarded": {},
                              "output_tokens": 0, "seconds": 0.0})

    def settings(self) -> dict[str, Any]:
        """Everything that changes the results (for the run state / resume check)."""
        return {"method": self.method, "options": asdict(self.options), "engine": self.llm.settings()}

    def record_settings(self) -> dict[str, Any]:
        """The compact provenance every record carries."""
        return {"backend": self.llm.name, "model": self.llm.model, "seed": self.options.seed}

    def messages(self, example: Example) -> list[dict[str, str]]:
        """The chat conversation sent for ``example`` (system, earlier turns, user turn)."""
        system = self.options.system or example.system
        out: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        for user, assistant in example.history:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        user_turn = f"{example.instruction.strip()}\n\n{example.input.strip()}".strip()
        out.append({"role": "user", "content": user_turn})
        return out

    def _chunk(self, chunk: list[InputRecord]) -> Iterator[OutputRecord]:
        opts = self.options
        started = time.perf_counter()
        out: list[OutputRecord | None] = [None] * len(chunk)
        todo: list[tuple[int, Example]] = []
        for i, record in enumerate(chunk):
            example = self._example(record)
            if isinstance(example, OutputRecord):
                out[i] = example
                continue
            if opts.skip_existing and example.output.strip():
                self.summary.add("skipped", 1)
                out[i] = self._record(record.id, example, STATUS_OK, {"skipped": "the record has an output"})
                continue
            if not example.instruction.strip():
                out[i] = self._record(record.id, example, STATUS_EMPTY_INSTRUCTION,
                                      {"detail": "the record has no instruction to answer"})
                continue
            todo.append((i, example))
        prompts = [self.messages(example) for _, example in todo]
        params = [replace(opts.sampling, seed=None if opts.sampling.greedy else
                          respond_seed(opts.seed, chunk[i].id)) for i, _ in todo]
        results = self.llm.generate(prompts, params) if todo else []
        for (i, example), result in zip(todo, results):
            rid = chunk[i].id
            if result.status != STATUS_OK:
                out[i] = self._record(rid, example, record_status(result.status), {"detail": result.detail})
                continue
            sample = result.samples[0]
            self.summary.add("output_tokens", sample.output_tokens)
            answer = sample.text.strip()
            new = replace(example, output=answer, history=list(example.history))
            extra: dict[str, Any] = {"response_seed": sample.seed}
            status = STATUS_OK
            if not answer:
                status, extra["detail"] = STATUS_EMPTY_OUTPUT, "the model wrote no output"
            elif sample.finish_reason == "length":
                if opts.keep_truncated:
                    extra["truncated"] = True
                else:
                    status = STATUS_OUTPUT_TRUNCATED
                    extra["detail"] = f"the answer hit max_tokens ({opts.sampling.max_tokens})"
            out[i] = self._record(rid, new, status, extra)
        self.summary.add("seconds", time.perf_counter() - started)
        for rec in out:
            assert rec is not None
            yield rec
