"""Write output records as JSON Lines in the Alpaca, ShareGPT or OpenAI ``messages`` shape.

:func:`format_record` turns an :class:`~instructmill.records.OutputRecord` into a plain
dict; :class:`JsonlWriter` appends such dicts to a file, one per line.

Shapes (the formats LLaMA-Factory reads, see its ``data/README.md``):

* ``"alpaca"``: ``instruction``, ``input``, ``output`` (+ ``system`` and ``history`` when
  non-empty).
* ``"sharegpt"``: ``conversations``: ``[{"from": "system"|"human"|"gpt", "value": ...}]``.
* ``"openai"``: ``messages``: ``[{"role": "system"|"user"|"assistant", "content": ...}]``.

Every record also carries ``id``, ``status``, ``method`` and ``settings`` (provenance), and
``extra`` when the record has any.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from instructmill.errors import OptionError
from instructmill.records import Example, OutputRecord

__all__ = ["WRITE_FORMATS", "JsonlWriter", "dumps_line", "example_fields", "format_record"]

#: Output formats accepted by :func:`format_record`.
WRITE_FORMATS = ("alpaca", "sharegpt", "openai")


def _user_text(ex: Example) -> str:
    return f"{ex.instruction}\n\n{ex.input}" if ex.input else ex.instruction


def _empty(example: Example) -> bool:
    return not (example.instruction or example.input or example.output or example.system or example.history
                or example.leading_assistant)


def _assistant_only(example: Example) -> bool:
    """A conversation that had no user turn (only ``leading_assistant``): no user turn is made up."""
    return bool(example.leading_assistant) and not (example.history or example.instruction or example.input
                                                    or example.output)


def example_fields(example: Example, fmt: str) -> dict[str, Any]:
    """The example's fields in output shape ``fmt`` (see the module docstring).

    In the conversation shapes the user turn is ``instruction + "\\n\\n" + input`` when
    ``input`` is non-empty, and the final assistant turn is left out when ``output`` is ``""``;
    ``leading_assistant`` turns come first (after the system turn), and a conversation of assistant
    turns only gets no user turn. Alpaca records carry them as ``leading_assistant`` (a list of strings).

    Raises:
        OptionError: ``fmt`` is not one of :data:`WRITE_FORMATS`.
    """
    if fmt == "alpaca":
        out: dict[str, Any] = {"instruction": example.instruction, "input": example.input,
                               "output": example.output}
        if example.system:
            out["system"] = example.system
        if example.history:
            out["history"] = [[user, assistant] for user, assistant in example.history]
        if example.leading_assistant:
            out["leading_assistant"] = list(example.leading_assistant)
        return out
    if fmt == "sharegpt":
        key, role, text, names = "conversations", "from", "value", ("system", "human", "gpt")
    elif fmt == "openai":
        key, role, text, names = "messages", "role", "content", ("system", "user", "assistant")
    else:
        raise OptionError("format", fmt, f"expected one of {', '.join(WRITE_FORMATS)}")
    system, user, assistant = names
    turns: list[dict[str, str]] = []
    if _empty(example):  # a record without a usable example (invalid_record): no turn is made up
        return {key: turns}
    if example.system:
        turns.append({role: system, text: example.system})
    for answer in example.leading_assistant:
        turns.append({role: assistant, text: answer})
    for question, answer in example.history:
        turns.append({role: user, text: question})
        turns.append({role: assistant, text: answer})
    if not _assistant_only(example):
        turns.append({role: user, text: _user_text(example)})
    if example.output:
        turns.append({role: assistant, text: example.output})
    return {key: turns}


def format_record(rec: OutputRecord, fmt: str) -> dict[str, Any]:
    """One output line as a dict: ``id``, the example in shape ``fmt``, ``status``,
    ``method``, ``settings``, and ``extra`` when ``rec.extra`` is non-empty.

    Raises:
        OptionError: ``fmt`` is not one of :data:`WRITE_FORMATS`.
    """
    out: dict[str, Any] = {"id": rec.id}
    out.update(example_fields(rec.example, fmt))
    out["status"] = rec.status
    out["method"] = rec.method
    out["settings"] = dict(rec.settings)
    if rec.extra:
        out["extra"] = dict(rec.extra)
    return out


def _default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps_line(obj: Any) -> bytes:
    """``obj`` as one UTF-8 JSON line ending in ``"\\n"`` (``ensure_ascii=False``).

    Paths become strings and sets sorted lists. A string holding a lone surrogate (possible
    after ``json.loads('"\\\\ud800"')``) cannot be UTF-8 encoded; such a line is written with
    ``ensure_ascii=True`` instead, which keeps it valid JSON that reads back to the same value.
    """
    text = json.dumps(obj, ensure_ascii=False, default=_default)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = json.dumps(obj, ensure_ascii=True, default=_default).encode("ascii")
    return data + b"\n"


#: Objects with at least this many characters of text are streamed by :meth:`JsonlWriter.write_many`.
STREAM_CHARS = 4 << 20
_SLICE = 1 << 20


def _text_size(obj: Any, limit: int) -> int:
    """Characters of text in ``obj`` (strings, keys, lists, dicts), counted up to ``limit``."""
    if isinstance(obj, str):
        return len(obj)
    total = 0
    if isinstance(obj, dict):
        for key, value in obj.items():
            total += len(str(key)) + _text_size(value, limit - total)
            if total >= limit:
                break
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            total += _text_size(value, limit - total)
            if total >= limit:
                break
    return total


def _stream_json(obj: Any, fh: Any) -> None:
    """Write ``obj`` as compact JSON to the binary file ``fh`` (``json.dumps(obj, ensure_ascii=False)``
    byte for byte), long strings in slices. A lone surrogate is written as its ``\\uXXXX`` escape
    (valid JSON that reads back to the same string)."""
    if isinstance(obj, dict):
        fh.write(b"{")
        for i, (key, value) in enumerate(obj.items()):
            if i:
                fh.write(b", ")
            _stream_json(key if isinstance(key, str) else str(key), fh)
            fh.write(b": ")
            _stream_json(value, fh)
        fh.write(b"}")
    elif isinstance(obj, (list, tuple)):
        fh.write(b"[")
        for i, value in enumerate(obj):
            if i:
                fh.write(b", ")
            _stream_json(value, fh)
        fh.write(b"]")
    elif isinstance(obj, str) and len(obj) > _SLICE:
        fh.write(b'"')
        for start in range(0, len(obj), _SLICE):
            piece = json.dumps(obj[start:start + _SLICE], ensure_ascii=False)[1:-1]
            fh.write(piece.encode("utf-8", "backslashreplace"))
        fh.write(b'"')
    else:
        fh.write(json.dumps(obj, ensure_ascii=False, default=_default).encode("utf-8", "backslashreplace"))


class JsonlWriter:
    """Append JSON objects to a file, one per line.

    Args:
        path: the file (created if missing; its folder must exist).
        append: keep existing content (default) or truncate the file first.
        fsync: call ``os.fsync`` after each batch so that a power loss cannot lose lines
            already reported written (slower).
        fsync_seconds: without ``fsync``, still fsync a batch when the last fsync is this many
            seconds old (and on close), so a power loss loses at most that much work (a process
            kill loses nothing flushed: the OS holds it). ``None``: flush to the OS only.

    Each :meth:`write_many` batch is encoded first and handed to the OS in one write, then
    flushed, so a crash can leave at most a torn last line (which ``io.resume`` repairs).
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], append: bool = True, *, fsync: bool = False,
                 fsync_seconds: float | None = 5.0):
        self.path = os.fspath(path)
        self.fsync = fsync
        self.fsync_seconds = fsync_seconds
        self.lines_written = 0
        self._fh = open(self.path, "ab" if append else "wb")
        self._synced = time.monotonic()

    def _sync(self, force: bool = False) -> None:
        due = self.fsync_seconds is not None and time.monotonic() - self._synced >= self.fsync_seconds
        if self.fsync or due or (force and self.fsync_seconds is not None):
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()

    def write(self, obj: Any) -> None:
        """Write one object (and flush)."""
        self.write_many([obj])

    def write_many(self, objs: Iterable[Any]) -> int:
        """Write the objects as one batch, flush (and fsync if asked); return how many.

        Small objects are encoded first and handed to the OS in one write. An object holding more
        than :data:`STREAM_CHARS` characters of text is streamed instead (its long strings in 1 MiB
        slices), so a 20-million-character record costs no extra whole copies; a crash during it
        leaves a torn last line, which ``io.resume`` repairs like any other.

        Raises:
            OSError: the write failed (disk full, read-only file system...); it names this
                writer's path, and the writer is closed.
            ValueError: the writer is closed.
        """
        if self._fh.closed:
            raise ValueError(f"{self.path} is closed")
        pending: list[bytes] = []
        count = 0
        try:
            for obj in objs:
                count += 1
                if _text_size(obj, STREAM_CHARS) < STREAM_CHARS:
                    pending.append(dumps_line(obj))
                    continue
                if pending:
                    self._fh.write(b"".join(pending))
                    pending = []
                _stream_json(obj, self._fh)
                self._fh.write(b"\n")
            if not count:
                return 0
            if pending:
                self._fh.write(b"".join(pending))
            self._fh.flush()
            self._sync()
        except OSError as exc:
            self._abandon()
            raise OSError(exc.errno, exc.strerror, self.path) from exc
        self.lines_written += count
        return count

    def _abandon(self) -> None:
        """Close the file after a failed write without flushing again: what did not reach the
        file (disk full, read-only) is dropped here, and the torn line it may leave is repaired
        by ``io.resume`` on ``--resume``. A second error from the same full disk would only
        hide the first."""
        raw = getattr(self._fh, "raw", None)
        try:
            if raw is not None:
                raw.close()  # the buffered layer then has nothing to flush into
        except OSError:
            pass
        try:
            self._fh.close()
        except (OSError, ValueError):
            pass

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if not self._fh.closed:
            try:
                self._fh.flush()
                self._sync(force=True)
            except OSError as exc:
                self._abandon()
                raise OSError(exc.errno, exc.strerror, self.path) from exc
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
