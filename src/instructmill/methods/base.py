"""What the per-record LLM methods share: records in, windows to the engine, one record out per input.

:class:`RecordMethod` is the base of :class:`~instructmill.methods.respond.Responder`,
:class:`~instructmill.methods.judge.Judge`, :class:`~instructmill.methods.humpback.Humpback` and
:class:`~instructmill.methods.evol.Evolver` (distilabel's Task is the model: a method says how one
window becomes engine requests and how results become records; the base class does the rest):

* :meth:`process` takes any iterable of :class:`~instructmill.records.InputRecord` or plain dicts
  (:func:`instructmill.arguments.input_records`; a bare string is a ``TypeError``), streamed;
* windows of at most ``options.records_per_batch`` records and, on engines that batch by a token
  budget (CTranslate2, transformers), at most ``llm.window_tokens()`` tokens of work
  (:meth:`record_cost`, :func:`~instructmill.engine.scheduler.budget_windows`), on engines that
  schedule their own batches (vLLM, servers) at most :data:`WINDOW_TOKENS`: each window's records
  reach the writer before the next window starts, and the cut depends on the input only;
* :meth:`_record` builds an output record with the method's provenance and counts it in the
  summary (``records``, ``ok``, ``discarded`` by status).

A subclass implements ``_chunk(records) -> Iterator[OutputRecord]`` (one window, outputs in input
order), ``record_settings()`` and, when its prompts are not built from the record's own text,
:meth:`record_cost`.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from ..arguments import input_records
from ..engine.scheduler import budget_windows
from ..records import Example, InputRecord, OutputRecord
from ..status import STATUS_OK

__all__ = ["RecordMethod", "WINDOW_TOKENS"]

#: Tokens of work (prompts + most new tokens) in one window on engines that schedule their own
#: batches (vLLM, servers): 256 requests of ~250 tokens, enough to keep continuous batching full.
WINDOW_TOKENS = 65_536


class RecordMethod:
    """Base of the per-record LLM methods (see the module docstring).

    Subclasses set ``method``, ``llm``, ``options`` (with ``records_per_batch``) and ``summary``
    (a :class:`~instructmill.methods.tally.Tally` with ``records``, ``ok`` and ``discarded``).
    """

    method = ""
    llm: Any
    options: Any
    summary: Any

    def process(self, records: Iterable[InputRecord | dict[str, Any]]) -> Iterator[OutputRecord]:
        """Run the method on every record; yields its output records in input order, window by window.

        ``records``: any iterable (streamed) of InputRecord or plain dicts of fields (converted
        as a file row would be; see :func:`instructmill.arguments.input_records`).

        Raises:
            ArgumentTypeError: (a ``TypeError``, at call time) ``records`` is a string or one dict;
                (while iterating) an item is neither an InputRecord nor a dict.
        """
        return self._process(input_records(records))

    def _process(self, records: Iterable[InputRecord]) -> Iterator[OutputRecord]:
        # engines that schedule their own batches (vLLM, servers) get windows of WINDOW_TOKENS of
        # work: long generations on a CPU then reach the writer every few windows, not after
        # minutes; the cut depends on the input only, so runs stay reproducible
        max_cost = self.llm.window_tokens() or WINDOW_TOKENS
        windows = budget_windows(records, self.record_cost, max_items=self.options.records_per_batch,
                                 max_cost=max_cost)
        for window in windows:
            yield from self._chunk(window)

    def _chunk(self, chunk: list[InputRecord]) -> Iterator[OutputRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    def max_new_tokens(self) -> int:
        """The most tokens the method asks the engine to write for one record (all its requests)."""
        return int(self.options.sampling.max_tokens)

    def record_cost(self, record: InputRecord) -> int:
        """Tokens of engine work one record costs: its text fields, tokenized as the engine does, plus
        :meth:`max_new_tokens` (called only on engines that batch by a token budget)."""
        text = "\n".join(v for v in record.fields.values() if isinstance(v, str))
        if not getattr(self.llm, "tokenizes_locally", True):  # a server counts tokens: ~4 characters each
            return len(text) // 4 + self.max_new_tokens()
        return self.llm.count_tokens(text) + self.max_new_tokens()

    def record_settings(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _example(self, record: InputRecord) -> Example | OutputRecord:
        """The record's example, or (when its shape has none) its output record with the error's
        status (``invalid_record``, ``empty_record``: :class:`~instructmill.errors.RecordError`)."""
        from ..errors import RecordError
        from ..io.readers import to_example

        try:
            return to_example(record)
        except RecordError as exc:
            return self._record(record.id, Example(instruction=""), exc.status, {"error": str(exc)})

    def _record(self, rid: str, example: Example, status: str, extra: dict[str, Any]) -> OutputRecord:
        """One output record with the method's provenance, counted in the summary."""
        self.summary.add("records", 1)
        if status == STATUS_OK:
            self.summary.add("ok", 1)
        else:
            self.summary.add_to("discarded", status)
        return OutputRecord(rid, example, status, self.method, self.record_settings(), extra)
