"""Parquet and Arrow IPC files: read them as input rows, write output records into them.

Reading (:func:`table_rows`) streams record batches, so a file larger than memory is read in
constant memory; each row is a plain dict (``pyarrow``'s ``to_pylist``), numbered from 1 like a
JSONL line. ``.arrow`` files may be in the IPC *file* format (``pyarrow.ipc.new_file``,
``.feather`` v2) or the IPC *stream* format (what ``datasets.Dataset.save_to_disk`` writes as
``data-00000-of-00001.arrow``); both are read.

Writing (:func:`write_table`, :func:`jsonl_to_table`) gives every output record one fixed schema
per output shape (:func:`output_schema`), so batches and files concatenate cleanly:

* ``id``, ``status``, ``method``: strings;
* the example in shape ``alpaca`` (``instruction``, ``input``, ``output``, ``system`` (``""``
  when empty), ``history``: list of ``[user, assistant]`` string lists (``[]`` when empty)),
  ``sharegpt`` (``conversations``: list of ``{from, value}``) or ``openai`` (``messages``:
  list of ``{role, content}``);
* ``settings`` and ``extra``: JSON strings (``extra`` null when the record has none). They hold
  method-specific, per-record varying values (numbers, lists, nested options) for which Arrow
  would need a different struct type per method and fails on a type change between rows; a
  string column stores any of them and ``json.loads`` restores them exactly.

``pyarrow`` is imported on first use (it comes with ``pip install 'instructmill[datasets]'``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from instructmill.errors import InstructmillError, OptionError, RecordError

__all__ = ["TABLE_EXTENSIONS", "TABLE_FORMATS", "jsonl_to_table", "output_schema", "table_format",
           "table_rows", "write_table"]

#: File formats of this module (``feather`` is read as ``arrow``).
TABLE_FORMATS = ("parquet", "arrow")
#: File extension -> table format.
TABLE_EXTENSIONS = {".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow"}
#: Rows per record batch read or written (bounds memory: about this many records at a time).
BATCH_ROWS = 1024


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise InstructmillError("Parquet / Arrow files need pyarrow: pip install 'instructmill[datasets]'") from None
    return pyarrow


def table_format(path: str | os.PathLike[str]) -> str | None:
    """``"parquet"`` / ``"arrow"`` from a file name's extension, else ``None``."""
    return TABLE_EXTENSIONS.get(os.path.splitext(os.fspath(path).lower())[1])


# ---------------------------------------------------------------------------- reading

def table_rows(name: str, fmt: str) -> Iterator[tuple[int, dict[str, Any], dict[str, Any], int]]:
    """Rows of a Parquet / Arrow file as ``(row number from 1, row dict, row dict, 0)``, the shape
    :mod:`instructmill.io.readers` consumes (the third item is the raw row, the fourth its size in
    bytes when known: 0 here, the row was never a line).

    Raises:
        OptionError: ``name`` is ``"-"`` (a table cannot be read from stdin) or ``fmt`` unknown.
        RecordError: the file is not a valid Parquet / Arrow file (naming it).
    """
    if name == "-":
        raise OptionError("input-format", fmt, "Parquet / Arrow input cannot be read from stdin; name a file")
    if fmt not in TABLE_FORMATS:
        raise OptionError("format", fmt, f"expected one of {', '.join(TABLE_FORMATS)}")
    line = 0
    for batch in _batches(name, fmt):
        for row in batch.to_pylist():
            line += 1
            yield line, row, row, 0


def _batches(name: str, fmt: str) -> Iterator[Any]:
    pa = _pyarrow()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            reader = pq.ParquetFile(name)
        except (pa.ArrowInvalid, OSError) as exc:
            raise RecordError(f"not a readable Parquet file: {exc}", source=name) from None
        try:
            yield from reader.iter_batches(batch_size=BATCH_ROWS)
        finally:
            reader.close()
        return
    import pyarrow.ipc as ipc

    with pa.memory_map(name, "r") as source:
        try:
            reader = ipc.open_file(source)
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                stream = ipc.open_stream(source)
            except pa.ArrowInvalid as exc:
                raise RecordError(f"not a readable Arrow IPC file or stream: {exc}", source=name) from None
            yield from stream
            return
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


# ---------------------------------------------------------------------------- writing

def output_schema(fmt: str) -> Any:
    """The ``pyarrow.Schema`` of output records in shape ``fmt`` (see the module docstring).

    Raises:
        OptionError: ``fmt`` is not alpaca, sharegpt or openai.
    """
    pa = _pyarrow()
    string = pa.string()
    if fmt == "alpaca":
        example = [("instruction", string), ("input", string), ("output", string), ("system", string),
                   ("history", pa.list_(pa.list_(string)))]
    elif fmt == "sharegpt":
        example = [("conversations", pa.list_(pa.struct([("from", string), ("value", string)])))]
    elif fmt == "openai":
        example = [("messages", pa.list_(pa.struct([("role", string), ("content", string)])))]
    else:
        raise OptionError("format", fmt, "expected one of alpaca, sharegpt, openai")
    return pa.schema([("id", string), *example, ("status", string), ("method", string), ("settings", string),
                      ("extra", string)])


def _normalize(row: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A written output line (:func:`~instructmill.io.writers.format_record`) as a table row."""
    unknown = sorted(set(row) - set(names))
    if unknown:
        raise RecordError(f"field(s) {unknown} are not part of the output table's columns ({', '.join(names)})",
                          record=str(row.get("id")), field=unknown[0])
    out = dict(row)
    out.setdefault("system", "")
    out.setdefault("history", [])
    out["settings"] = json.dumps(row.get("settings") or {}, ensure_ascii=False, sort_keys=True)
    out["extra"] = json.dumps(row["extra"], ensure_ascii=False, sort_keys=True) if row.get("extra") else None
    return out


def rows_to_table(rows: Iterable[dict[str, Any]], fmt: str) -> Any:
    """Output lines (dicts as :func:`~instructmill.io.writers.format_record` makes them) as one
    ``pyarrow.Table`` with :func:`output_schema`.

    Raises:
        RecordError: a row has a column the shape does not have, or a value of the wrong type
            (naming the record id).
    """
    pa = _pyarrow()
    schema = output_schema(fmt)
    data = [_normalize(row, schema.names) for row in rows]
    try:
        return pa.Table.from_pylist(data, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        bad = _first_bad(data, schema)
        raise RecordError(f"does not fit the {fmt} output table: {exc}", record=bad) from None


def _first_bad(data: list[dict[str, Any]], schema: Any) -> str | None:
    pa = _pyarrow()
    for row in data:
        try:
            pa.Table.from_pylist([row], schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return str(row.get("id"))
    return None


def write_table(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str], fmt: str,
                file_format: str | None = None) -> int:
    """Write output lines to a Parquet or Arrow IPC file, :data:`BATCH_ROWS` at a time (constant
    memory); returns the rows written. The file is written beside as ``<path>.tmp`` and renamed
    over ``path`` at the end, so a crash never leaves a half-written table under the real name.

    Args:
        rows: output lines (dicts from :func:`~instructmill.io.writers.format_record` or read back
            from a JSONL output).
        path: the target file.
        fmt: the records' shape (alpaca, sharegpt, openai).
        file_format: ``"parquet"`` or ``"arrow"`` (default: from ``path``'s extension).

    Raises:
        OptionError: the file format cannot be told or is unknown.
        RecordError: a row does not fit the shape's schema.
    """
    target = os.fspath(path)
    kind = file_format or table_format(target)
    if kind not in TABLE_FORMATS:
        raise OptionError("path", target, "name a .parquet or .arrow file (or give the file format)")
    schema = output_schema(fmt)
    tmp = target + ".tmp"
    written = 0
    writer = _writer(kind, tmp, schema)
    try:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH_ROWS:
                writer.write_table(rows_to_table(batch, fmt))
                written += len(batch)
                batch = []
        if batch or not written:
            writer.write_table(rows_to_table(batch, fmt))
            written += len(batch)
    except BaseException:
        writer.close()
        os.unlink(tmp)
        raise
    writer.close()
    os.replace(tmp, target)
    return written


def _writer(kind: str, path: str, schema: Any) -> Any:
    _pyarrow()
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetWriter(path, schema)
    import pyarrow.ipc as ipc

    return ipc.new_file(path, schema)


def jsonl_to_table(jsonl_path: str | os.PathLike[str], path: str | os.PathLike[str], fmt: str) -> int:
    """Convert a JSONL output file (one :func:`~instructmill.io.writers.format_record` line each)
    into a Parquet / Arrow file; returns the rows written.

    Raises:
        RecordError: a line is not valid JSON (naming file and line) or does not fit the schema.
    """
    source = os.fspath(jsonl_path)

    def rows() -> Iterator[dict[str, Any]]:
        with open(source, "rb") as fh:
            for line_no, data in enumerate(fh, start=1):
                if not data.strip():
                    continue
                try:
                    yield json.loads(data)
                except json.JSONDecodeError as exc:
                    raise RecordError(f"invalid JSON: {exc.msg}", line=line_no, source=source) from None

    return write_table(rows(), path, fmt)
