"""Read input records from JSONL, JSON or CSV/TSV files and stdin.

:func:`read_records` turns a file into :class:`~instructmill.records.InputRecord` objects
with stable ids; :func:`detect_shape` names the layout of a record's fields and
:func:`to_example` converts a record into the canonical
:class:`~instructmill.records.Example`.

Supported layouts (shapes):

* ``"seed"``: a Self-Instruct seed task (Wang et al. 2023, ``seed_tasks.jsonl``):
  ``instruction`` plus an ``instances`` list of ``{"input", "output"}``.
* ``"alpaca"``: ``instruction`` with ``input`` and/or ``output`` (Stanford Alpaca), plus the
  optional ``system`` and ``history`` (list of ``[user, assistant]`` pairs) that
  LLaMA-Factory's Alpaca format adds.
* ``"sharegpt"``: ``conversations``, a list of ``{"from", "value"}`` turns.
* ``"openai"``: ``messages``, a list of ``{"role", "content"}`` turns (OpenAI chat format).
* ``"table"``: any other row (e.g. CSV columns used by templates).

Limits (each bad case is one clear error, never a traceback or a hang; the checks live in
:mod:`instructmill.io.limits` and are re-exported here):

* the input must be a regular file, or ``"-"`` for stdin (:func:`require_regular_file`): a
  FIFO, device or folder would block or fail half-way;
* a JSON record may nest at most :data:`MAX_JSON_DEPTH` arrays/objects; a deeper line becomes a
  :class:`ReadError` (the run goes on) instead of a ``RecursionError`` that ends it;
* a ``.gz`` file that is not gzip, truncated or corrupt (and any read error) raises
  :class:`InputFileError` naming the file, the last line read and the records read before it;
* one huge line costs about twice its size while it is read (the line's bytes, its text and
  the parsed record are never all alive at once); see ``benchmarks/mem_huge_line.py``.

Only the standard library is used, so importing this module is cheap.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import hashlib
import io
import json
import logging
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from instructmill.errors import OptionError, RecordError
from instructmill.io.idset import IdSet
from instructmill.io.limits import (MAX_JSON_DEPTH, InputFileError, json_too_deep, read_failure,
                                    require_regular_file)
from instructmill.io.shapes import _json_type, detect_shape, to_example  # noqa: F401 (re-exported)
from instructmill.records import InputRecord, derived_id

__all__ = [
    "MAX_JSON_DEPTH",
    "READ_FORMATS",
    "InputFileError",
    "ReadError",
    "content_id",
    "detect_format",
    "detect_shape",
    "read_records",
    "record_from_dict",
    "require_regular_file",
    "to_example",
]

log = logging.getLogger("instructmill.io")

#: Input formats accepted by :func:`read_records` (``ndjson`` is an alias of ``jsonl``).
READ_FORMATS = ("jsonl", "ndjson", "json", "csv", "tsv", "parquet", "arrow")

_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
               ".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow"}
_BOM = codecs.BOM_UTF8
#: Longest ``raw`` text kept in a :class:`ReadError`.
RAW_LIMIT = 500
#: Bytes of a line kept for its ``raw`` text: enough for RAW_LIMIT + 1 characters of UTF-8.
_RAW_BYTES = (RAW_LIMIT + 1) * 4
#: Records whose line is longer than this are hashed for :func:`content_id` piece by piece,
#: so their canonical JSON is never held whole next to the record.
_STREAM_HASH_BYTES = 1 << 20


@dataclass
class ReadError:
    """An input line that could not be turned into a record.

    Attributes:
        line: 1-based line number (JSONL/CSV) or element index + 1 (JSON array).
        error: human-readable reason (``"invalid JSON: ..."``, ``"duplicate id 'x' ..."``).
        raw: the line decoded with ``errors="replace"``, cut to about 500 characters.
        source: the path it came from (``"-"`` for stdin), when known.
    """

    line: int
    error: str
    raw: str
    source: str | None = None


def _raw_text(data: Any) -> str:
    if isinstance(data, (bytes, bytearray)):
        # Decode only the head: a 20 MB line must not be copied whole for a 500-character excerpt.
        text = bytes(data[:_RAW_BYTES]).decode("utf-8", errors="replace")
    elif isinstance(data, str):
        text = data
    else:
        text = json.dumps(data, ensure_ascii=False, default=str)
    text = text.rstrip("\r\n")
    if len(text) > RAW_LIMIT:
        text = text[:RAW_LIMIT] + "…"
    return text


def content_id(fields: dict[str, Any], line: int, *, size_hint: int = 0) -> str:
    """Id of a record that has no id of its own: ``f"L{line}-{hash8}"``.

    ``hash8`` is the first 8 hex digits of the SHA-1 of the record's canonical JSON
    (``sort_keys=True, ensure_ascii=False``, compact separators, UTF-8). It depends only on
    the line number and the content, so it is the same on every run over the same file.
    ``size_hint`` (the record's size in bytes, when known) above 1 MiB hashes the JSON piece
    by piece, so a huge record's JSON text is never held whole; the id is the same.
    """
    options = {"sort_keys": True, "ensure_ascii": False, "separators": (",", ":"), "default": str}
    digest = hashlib.sha1()
    if size_hint <= _STREAM_HASH_BYTES:
        digest.update(json.dumps(fields, **options).encode("utf-8", errors="surrogatepass"))
    else:
        step = _STREAM_HASH_BYTES
        for chunk in json.JSONEncoder(**options).iterencode(fields):
            for start in range(0, len(chunk), step):
                digest.update(chunk[start:start + step].encode("utf-8", errors="surrogatepass"))
    return f"L{line}-{digest.hexdigest()[:8]}"


def detect_format(path: str | os.PathLike[str]) -> str:
    """Input format from a file name: ``.jsonl``/``.ndjson`` -> ``"jsonl"``, ``.json``,
    ``.csv``, ``.tsv`` (each optionally followed by ``.gz``); ``"-"`` (stdin) -> ``"jsonl"``.

    Raises:
        OptionError: the extension is not one of those.
    """
    name = os.fspath(path)
    if name == "-":
        return "jsonl"
    lower = name.lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    ext = os.path.splitext(lower)[1]
    if ext not in _EXTENSIONS:
        raise OptionError("format", None,
                          f"cannot tell the format of {name!r} from its extension; "
                          f"name the format (one of {', '.join(READ_FORMATS)})")
    return _EXTENSIONS[ext]


def read_records(path: str | os.PathLike[str], *, format: str | None = None, id_field: str = "id",
                 strict: bool = False,
                 on_error: Callable[[ReadError], None] | None = None) -> Iterator[InputRecord]:
    """Read records from ``path`` one at a time.

    Args:
        path: a file, or ``"-"`` for stdin (JSONL unless ``format`` says otherwise).
            A ``.gz`` suffix is read through gzip.
        format: ``"jsonl"`` (alias ``"ndjson"``), ``"json"`` (a top-level array of objects)
            ``"csv"`` or ``"tsv"`` (header row first), ``"parquet"`` or ``"arrow"`` (Arrow IPC
            file or stream, e.g. ``.arrow`` / ``.feather``; rows numbered from 1, read in
            record batches through pyarrow: :mod:`instructmill.io.tables`). ``None`` picks it from the extension
            (:func:`detect_format`); a ``.json`` file whose first character is ``{`` is read
            as JSONL, since many tools write JSON Lines under that name.
        id_field: field that holds the record's own id. When it is missing or empty the id
            is :func:`content_id` (``"L{line}-{hash8}"``).
        strict: raise on the first bad line instead of reporting it.
        on_error: called with a :class:`ReadError` for each bad line (invalid UTF-8 or
            JSON, not an object, wrong CSV column count); reading goes on. A record whose id an
            earlier record already had is kept under a derived id (``"<id>#L<line>"``, see
            :func:`~instructmill.records.derived_id`) with ``duplicate_of`` set, and logged.
            Without it bad lines are logged as warnings on the ``instructmill.io`` logger.

    Returns:
        an iterator of :class:`InputRecord` (``fields`` as read, ``shape`` from
        :func:`detect_shape`, ``source`` = ``str(path)``). JSONL and CSV are read line by
        line in constant memory (apart from the set of ids seen); a JSON array is loaded whole.
        A record nested deeper than :data:`MAX_JSON_DEPTH` is a bad line (a :class:`ReadError`).
        A UTF-8 BOM at the start of the file is ignored; blank and whitespace-only lines are
        skipped (they are not errors). CSV/TSV rows whose cells are all blank are skipped too.

    Raises:
        OptionError: unknown format, the file does not exist or is not a regular file (a
            FIFO, device or folder; raised at call time).
        RecordError: with ``strict=True``, a bad line or a duplicate id (naming path and line); always, a JSON
            file that is not one array of values, or a CSV header with repeated names.
        InputFileError: while iterating, the file cannot be read on (not gzip, truncated or
            corrupt gzip, I/O error); the records before it have been yielded.
    """
    name = os.fspath(path)
    if format is None:
        fmt = detect_format(name)
        sniff = fmt == "json" and name != "-"
    else:
        fmt = format.lower()
        if fmt not in READ_FORMATS:
            raise OptionError("format", format, f"expected one of {', '.join(READ_FORMATS)}")
        sniff = False
    if fmt == "ndjson":
        fmt = "jsonl"
    if name != "-":
        require_regular_file(name)
    if sniff and _first_char(name) == "{":
        fmt = "jsonl"
    return _read(name, fmt, id_field, strict, on_error)


def _open_binary(name: str) -> Any:
    """Context manager giving the binary stream; stdin is not closed on exit."""
    if name == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    if name.lower().endswith(".gz"):
        return gzip.open(name, "rb")
    return open(name, "rb")


def _first_char(name: str) -> str:
    try:
        with _open_binary(name) as fh:
            head = fh.read(4096)
    except (OSError, EOFError, zlib.error) as exc:
        raise read_failure(name, exc, line=0, records=0) from None
    text = head.removeprefix(_BOM).decode("utf-8", errors="replace").lstrip()
    return text[:1]


def _read(name: str, fmt: str, id_field: str, strict: bool,
          on_error: Callable[[ReadError], None] | None) -> Iterator[InputRecord]:
    if fmt == "jsonl":
        rows = _jsonl_rows(name)
    elif fmt == "json":
        rows = _json_rows(name)
    elif fmt in ("parquet", "arrow"):  # record batches through pyarrow (io/tables.py)
        from instructmill.io.tables import table_rows

        rows = table_rows(name, fmt)
    else:
        rows = _csv_rows(name, "\t" if fmt == "tsv" else ",")
    seen = IdSet(expected=_estimated_rows(name, fmt))  # hashed ids, flat memory (io/idset.py)
    duplicates = 0
    last_line = 0
    while True:
        # Only the file's own reading is guarded: an OSError from on_error (the errors file)
        # is not an input problem and must not be reported as one.
        try:
            line, obj, raw, size = next(rows)
        except StopIteration:
            return
        except (OSError, EOFError, zlib.error) as exc:
            raise read_failure(name, exc, line=last_line, records=len(seen)) from None
        last_line = line
        if isinstance(obj, ReadError):
            _report(obj, name, strict, on_error)
            continue
        rid = _record_id(obj, line, id_field, size)
        duplicate_of = None
        if not seen.add(rid):
            duplicates += 1
            if strict:
                first = _first_line(name, fmt, id_field, rid, line)
                where = f"first seen on line {first}" if first is not None else "seen on an earlier line"
                raise RecordError(f"duplicate id {rid!r} ({where})", record=rid, line=line, source=name)
            # both records are kept: the second under an id derived from its line (stable on resume)
            duplicate_of, rid = rid, derived_id(rid, line, lambda c: c in seen)
            seen.add(rid)
            if duplicates <= _DUPLICATES_LOCATED:
                log.warning("%s line %d: duplicate id %r, kept as %r", name, line, duplicate_of, rid)
        record = InputRecord(id=rid, line=line, fields=obj, shape=detect_shape(obj), source=name,
                             duplicate_of=duplicate_of)
        del obj, raw  # the record alone holds the data while the caller works on it
        yield record


def _estimated_rows(name: str, fmt: str) -> int:
    """Rows a plain JSONL / CSV file likely holds: its size / the mean line length of its first
    256 KiB (0 for stdin, compressed or other files: the id set then grows as ids come)."""
    if name == "-" or fmt not in ("jsonl", "csv", "tsv") or name.lower().endswith(".gz"):
        return 0
    try:
        size = os.path.getsize(name)
        with open(name, "rb") as fh:
            head = fh.read(1 << 18)
    except OSError:
        return 0
    lines = head.count(b"\n")
    return int(size * lines / len(head)) + 1 if lines else 1


#: Duplicate ids whose first line is looked up (each lookup re-reads the file up to that line).
_DUPLICATES_LOCATED = 100


def _first_line(name: str, fmt: str, id_field: str, rid: str, before: int) -> int | None:
    """The line where ``rid`` first appears (re-read from the file: the id set keeps no lines)."""
    if name == "-" or fmt not in ("jsonl", "csv", "tsv", "json"):
        return None
    rows = _jsonl_rows(name) if fmt == "jsonl" else _json_rows(name) if fmt == "json" else \
        _csv_rows(name, "\t" if fmt == "tsv" else ",")
    try:
        for line, obj, _raw, size in rows:
            if line >= before:
                return None
            if not isinstance(obj, ReadError) and _record_id(obj, line, id_field, size) == rid:
                return line
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    return None


def _report(err: ReadError, name: str, strict: bool,
            on_error: Callable[[ReadError], None] | None) -> None:
    if strict:
        raise RecordError(err.error, line=err.line, source=name)
    if on_error is None:
        log.warning("%s, line %d: %s (skipped)", name, err.line, err.error)
    else:
        on_error(err)


def record_from_dict(fields: dict[str, Any], line: int, *, id_field: str = "id",
                     source: str | None = None) -> InputRecord:
    """The :class:`InputRecord` that :func:`read_records` makes of the row ``fields`` at ``line``.

    Same id rule (the ``id_field`` value, else :func:`content_id`) and shape detection as a file
    row; ``fields`` is copied (shallowly), so later changes to the caller's dict do not leak in.
    """
    row = dict(fields)
    return InputRecord(id=_record_id(row, line, id_field), line=line, fields=row,
                       shape=detect_shape(row), source=source)


def _record_id(fields: dict[str, Any], line: int, id_field: str, size: int = 0) -> str:
    value = fields.get(id_field)
    if value is None or isinstance(value, (dict, list)):
        return content_id(fields, line, size_hint=size)
    text = str(value)
    if not text.strip():
        return content_id(fields, line, size_hint=size)
    return text


# Each row producer yields (line, dict | ReadError, raw, size): ``raw`` is the line's head (JSONL,
# for error messages) or the row itself, ``size`` the row's size in bytes (0 if unknown).
_Row = tuple[int, Any, Any, int]

def _jsonl_rows(name: str) -> Iterator[_Row]:
    # Memory: a line is held once as bytes, then once as text, then as the parsed record;
    # each copy is dropped as soon as the next exists (``del``), and the loop avoids
    # enumerate(), whose reused result tuple would keep the last line's bytes alive.
    line_no = 0
    with _open_binary(name) as fh:
        for data in fh:
            line_no += 1
            if line_no == 1 and data.startswith(_BOM):
                data = data[len(_BOM):]
            size = len(data)
            head = data[:_RAW_BYTES]
            if json_too_deep(data):
                del data
                yield line_no, ReadError(line_no, f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                                         _raw_text(head), name), head, size
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line_no, ReadError(line_no, f"invalid UTF-8: {exc}", _raw_text(head), name), head, size
                continue
            finally:
                del data
            if not text or text.isspace():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield line_no, ReadError(line_no, f"invalid JSON: {exc.msg} (column {exc.colno})",
                                         _raw_text(head), name), head, size
                continue
            finally:
                del text
            if not isinstance(obj, dict):
                yield line_no, ReadError(line_no, f"expected a JSON object, got {_json_type(obj)}",
                                         _raw_text(head), name), head, size
                continue
            yield line_no, obj, head, size
            del obj


def _json_rows(name: str) -> Iterator[_Row]:
    with _open_binary(name) as fh:
        data = fh.read()
    data = data.removeprefix(_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecordError(f"invalid UTF-8: {exc}", line=line, source=name) from None
    if not text or text.isspace():
        return
    # One document: too deep anywhere means it cannot be read at all (records are one level in).
    if json_too_deep(data, MAX_JSON_DEPTH + 1):
        raise RecordError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels (in a record)",
                          source=name)
    del data
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno,
                          source=name) from None
    if not isinstance(doc, list):
        raise RecordError(f"expected a top-level JSON array of objects, got {_json_type(doc)} "
                          "(for one object per line use the jsonl format)", source=name)
    for index, obj in enumerate(doc, start=1):
        if not isinstance(obj, dict):
            yield index, ReadError(index, f"expected a JSON object, got {_json_type(obj)}",
                                   _raw_text(obj), name), obj, 0
            continue
        yield index, obj, obj, 0


def _csv_rows(name: str, delimiter: str) -> Iterator[_Row]:
    # Long texts exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with _open_binary(name) as binary:
        # surrogateescape keeps going past bad bytes; rows holding them are reported below.
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        try:
            yield from _csv_parse(csv.reader(text, delimiter=delimiter), name, delimiter)
        finally:
            text.detach()  # leave closing to the ``with`` (and never close stdin)


def _csv_parse(reader: Any, name: str, delimiter: str) -> Iterator[_Row]:
    """Rows of a csv.reader as (line, dict | ReadError, raw); the first non-blank row is the header."""
    header: list[str] | None = None
    last = 0
    for row in reader:
        start, last = last + 1, reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        raw = delimiter.join(row)
        if header is None:
            header = [cell.lstrip("\ufeff") if i == 0 else cell for i, cell in enumerate(row)]
            if _has_surrogates(raw):
                raise RecordError("invalid UTF-8 in the header row", line=start, source=name)
            dups = sorted({h for h in header if header.count(h) > 1})
            if dups:
                raise RecordError(f"repeated column name(s) in the header: {dups}",
                                  line=start, source=name)
            continue
        if _has_surrogates(raw):
            yield start, ReadError(start, "invalid UTF-8", _raw_text(_unescape(raw)), name), raw, len(raw)
            continue
        if len(row) != len(header):
            yield start, ReadError(start, f"row has {len(row)} fields, the header has "
                                   f"{len(header)}", _raw_text(raw), name), raw, len(raw)
            continue
        yield start, dict(zip(header, row)), raw, len(raw)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _unescape(text: str) -> str:
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")

