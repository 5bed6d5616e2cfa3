"""Hugging Face ``datasets`` in and out.

* :func:`records_from_dataset`: a ``datasets.Dataset`` / ``IterableDataset`` (or any iterable of
  dicts) as :class:`~instructmill.records.InputRecord` objects, with the ids and shapes
  :func:`~instructmill.io.readers.read_records` gives a file holding the same rows (the row
  number from 1 plays the line number). Streams: an ``IterableDataset`` is never materialized.
* :func:`to_dataset`: output records (or a written JSONL output) as a ``datasets.Dataset`` with
  the fixed per-shape schema of :func:`~instructmill.io.tables.output_schema` (``settings`` and
  ``extra`` as JSON strings).
* :func:`as_map_function`: a method (``BackTranslator``, ``TemplateFiller``, any object with
  ``process(records)``) as a function for ``Dataset.map(fn, batched=True)``.

``datasets`` is imported only inside these functions (``pip install 'instructmill[datasets]'``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from instructmill.errors import InstructmillError, OptionError, RecordError
from instructmill.io.idset import IdSet
from instructmill.io.readers import ReadError, _record_id, detect_shape
from instructmill.io.writers import example_fields, format_record
from instructmill.records import InputRecord, OutputRecord, derived_id

__all__ = ["MapFunction", "as_map_function", "records_from_dataset", "require_datasets", "to_dataset"]

#: Where dataset rows come from, in messages and ``InputRecord.source``.
DATASET_SOURCE = "<dataset>"


def require_datasets() -> Any:
    """The ``datasets`` module.

    Raises:
        InstructmillError: it is not installed (one line saying how to install it).
    """
    try:
        import datasets
    except ImportError:
        raise InstructmillError("Hugging Face datasets is not installed: "
                                "pip install 'instructmill[datasets]'") from None
    return datasets


def records_from_dataset(ds: Iterable[dict[str, Any]], *, id_field: str = "id", strict: bool = False,
                         on_error: Callable[[ReadError], None] | None = None) -> Iterator[InputRecord]:
    """The rows of ``ds`` as input records, one at a time.

    Args:
        ds: a ``datasets.Dataset``, a ``datasets.IterableDataset`` (streamed) or any iterable of
            dicts (a list, a generator).
        id_field: column holding the record id; a missing / empty / null / list value gives
            ``"L{row}-{hash8}"`` (:func:`~instructmill.io.readers.content_id`), ``row`` counting
            from 1: the same ids as a JSONL file with the same rows.
        strict: raise on a row that is not a dict or repeats an id instead of reporting it.
        on_error: called with a :class:`~instructmill.io.readers.ReadError` for such a row (the
            row is skipped); without it a warning is logged.

    Raises:
        OptionError: ``ds`` is a ``DatasetDict`` (or another mapping): name a split.
        RecordError: with ``strict=True``, the first bad row (naming it).
    """
    from instructmill.io.readers import _report

    if isinstance(ds, Mapping):
        raise OptionError("dataset", type(ds).__name__, f"pass one split, e.g. ds[{next(iter(ds), 'train')!r}]")
    return _dataset_records(ds, id_field, strict, on_error, _report)


def _dataset_records(ds: Iterable[dict[str, Any]], id_field: str, strict: bool,
                     on_error: Callable[[ReadError], None] | None, _report: Any) -> Iterator[InputRecord]:
    seen = IdSet()
    source = DATASET_SOURCE
    for row_no, row in enumerate(ds, start=1):
        if not isinstance(row, dict):
            err = ReadError(row_no, f"expected a dict row, got {type(row).__name__}", repr(row)[:500], source)
            _report(err, source, strict, on_error)
            continue
        rid = _record_id(row, row_no, id_field)
        duplicate_of = None
        if not seen.add(rid):
            if strict:
                raise RecordError(f"duplicate id {rid!r}", record=rid, line=row_no, source=source)
            # both rows are kept, the second under an id derived from its row number (as files do)
            duplicate_of, rid = rid, derived_id(rid, row_no, lambda c: c in seen)
            seen.add(rid)
        yield InputRecord(id=rid, line=row_no, fields=row, shape=detect_shape(row), source=source,
                          duplicate_of=duplicate_of)


def _output_rows(records: Iterable[OutputRecord | dict[str, Any]] | str | os.PathLike[str],
                 fmt: str) -> Iterator[dict[str, Any]]:
    if isinstance(records, (str, os.PathLike)):
        path = os.fspath(records)
        with open(path, "rb") as fh:
            for line_no, data in enumerate(fh, start=1):
                if data.strip():
                    try:
                        yield json.loads(data)
                    except json.JSONDecodeError as exc:
                        raise RecordError(f"invalid JSON: {exc.msg}", line=line_no, source=path) from None
        return
    for rec in records:
        yield format_record(rec, fmt) if isinstance(rec, OutputRecord) else rec


def to_dataset(records: Iterable[OutputRecord | dict[str, Any]] | str | os.PathLike[str], fmt: str = "alpaca"
               ) -> Any:
    """Output records as an in-memory ``datasets.Dataset``.

    Args:
        records: :class:`~instructmill.records.OutputRecord` objects, the dicts
            :func:`~instructmill.io.writers.format_record` makes, or the path of a JSONL output
            written by instructmill (in shape ``fmt``).
        fmt: the example shape: ``alpaca`` (columns ``instruction``, ``input``, ``output``,
            ``system``, ``history``), ``sharegpt`` (``conversations``) or ``openai``
            (``messages``); every shape also has ``id``, ``status``, ``method`` and ``settings`` /
            ``extra`` as JSON strings (:func:`~instructmill.io.tables.output_schema`).

    Returns:
        a ``datasets.Dataset`` (all rows in memory; for more rows than memory holds write a
        Parquet sink and ``datasets.load_dataset("parquet", data_files=...)`` it).

    Raises:
        InstructmillError: ``datasets`` is not installed.
        RecordError: a record does not fit the shape (naming its id) or a JSONL line is invalid.
    """
    from instructmill.io.tables import rows_to_table

    datasets = require_datasets()
    return datasets.Dataset(rows_to_table(_output_rows(records, fmt), fmt))


# ------------------------------------------------------------------------ Dataset.map

#: How each method runs over input records (method name -> call); others use ``process``.
_RUNNERS: dict[str, Callable[[Any, Iterable[InputRecord]], Iterable[OutputRecord]]] = {
    "template": lambda method, records: method.fill(records),
}


def _run_method(method: Any, records: list[InputRecord]) -> list[OutputRecord]:
    runner = _RUNNERS.get(getattr(method, "method", ""))
    if runner is not None:
        return list(runner(method, records))
    if not callable(getattr(method, "process", None)):
        raise InstructmillError(f"{type(method).__name__} has no process(records) method to map with")
    return list(method.process(records))


def as_map_function(method: Any, *, fmt: str | None = None, id_field: str = "id", keep_original: bool = False
                    ) -> MapFunction:
    """``method`` as a function for ``Dataset.map(fn, batched=True)`` (also ``IterableDataset``).

    The function takes a batch (column -> list of values, and optionally the rows' indices when
    the map is called with ``with_indices=True``) and returns the batch with

    * the example columns replaced in place by the method's result: ``instruction``, ``input``,
      ``output`` (plus ``system`` / ``history`` when the dataset has those columns) for ``alpaca``;
      ``conversations`` for ``sharegpt``; ``messages`` for ``openai``;
    * ``status``: ``"ok"`` or why the row is not usable (``"unchanged"``, ``"placeholder_lost"``,
      ``"template_error"``...), exactly as the method's ``process`` gives it;
    * with ``keep_original``, ``<column>_original`` holding the input's value of each replaced
      column;
    * every other input column, unchanged (repeated when a method makes several outputs per
      input, e.g. back-translation through several pivots; then ``id`` holds the output ids).

    Rows are never dropped: filter afterwards (``ds.filter(lambda r: r["status"] == "ok")``).
    Ids (``id_field`` column, else ``"L{row}-{hash8}"`` from the index) only matter for output
    ids; pass ``with_indices=True`` to get the ids :func:`records_from_dataset` gives.

    Args:
        method: e.g. :class:`~instructmill.methods.backtranslation.BackTranslator`,
            :class:`~instructmill.methods.template.TemplateFiller`.
        fmt: output shape of the example columns (default: the shape of each batch's first row
            when it is sharegpt / openai, else alpaca).
        id_field: the id column.
        keep_original: also return the input values of the replaced columns.

    Raises:
        InstructmillError: (when called) ``method`` has no way to process records; (in a worker
            process) the map was called with ``num_proc`` > 1 (the models cannot move there).
    """
    return MapFunction(method, fmt=fmt, id_field=id_field, keep_original=keep_original)


#: Everything that decides a method's output, for the methods whose results a map cache may reuse
#: (method name -> description). Back-translation's settings name the models, decoding and quality
#: options; a template's settings hold only its name, so its sources go in too.
_IDENTITIES: dict[str, Callable[[Any], Any]] = {
    "backtranslation": lambda m: m.settings(),
    "template": lambda m: {"sources": m.template.sources(), "variables": m.variables},
}


class MapFunction:
    """The callable :func:`as_map_function` returns (see there).

    ``datasets`` fingerprints a map's function by pickling it; this one pickles as what decides
    the method's output (:data:`_IDENTITIES`: back-translation's settings, a template's sources)
    plus the map's own options, so an equal method over the same dataset may reuse a cached
    result (any other method: never). It cannot run in another
    process (its models stay in this one): unpickling raises :class:`InstructmillError` (use
    ``num_proc=1``; the engines use every core themselves).
    """

    def __init__(self, method: Any, *, fmt: str | None, id_field: str, keep_original: bool):
        self.method, self.fmt, self.id_field, self.keep_original = method, fmt, id_field, keep_original

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        describe = _IDENTITIES.get(getattr(self.method, "method", ""))
        if describe is None:  # no known complete description: never equal to another instance
            identity = f"{type(self.method).__qualname__}@{id(self)}"
        else:
            identity = json.dumps([describe(self.method), self.fmt, self.id_field, self.keep_original],
                                  sort_keys=True, default=str)
        return _not_in_another_process, (identity,)

    def __call__(self, batch: dict[str, list[Any]], indices: list[int] | None = None) -> dict[str, list[Any]]:
        """One batch in (column -> values), the mapped batch out (see :func:`as_map_function`)."""
        id_field, keep_original = self.id_field, self.keep_original
        columns = list(batch)
        size = len(batch[columns[0]]) if columns else 0
        rows = [{c: batch[c][i] for c in columns} for i in range(size)]
        records = []
        for i, row in enumerate(rows):
            number = (indices[i] + 1) if indices is not None else i + 1
            records.append(InputRecord(id=_record_id(row, number, id_field), line=number, fields=row,
                                       shape=detect_shape(row), source=DATASET_SOURCE))
        outputs = _run_method(self.method, records)
        by_input = _group(records, outputs, self.method)
        shape = self.fmt or (records[0].shape if records and records[0].shape in ("sharegpt", "openai")
                             else "alpaca")
        out: dict[str, list[Any]] = {c: [] for c in columns}
        example_columns: list[str] = []
        for record, produced in zip(records, by_input):
            for rec in produced:
                values = example_fields(rec.example, shape)
                if shape == "alpaca":  # fixed columns, so every batch has the same schema
                    values.setdefault("system", rec.example.system)
                    values.setdefault("history", [list(p) for p in rec.example.history])
                    values = {k: v for k, v in values.items()
                              if k in ("instruction", "input", "output") or k in record.fields}
                if not example_columns:
                    example_columns = list(values)
                    for c in example_columns:
                        out.setdefault(c, [])
                        if keep_original:
                            out[f"{c}_original"] = []
                    out["status"] = []
                for c in columns:
                    if c not in values:
                        out[c].append(rec.id if c == id_field and len(produced) > 1 else record.fields[c])
                for c in example_columns:
                    out[c].append(values.get(c))
                    if keep_original:
                        out[f"{c}_original"].append(record.fields.get(c))
                out["status"].append(rec.status)
        return out


def _not_in_another_process(identity: str) -> MapFunction:
    raise InstructmillError("an instructmill map function cannot run in another process (its models live in "
                            "this one): call Dataset.map with num_proc=1")


def _group(records: list[InputRecord], outputs: list[OutputRecord], method: Any) -> list[list[OutputRecord]]:
    """The outputs of each input, in input order (a method yields them in input order)."""
    output_ids = getattr(method, "output_ids", None)
    per = [len(output_ids(r.id)) if callable(output_ids) else 1 for r in records]
    if sum(per) != len(outputs):
        raise InstructmillError(f"{type(method).__name__} returned {len(outputs)} records for {len(records)} "
                                f"rows (expected {sum(per)})")
    grouped, pos = [], 0
    for n in per:
        grouped.append(outputs[pos:pos + n])
        pos += n
    return grouped
